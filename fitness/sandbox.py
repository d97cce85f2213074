"""The engine's side of one sandboxed worker: start it, talk to it under one deadline, end it.

`Channel(settings, ...)` prepares what the launcher needs (a private folder with the scratch dir
and the log, the evaluation's cgroup, the launch spec) and starts the launcher
(fitness.worker): forked from a fork server when one is given, else a fresh interpreter. Then
`send` writes a frame and `receive` reads one, both against the same wall deadline and the
executor's cancel flag, and `receive` reads at most the sizes it is told (the worker is
untrusted: see fitness.protocol). `close()` kills every process of the evaluation (the
launcher's process group, whose death takes the worker's PID namespace with it, and the
cgroup), reaps the launcher, and returns how it ended (`Ended`: exit code, CPU seconds and peak
memory measured by the kernel, the log's tail). The folder and the cgroup are removed.

Errors while talking: `Deadline`, `Cancelled`, `Closed` (the worker ended first), and
fitness.protocol.ProtocolError; ForkServerError when the fork server fails (the caller runs the
evaluation again, spawned).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from fitness import protocol
from fitness.cgroup import CgroupUnavailable, EvalGroup
from fitness.forkserver import ForkServer, ForkServerError
from fitness.settings import SandboxSettings

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
             "NVIDIA_VISIBLE_DEVICES", "SSL_CERT_FILE")
_POLL_S = 0.25
_GROUPS = itertools.count()


class Deadline(Exception):
    """The evaluation's wall deadline passed."""


class Cancelled(Exception):
    """The executor cancelled the evaluation."""


class Closed(Exception):
    """The worker closed its channel (it exited or was killed) before answering."""


@dataclasses.dataclass
class Ended:
    """How the launcher ended: exit code (negative: the signal), kernel-measured usage, log tail."""

    returncode: int | None
    usage: dict
    log_tail: str
    wall_s: float


def worker_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The minimal environment of a worker (or of the fork server its workers come from)."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.update(PYTHONPATH=PROJECT_ROOT, PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PYTHONHASHSEED="0",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(extra or {})
    return env


def signal_reason(sig: int, s: SandboxSettings) -> tuple[str, str]:
    """(status, reason) for a worker killed by signal `sig`."""
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    if sig == signal.SIGXCPU:
        return "killed", f"killed by SIGXCPU: CPU time limit {s.cpu_s} s exceeded"
    if sig == signal.SIGKILL:
        return "killed", (f"killed by SIGKILL: CPU hard limit {s.cpu_s + 5} s, the out-of-memory killer "
                          f"(memory limit {s.memory_mb} MB) or an external kill")
    return "failed", f"crashed with {name}"


