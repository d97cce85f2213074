"""Run one evaluation job in a fresh, limited child process and classify how it ended.

The child is `python -m fitness.worker` in its own session (so its own process group),
with a private scratch directory as cwd/HOME/TMPDIR, a minimal environment, and rlimits
on address space, CPU time, file size and core dumps. The limits are applied with
prlimit() from this process right after the spawn and before the job (and so the genome)
is sent: unlike `preexec_fn`, that is safe when the engine runs several evaluations from
threads. At the wall deadline, on cancel, and after every normal exit, the whole process
group is killed with SIGKILL, so nothing a genome starts can outlive its evaluation.

Outcome statuses: ok | rejected | failed | timeout | killed, each with a reason.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from fitness.settings import SandboxSettings

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
             "NVIDIA_VISIBLE_DEVICES", "SSL_CERT_FILE")
_POLL_S = 0.25


@dataclasses.dataclass
class Outcome:
    """How a sandboxed run ended: status, reason, the worker's result dict (if it reported), log tail."""

    status: str
    reason: str = ""
    result: dict | None = None
    log_tail: str = ""
    wall_s: float = 0.0
    returncode: int | None = None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _apply_limits(pid: int, s: SandboxSettings, limit_memory: bool) -> None:
    mb = 1024 * 1024
    limits = [
        (resource.RLIMIT_CPU, (s.cpu_s, s.cpu_s + 5)),
        (resource.RLIMIT_FSIZE, (s.file_size_mb * mb, s.file_size_mb * mb)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if limit_memory:
        limits.append((resource.RLIMIT_AS, (s.memory_mb * mb, s.memory_mb * mb)))
    for which, value in limits:
        resource.prlimit(pid, which, value)


def _signal_reason(sig: int, s: SandboxSettings) -> tuple[str, str]:
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    if sig == signal.SIGXCPU:
        return "killed", f"killed by SIGXCPU: CPU time limit {s.cpu_s} s exceeded"
    if sig == signal.SIGXFSZ:
        return "killed", f"killed by SIGXFSZ: file size limit {s.file_size_mb} MB exceeded (output or files too large)"
    if sig == signal.SIGKILL:
        return "killed", (f"killed by SIGKILL: CPU hard limit {s.cpu_s + 5} s, the kernel's out-of-memory killer "
                          f"(memory limit {s.memory_mb} MB) or an external kill")
    return "failed", f"crashed with {name}"


def _tail(path: str, chars: int) -> str:
    if chars <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _parse_report(stdout: bytes, nonce: str) -> tuple[dict | None, str]:
    text = stdout.decode("utf-8", "replace").strip()
    if not text:
        return None, ""
    head, _, body = text.partition(" ")
    if head != nonce or "\n" in body:
        return None, "result channel corrupted: the report lacks the job's nonce (forged or garbled result)"
    try:
        result = json.loads(body)
    except json.JSONDecodeError as e:
        return None, f"result channel corrupted: invalid JSON ({e})"
    if not isinstance(result, dict) or result.get("status") not in ("ok", "rejected", "failed", "killed"):
        return None, "result channel corrupted: unexpected report"
    return result, ""


def run_job(job: dict, settings: SandboxSettings, timeout_s: float | None = None, *, limit_memory: bool = True,
            env: dict[str, str] | None = None, cancel: threading.Event | None = None) -> Outcome:
    """Run `job` (see fitness.worker) in a sandboxed child; always returns an Outcome, never raises
    for anything the genome does. `job` must hold a "nonce"; "scratch" is filled in here."""
    timeout_s = timeout_s or settings.timeout_s
    t0 = time.monotonic()
    root = tempfile.mkdtemp(prefix="evoarch-eval-")
    scratch = os.path.join(root, "scratch")
    os.mkdir(scratch)
    log_path = os.path.join(root, "worker.log")
    job = dict(job, scratch=scratch)
    child_env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    threads = str(job.get("threads", 1))
    child_env.update(
        PYTHONPATH=PROJECT_ROOT, PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PYTHONHASHSEED="0",
        HOME=scratch, TMPDIR=scratch, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
    )
    child_env.update(env or {})
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fitness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, cwd=scratch, env=child_env, start_new_session=True, close_fds=True,
            )
        pgid = proc.pid  # start_new_session: the child leads its own group
        try:
            _apply_limits(proc.pid, settings, limit_memory)
        except OSError as e:  # the child died already; report below
            if not isinstance(e, ProcessLookupError):
                _kill_group(pgid)
                return Outcome("failed", f"could not set resource limits: {e}", wall_s=time.monotonic() - t0)
        stdout, status, reason = b"", "", ""
        payload: bytes | None = json.dumps(job).encode()
        while True:
            remaining = timeout_s - (time.monotonic() - t0)
            try:
                out, _ = proc.communicate(payload, timeout=max(0.01, min(_POLL_S, remaining)))
                stdout += out or b""
                break
            except subprocess.TimeoutExpired:
                payload = None  # sent; later calls only read
                if time.monotonic() - t0 >= timeout_s:
                    status, reason = "timeout", f"timeout after {timeout_s:g} s (wall); process group killed"
                elif cancel is not None and cancel.is_set():
                    status, reason = "killed", "cancelled by the executor; process group killed"
                else:
                    continue
                _kill_group(pgid)
                out, _ = proc.communicate()
                stdout += out or b""
                break
        _kill_group(pgid)  # threads are gone with the process; stray children are not
        wall = time.monotonic() - t0
        log_tail = _tail(log_path, settings.log_tail_chars)
        if status:
            return Outcome(status, reason, None, log_tail, wall, proc.returncode)
        result, corrupt = _parse_report(stdout, job["nonce"])
        rc = proc.returncode
        if result is not None and rc == 0:
            return Outcome(result["status"], result.get("reason", ""), result, log_tail, wall, rc)
        if rc is not None and rc < 0:
            status, reason = _signal_reason(-rc, settings)
        else:
            status, reason = "failed", corrupt or f"exit code {rc} before reporting"
        last = log_tail.strip().splitlines()[-1:] if log_tail.strip() else []
        if last and status == "failed" and not corrupt:
            reason += f"; last log line: {last[0][:300]}"
        return Outcome(status, reason, None, log_tail, wall, rc)
    except OSError as e:
        return Outcome("failed", f"could not run the worker: {e}", wall_s=time.monotonic() - t0)
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
