"""The engine's side of one evaluation's processes: start them, talk under one deadline, end them.

An evaluation is a trainer (fitness.trainer: trusted, it holds the data and the backbone) and one
or two sandboxed workers (fitness.worker: the genome's Mixer), wired by pipes: engine <-> trainer
<-> each worker. `Channel(settings, ...)` prepares what they need (a private folder with one
scratch dir and one log per worker, the evaluation's cgroup, each launcher's spec, the pipes)
and starts them: forked from a fork server when one is given, else fresh interpreters. With
`trainer=False` (the sandbox self-test) the engine talks to a single worker directly.

Then `send` writes a frame and `receive` reads one, both against the same wall deadline and the
executor's cancel flag, and `receive` reads at most the sizes it is told (see fitness.protocol).
`close()` kills every process of the evaluation (each process group, the launchers' deaths
taking the workers' PID namespaces with them, and the cgroup), reaps them, and returns how they
ended (`Ended`: exit codes, CPU seconds and peak memory measured by the kernel, the logs'
tails). The folder and the cgroup are removed.

Errors while talking: `Deadline`, `Cancelled`, `Closed` (the peer ended first), and
fitness.protocol.ProtocolError; ForkServerError when the fork server fails (the caller runs the
evaluation again, spawned).
"""
from __future__ import annotations

import dataclasses
import fcntl
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
_F_SETPIPE_SZ = 1031
_GROUPS = itertools.count()


class Deadline(Exception):
    """The evaluation's wall deadline passed."""


class Cancelled(Exception):
    """The executor cancelled the evaluation."""


class Closed(Exception):
    """The worker closed its channel (it exited or was killed) before answering."""