class Channel:
    """One sandboxed worker and the engine's end of its pipes."""

    def __init__(self, settings: SandboxSettings, timeout_s: float, *, threads: int = 1, device: str = "cpu",
                 env: dict[str, str] | None = None, server: ForkServer | None = None,
                 cancel: threading.Event | None = None):
        self.settings, self.server, self.cancel = settings, server, cancel
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.t0 = time.monotonic()
        self.root = tempfile.mkdtemp(prefix="evoarch-eval-")
        os.chmod(self.root, 0o711)  # the unprivileged worker may pass through, not list
        self.scratch = os.path.join(self.root, "scratch")
        os.mkdir(self.scratch)
        os.chmod(self.scratch, 0o777)
        self.canary = os.path.join(self.root, "canary")  # a readable file outside every allowed root
        with open(self.canary, "w") as f:
            f.write("evoarch canary\n")
        os.chmod(self.canary, 0o644)
        self.log_path = os.path.join(self.root, "worker.log")
        self.group, cgroup = None, None
        name = f"evoarch-{os.getpid()}-{next(_GROUPS)}"
        try:
            self.group = EvalGroup.create(name, settings.memory_mb, settings.max_tasks, settings.cgroup_root)
            cgroup = {"join": self.group.join_files(), "name": name,
                      "detail": f"memory {settings.memory_mb} MiB, {settings.max_tasks} tasks"}
        except CgroupUnavailable as e:
            cgroup = str(e)
        self.spec = {"scratch": self.scratch, "cpu_s": settings.cpu_s, "file_size_mb": settings.file_size_mb,
                     "address_space_mb": None if device.startswith("cuda") else settings.memory_mb,
                     "scratch_mb": settings.scratch_mb, "scratch_inodes": settings.scratch_inodes, "cgroup": cgroup}
        env = {**(env or {}), "HOME": self.scratch, "TMPDIR": self.scratch, "EVOARCH_LAUNCH": json.dumps(self.spec)}
        self.pid, self.proc = None, None
        try:
            if server is not None:
                self._launch_fork(env)
            else:
                self._launch_spawn(worker_env(threads, env))
        except BaseException:
            self._cleanup()
            raise
        self.ended: Ended | None = None

    # ---- launch --------------------------------------------------------------------------------

    def _launch_spawn(self, env: dict[str, str]) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fitness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, cwd=self.scratch, env={**env, "EVOARCH_PARENT_PID": str(os.getpid())},
                start_new_session=True, close_fds=True)
        self.to_worker, self.from_worker = os.dup(self.proc.stdin.fileno()), os.dup(self.proc.stdout.fileno())
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.pid = self.proc.pid
        os.set_blocking(self.to_worker, False)

    def _launch_fork(self, env: dict[str, str]) -> None:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.pid = self.server.spawn((stdin_r, stdout_w, log_fd), self.scratch, env)
        except BaseException:
            os.close(stdin_w)
            os.close(stdout_r)
            raise
        finally:
            for fd in (stdin_r, stdout_w, log_fd):
                os.close(fd)
        self.to_worker, self.from_worker = stdin_w, stdout_r
        os.set_blocking(self.to_worker, False)

    # ---- talk ----------------------------------------------------------------------------------

    def _wait(self, fd: int, write: bool) -> None:
        while True:
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled()
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Deadline()
            r, w, _ = select.select([] if write else [fd], [fd] if write else [], [], min(_POLL_S, left))
            if r or w:
                return

    def send(self, message: dict, arrays: dict | None = None) -> None:
        """Write one frame to the worker."""
        data = memoryview(protocol.encode(message, arrays))
        while data:
            self._wait(self.to_worker, write=True)
            try:
                data = data[os.write(self.to_worker, data):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise Closed() from None

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            self._wait(self.from_worker, write=False)
            chunk = os.read(self.from_worker, min(n - len(out), 1 << 20))
            if not chunk:
                raise Closed()
            out += chunk
        return bytes(out)

    def receive(self, max_payload: int = 0, max_json: int = protocol.MAX_JSON_BYTES) -> tuple[dict, dict]:
        """Read one frame of at most `max_json` bytes of JSON and `max_payload` bytes of arrays."""
        header = self._read(protocol.HEADER.size)
        n_json, n_payload = protocol.frame_sizes(header, max_json, max_payload)
        return protocol.decode(header, self._read(n_json), self._read(n_payload))

    # ---- end -----------------------------------------------------------------------------------

    def close(self, grace_s: float = 0.0) -> Ended:
        """Give the launcher `grace_s` to exit on its own (after `bye`, or once the worker closed its
        channel), then kill every process of the evaluation, reap the launcher, clean up."""
        if self.ended is not None:
            return self.ended
        for fd in (self.to_worker, self.from_worker):
            try:
                os.close(fd)
            except OSError:
                pass
        code, usage = self._reap(grace_s)
        if self.group is not None:
            peak = self.group.peak_memory_mb()
            if peak is not None:
                usage["peak_memory_mb"] = round(peak, 1)
        log_tail = _tail(self.log_path, self.settings.log_tail_chars)
        self._cleanup()
        self.ended = Ended(code, usage, log_tail, time.monotonic() - self.t0)
        return self.ended

    def _reap(self, grace_s: float) -> tuple[int | None, dict]:
        ended = self._ended_within(grace_s)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.group is not None:
            self.group.kill_all()
        return ended if ended is not None else self._ended_within(None)

    def _ended_within(self, seconds: float | None) -> tuple[int | None, dict] | None:
        """(exit code, usage) once the launcher has ended, waiting at most `seconds` (None: until it
        has); None if it still runs. Exit code None: the fork server died and took the answer."""
        from fitness.forkserver import usage

        if self.proc is not None:
            end = time.monotonic() + (seconds if seconds is not None else 1e9)
            while True:
                pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG if seconds is not None else 0)
                if pid:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)
                    return self.proc.returncode, usage(rusage)
                if time.monotonic() >= end:
                    return None
                time.sleep(0.01)
        try:
            if seconds is not None and not self.server.answered_within(seconds):
                return None
            return self.server.wait(self.pid)
        except ForkServerError:
            return None, {}

    def _cleanup(self) -> None:
        if self.group is not None:
            self.group.remove()
            self.group = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
