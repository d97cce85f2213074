"""In-process llama.cpp on a GGUF file (xllamacpp, a prebuilt wheel), for machines without vLLM.

xllamacpp embeds llama.cpp's server: `LlamaCppBackend` starts it inside this process on a free
127.0.0.1 port with a random API key and talks to it through `OpenAIBackend`, so it gets the same
concurrent requests (one server slot each, continuous batching), streaming, deadline and retries.

    python -m operators.llamacpp_backend MODEL [--port 8080] [--parallel 8] [--api-key-env NAME]

serves `[llm] model` (a registry name or a .gguf file) until interrupted: the llama.cpp example
of an OpenAI-compatible endpoint for `backend = "openai"`.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from operators.backends import Completion, Request
from operators.openai_backend import OpenAIBackend


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, *, port: int, parallel: int, threads: int | None, n_ctx_per_slot: int,
                 api_key: str | None = None, speculative: str = "none") -> Any:
    """An xllamacpp (llama.cpp) server on 127.0.0.1:port serving `gguf` with `parallel` slots; speculative
    "ngram": llama.cpp's n-gram (prompt-lookup) drafts."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(gguf)
    p.model_alias = gguf.stem
    p.n_parallel = parallel
    p.n_ctx = n_ctx_per_slot * parallel  # llama.cpp splits the context between the slots
    n = threads or os.cpu_count() or 1
    p.cpuparams.n_threads = n
    p.cpuparams_batch.n_threads = n
    p.port = port
    p.hostnames = ["127.0.0.1"]
    p.endpoint_metrics = True
    if api_key:
        p.api_keys = [api_key]
    if speculative == "ngram":
        p.speculative.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
    return xllamacpp.Server(p)


class LlamaCppBackend:
    """`[llm] backend = "llamacpp"`: the model's GGUF file in an embedded llama.cpp server."""

    def __init__(self, gguf: Path, model_id: str, *, parallel: int = 8, threads: int | None = None,
                 max_model_len: int = 3072, deadline_s: float = 600.0, retries: int = 1,
                 speculative: str = "none") -> None:
        t0 = time.perf_counter()
        key, port = secrets.token_hex(16), free_port()
        self.server = start_server(gguf, port=port, parallel=parallel, threads=threads,
                                   n_ctx_per_slot=max_model_len, api_key=key, speculative=speculative)
        self.load_s = time.perf_counter() - t0
        self.client = OpenAIBackend(f"http://127.0.0.1:{port}/v1", gguf.stem, deadline_s=deadline_s,
                                    retries=retries, parallel=parallel, model_id=model_id, api_key=key)
        self.model_id, self.usage = model_id, self.client.usage

    @classmethod
    def from_settings(cls, settings: Any) -> "LlamaCppBackend":
        """Prepare `[llm] model` as a GGUF file (operators.model_store) and serve it as `settings` say."""
        from operators.model_store import model_id, resolve

        return cls(resolve(settings.model, "llamacpp"), model_id(settings.model), parallel=settings.parallel,
                   threads=settings.threads, max_model_len=settings.max_model_len,
                   deadline_s=settings.deadline_s, retries=settings.retries,
                   speculative=settings.speculative or "none")

    def generate(self, requests: Sequence[Request], deadline_s: float | None = None) -> list[Completion]:
        """One completion per request; see OpenAIBackend.generate."""
        return self.client.generate(requests, deadline_s)

    def close(self) -> None:
        """Stop the embedded server (frees the model)."""
        self.server = None


def main(argv: list[str] | None = None) -> int:
    """Serve a model over HTTP until SIGINT/SIGTERM."""
    ap = argparse.ArgumentParser(prog="python -m operators.llamacpp_backend", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="registry model name or .gguf file")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--parallel", type=int, default=8, help="server slots")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=3072, help="context tokens per slot")
    ap.add_argument("--api-key-env", default=None, help="environment variable holding the key clients must send")
    ap.add_argument("--speculative", choices=("none", "ngram"), default="none", help="n-gram (prompt-lookup) drafts")
    args = ap.parse_args(argv)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        ap.error(f"environment variable {args.api_key_env} is empty or unset")
    from operators.model_store import resolve

    gguf = resolve(args.model, "llamacpp")
    server = start_server(gguf, port=args.port, parallel=args.parallel, threads=args.threads, n_ctx_per_slot=args.ctx,
                          api_key=key, speculative=args.speculative)
    print(f"serving {gguf.name} at {server.listening_address}/v1 (model name {gguf.stem!r})", flush=True)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
