"""A real OpenAI-compatible server for tests: llama.cpp's (xllamacpp) serving the registry 0.5B GGUF
on 127.0.0.1, started as its own process (`python -m operators.llamacpp_backend`) and stopped by the test."""
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "qwen2.5-coder-0.5b"


def needs_server() -> None:
    """Skip unless xllamacpp and the model's part packages are installed."""
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp not installed")
    from operators.model_store import ModelStoreError, part_paths, spec

    try:
        part_paths(spec(MODEL))
    except ModelStoreError as e:
        pytest.skip(str(e))


@contextlib.contextmanager
def llama_server(parallel: int = 4, threads: int = 1, api_key_env: str | None = None, env: dict | None = None):
    """Start the server, wait until /health answers (up to 120 s), yield (base_url, process), stop it."""
    from operators.llamacpp_backend import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "operators.llamacpp_backend", MODEL, "--port", str(port), "--parallel",
           str(parallel), "--threads", str(threads)] + (["--api-key-env", api_key_env] if api_key_env else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy in 120 s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric(base_url: str, name: str, api_key: str | None = None) -> float:
    """One of the server's /metrics values (llamacpp:<name>)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=5, headers=headers).text
    for line in text.splitlines():
        if line.startswith(f"llamacpp:{name} "):
            return float(line.split()[-1])
    raise KeyError(name)
