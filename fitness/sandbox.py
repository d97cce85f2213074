"""Run one evaluation job in a fresh, limited child process and classify how it ended.

The child is `python -m fitness.worker`, spawned fresh or forked from a fork server
(fitness.forkserver, which has imported torch and the harness already), in its own session
(so its own process group), with a private scratch directory as cwd/HOME/TMPDIR, a minimal
environment, and rlimits on address space, CPU time, file size and core dumps. The limits
are applied with prlimit() from this process right after the spawn or fork and before the
job (and so the genome) is sent: unlike `preexec_fn`, that is safe when the engine runs
several evaluations from threads. At the wall deadline, on cancel, and after every normal
exit, the whole process group is killed with SIGKILL, so nothing a genome starts can
outlive its evaluation; the child also dies with its parent (PR_SET_PDEATHSIG).

Outcome statuses: ok | rejected | failed | timeout | killed, each with a reason.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from fitness.forkserver import ForkServer, ForkServerError
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


def worker_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The minimal environment of a worker (or of the fork server its workers come from)."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.update(PYTHONPATH=PROJECT_ROOT, PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PYTHONHASHSEED="0",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(extra or {})
    return env


def _exchange(stdin_fd: int, stdout_fd: int, payload: bytes, t0: float, timeout_s: float,
              cancel: threading.Event | None, pgid: int) -> tuple[bytes, str, str]:
    """Send the job, read the report until EOF; kill the group at the deadline or on cancel.
    Returns (stdout, status, reason); status is "" when the child ended on its own."""
    os.set_blocking(stdin_fd, False)
    out = bytearray()
    writing, status, reason = True, "", ""
    try:
        while True:
            left = timeout_s - (time.monotonic() - t0)
            if left <= 0:
                status, reason = "timeout", f"timeout after {timeout_s:g} s (wall); process group killed"
            elif cancel is not None and cancel.is_set():
                status, reason = "killed", "cancelled by the executor; process group killed"
            if status:
                _kill_group(pgid)
                break
            rlist, wlist, _ = select.select([stdout_fd], [stdin_fd] if writing else [], [], min(_POLL_S, left))
            if wlist:
                try:
                    payload = payload[os.write(stdin_fd, payload):]
                except BrokenPipeError:
                    payload = b""
                if not payload:
                    os.close(stdin_fd)
                    writing = False
            if rlist:
                chunk = os.read(stdout_fd, 65536)
                if not chunk:
                    break
                out += chunk
        if status:  # drain what the dead group wrote, briefly
            end = time.monotonic() + 2.0
            while time.monotonic() < end and select.select([stdout_fd], [], [], 0.1)[0]:
                chunk = os.read(stdout_fd, 65536)
                if not chunk:
                    break
                out += chunk
    finally:
        if writing:
            os.close(stdin_fd)
        os.close(stdout_fd)
    return bytes(out), status, reason


def _launch_spawn(scratch: str, log_path: str, env: dict[str, str]) -> tuple[int, int, int, "subprocess.Popen"]:
    """A fresh `python -m fitness.worker`: (pid, stdin fd, stdout fd, process)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fitness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, cwd=scratch, env={**env, "EVOARCH_PARENT_PID": str(os.getpid())},
            start_new_session=True, close_fds=True,
        )
    stdin_fd, stdout_fd = os.dup(proc.stdin.fileno()), os.dup(proc.stdout.fileno())
    proc.stdin.close()
    proc.stdout.close()
    return proc.pid, stdin_fd, stdout_fd, proc


def _launch_fork(server: ForkServer, scratch: str, log_path: str, env: dict[str, str]) -> tuple[int, int, int]:
    """A worker forked by `server`: (pid, stdin fd, stdout fd)."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pid = server.spawn((stdin_r, stdout_w, log_fd), scratch, env)
    except BaseException:
        for fd in (stdin_w, stdout_r):
            os.close(fd)
        raise
    finally:
        for fd in (stdin_r, stdout_w, log_fd):
            os.close(fd)
    return pid, stdin_w, stdout_r


def _fork_exit_code(server: ForkServer, pid: int) -> int | None:
    """The worker's exit code from its fork server; None if the server died meanwhile."""
    try:
        return server.wait(pid)
    except ForkServerError:
        return None


def run_job(job: dict, settings: SandboxSettings, timeout_s: float | None = None, *, limit_memory: bool = True,
            env: dict[str, str] | None = None, cancel: threading.Event | None = None,
            server: ForkServer | None = None) -> Outcome:
    """Run `job` (see fitness.worker) in a sandboxed child; always returns an Outcome, never raises
    for anything the genome does. `job` must hold a "nonce"; "scratch" is filled in here.

    server: a started ForkServer to fork the child from (its environment already holds the
    worker environment and `env`); None spawns a fresh interpreter. Raises ForkServerError
    when the server cannot fork, or dies before the worker could report (the result is lost
    to the machinery, not the genome: run it again).
    """
    timeout_s = timeout_s or settings.timeout_s
    t0 = time.monotonic()
    root = tempfile.mkdtemp(prefix="evoarch-eval-")
    scratch = os.path.join(root, "scratch")
    os.mkdir(scratch)
    log_path = os.path.join(root, "worker.log")
    job = dict(job, scratch=scratch)
    threads = int(job.get("threads", 1))
    home = {"HOME": scratch, "TMPDIR": scratch}
    pid = None
    proc = None
    try:
        if server is not None:  # a ForkServerError here propagates: no genome ran, the caller may spawn
            pid, stdin_fd, stdout_fd = _launch_fork(server, scratch, log_path, {**(env or {}), **home})
        else:
            pid, stdin_fd, stdout_fd, proc = _launch_spawn(scratch, log_path, worker_env(threads, {**home, **(env or {})}))
        try:
            _apply_limits(pid, settings, limit_memory)
        except OSError as e:  # the child died already; report below
            if not isinstance(e, ProcessLookupError):
                _kill_group(pid)
                os.close(stdin_fd)
                os.close(stdout_fd)
                return Outcome("failed", f"could not set resource limits: {e}", wall_s=time.monotonic() - t0)
        stdout, status, reason = _exchange(stdin_fd, stdout_fd, json.dumps(job).encode(), t0, timeout_s, cancel, pid)
        _kill_group(pid)  # threads are gone with the process; stray children are not
        rc = proc.wait() if proc is not None else _fork_exit_code(server, pid)
        pid = None
        wall = time.monotonic() - t0
        log_tail = _tail(log_path, settings.log_tail_chars)
        if status:
            return Outcome(status, reason, None, log_tail, wall, rc)
        result, corrupt = _parse_report(stdout, job["nonce"])
        if result is not None and rc in (0, None):  # None: the fork server died after a complete report
            return Outcome(result["status"], result.get("reason", ""), result, log_tail, wall, rc)
        if rc is None:  # the machinery failed, not the genome: the caller runs it again, spawned
            raise ForkServerError("the fork server died during the evaluation (the worker was killed with it)")
        if rc < 0:
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
        if pid is not None:
            _kill_group(pid)
            if proc is not None:
                proc.wait()
            else:
                _fork_exit_code(server, pid)
        shutil.rmtree(root, ignore_errors=True)