@dataclasses.dataclass
class Ended:
    """How the processes ended: exit codes (negative: the signal; None: the fork server died and
    took the answer), kernel-measured usage summed over them, the workers' and trainer's log tails."""

    trainer: int | None
    workers: list[int | None]
    usage: dict
    log_tail: str
    trainer_log: str
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


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    try:  # room for one activation tensor per write: fewer round trips through the kernel
        fcntl.fcntl(w, _F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    return r, w


class Channel:
    """One evaluation's processes and the engine's end of the pipes to the first of them."""

    def __init__(self, settings: SandboxSettings, timeout_s: float, *, workers: int = 2, trainer: bool = True,
                 threads: int = 1, device: str = "cpu", env: dict[str, str] | None = None,
                 server: ForkServer | None = None, cancel: threading.Event | None = None):
        self.settings, self.server, self.cancel = settings, server, cancel
        self.timeout_s, self.t0 = timeout_s, time.monotonic()
        self.deadline = self.t0 + timeout_s
        self.root = tempfile.mkdtemp(prefix="evoarch-eval-")
        os.chmod(self.root, 0o711)  # the unprivileged workers may pass through, not list
        self.scratches, self.logs = [], []
        for i in range(workers):
            self.scratches.append(os.path.join(self.root, f"scratch{i}"))
            os.mkdir(self.scratches[-1])
            os.chmod(self.scratches[-1], 0o777)
            self.logs.append(os.path.join(self.root, f"worker{i}.log"))
        self.trainer_log = os.path.join(self.root, "trainer.log")
        self.canary = os.path.join(self.root, "canary")  # a readable file outside every allowed root
        with open(self.canary, "w") as f:
            f.write("evoarch canary\n")
        os.chmod(self.canary, 0o644)
        self.group, cgroup = None, None
        name = f"evoarch-{os.getpid()}-{next(_GROUPS)}"
        try:
            self.group = EvalGroup.create(name, settings.memory_mb, settings.max_tasks, settings.cgroup_root)
            cgroup = {"join": self.group.join_files(), "name": name,
                      "detail": f"memory {settings.memory_mb} MiB, {settings.max_tasks} tasks"}
        except CgroupUnavailable as e:
            cgroup = str(e)
        self.specs = [{"scratch": scratch, "cpu_s": settings.cpu_s, "file_size_mb": settings.file_size_mb,
                       "address_space_mb": None if device.startswith("cuda") else settings.memory_mb,
                       "scratch_mb": settings.scratch_mb, "scratch_inodes": settings.scratch_inodes, "cgroup": cgroup}
                      for scratch in self.scratches]
        self.pids, self.procs, self.ended = [], [], None
        try:
            self._launch(trainer, threads, env or {}, cgroup)
        except BaseException:
            self._cleanup()
            raise

    # ---- launch --------------------------------------------------------------------------------

    def _launch(self, trainer: bool, threads: int, env: dict[str, str], cgroup) -> None:
        """Pipes, then the processes: (role, descriptors, cwd, environment) each."""
        from fitness.forkserver import Child

        ours, theirs = [], []  # the engine's ends; every other end, closed here once the children have it
        to_first, from_first = _pipe(), _pipe()
        self.to_peer, self.from_peer = to_first[1], from_first[0]
        ours += [to_first[1], from_first[0]]
        theirs += [to_first[0], from_first[1]]
        logs = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for p in self.logs + [self.trainer_log]]
        theirs += logs
        children = []
        if trainer:
            peer_fds = []
            for i, spec in enumerate(self.specs):
                down, up = _pipe(), _pipe()
                theirs += [*down, *up]
                peer_fds += [down[1], up[0]]
                children.append(Child("launcher", (down[0], up[1], logs[i]), self.scratches[i],
                                      {**env, **self._worker_env(spec)}))
            join = json.dumps(cgroup["join"]) if isinstance(cgroup, dict) else "[]"
            children.insert(0, Child("trainer", (to_first[0], from_first[1], logs[-1], *peer_fds), self.root,
                                     {**env, "EVOARCH_WORKERS": str(len(self.specs)), "EVOARCH_JOIN": join}))
        else:
            children.append(Child("launcher", (to_first[0], from_first[1], logs[0]), self.scratches[0],
                                  {**env, **self._worker_env(self.specs[0])}))
        try:
            if self.server is not None:
                self.pids = self.server.spawn(children)
            else:
                self.procs = [self._spawn(child, threads) for child in children]
                self.pids = [p.pid for p in self.procs]
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        os.set_blocking(self.to_peer, False)

    def _worker_env(self, spec: dict) -> dict[str, str]:
        return {"HOME": spec["scratch"], "TMPDIR": spec["scratch"], "EVOARCH_LAUNCH": json.dumps(spec)}

    def _spawn(self, child, threads: int) -> subprocess.Popen:
        """A fresh interpreter for `child`: descriptors 0-2 as given, the trainer's peers passed on."""
        module = "fitness.trainer" if child.role == "trainer" else "fitness.worker"
        env = worker_env(threads, {**child.env, "EVOARCH_PARENT_PID": str(os.getpid())})
        extra = child.fds[3:]
        if extra:
            env["EVOARCH_PEER_FDS"] = ",".join(map(str, extra))
        return subprocess.Popen([sys.executable, "-m", module], stdin=child.fds[0], stdout=child.fds[1],
                                stderr=child.fds[2], cwd=child.cwd, env=env, start_new_session=True,
                                close_fds=True, pass_fds=extra)

    def worker_cpu_s(self, replica: int) -> float | None:
        """CPU seconds the worker `replica` has used so far, read by this process from the kernel
        (the worker is its launcher's only child); None where the kernel does not say."""
        launcher = self.pids[replica + (len(self.pids) - len(self.specs))]
        try:
            with open(f"/proc/{launcher}/task/{launcher}/children") as f:
                (worker,) = f.read().split()
            return sum(int(open(f"/proc/{worker}/task/{t}/schedstat").read().split()[0])
                       for t in os.listdir(f"/proc/{worker}/task")) / 1e9
        except (OSError, ValueError):
            return None

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
        """Write one frame."""
        data = memoryview(protocol.encode(message, arrays))
        while data:
            self._wait(self.to_peer, write=True)
            try:
                data = data[os.write(self.to_peer, data):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise Closed() from None

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            self._wait(self.from_peer, write=False)
            chunk = os.read(self.from_peer, min(n - len(out), 1 << 20))
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
        """Give the processes `grace_s` to exit on their own (after `bye`, or once the peer closed its
        channel), then kill every process of the evaluation, reap them, clean up."""
        if self.ended is not None:
            return self.ended
        for fd in (self.to_peer, self.from_peer):
            try:
                os.close(fd)
            except OSError:
                pass
        codes, usage = self._reap(grace_s)
        if self.group is not None:
            peak = self.group.peak_memory_mb()
            if peak is not None:
                usage["peak_memory_mb"] = round(peak, 1)
        tails = [_tail(p, self.settings.log_tail_chars) for p in self.logs]
        trainer_code = codes[0] if len(codes) > len(self.specs) else None
        self.ended = Ended(trainer_code, codes[-len(self.specs):], usage, "\n".join(t for t in tails if t.strip()),
                           _tail(self.trainer_log, self.settings.log_tail_chars), time.monotonic() - self.t0)
        self._cleanup()
        return self.ended

    def _reap(self, grace_s: float) -> tuple[list[int | None], dict]:
        ended = self._ended_within(grace_s)
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.group is not None:
            self.group.kill_all()
        if ended is None:
            ended = self._ended_within(None)
        codes = [ended.get(pid, (None, {}))[0] for pid in self.pids]
        usages = [ended.get(pid, (None, {}))[1] for pid in self.pids]
        usage = {"cpu_s": round(sum(u.get("cpu_s", 0) for u in usages), 3),
                 "max_rss_mb": max((u.get("max_rss_mb", 0) for u in usages), default=0)}
        return codes, usage

    def _ended_within(self, seconds: float | None) -> dict | None:
        """{pid: (exit code, usage)} once every process has ended, waiting at most `seconds` (None:
        until they have); None if one still runs. A fork server that died gives {}."""
        from fitness.forkserver import usage

        if self.procs:
            end = time.monotonic() + (seconds if seconds is not None else 1e9)
            out: dict = {}
            while True:
                for proc in self.procs:
                    if proc.pid not in out:
                        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG if seconds is not None else 0)
                        if pid:
                            proc.returncode = os.waitstatus_to_exitcode(status)
                            out[pid] = (proc.returncode, usage(rusage))
                if len(out) == len(self.procs):
                    return out
                if time.monotonic() >= end:
                    return None
                time.sleep(0.01)
        try:
            if seconds is not None and not self.server.answered_within(seconds):
                return None
            return self.server.wait()
        except ForkServerError:
            return {}

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
