"""A fork server: pay the worker's imports once per executor slot, not once per genome.

A fresh `python -m fitness.worker` spends ~7 s importing torch, torch._dynamo (which
torch.optim pulls in on the first AdamW) and the harness before it can train anything: about
20% of a stage-1 evaluation on a CPU. The fork server is a process that does those imports
once, runs no torch op (so it holds no OpenMP pool and has not touched CUDA) and never sees
a genome; for each evaluation it forks one child that becomes the launcher (fitness.worker),
which applies the containment layers and forks the worker. Every genome still gets its own
process that never ran another genome, in its own session and namespaces, with every layer
set up after the fork.

Parent side: `ForkServer.start(env)`, then per evaluation `spawn(fds, cwd, env) -> pid` and
`wait(pid, timeout) -> (exit code, usage)` (code negative: killed by that signal, as
subprocess reports it; usage: CPU seconds and peak resident memory of the launcher and the
worker, from wait4). Server side (`python -m fitness.forkserver FD`): a loop over requests on
the Unix socket FD, each carrying the child's three descriptors (SCM_RIGHTS).

Lifetimes: the server exits when its socket closes (the engine exited or was killed), killing
the child it is waiting on; a child gets SIGKILL when the server dies (PR_SET_PDEATHSIG), so
no evaluation outlives the engine.
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_MSG = 1 << 20
_PR_SET_PDEATHSIG = 1


class ForkServerError(RuntimeError):
    """The fork server could not start, died, or broke its protocol."""


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux prctl)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class ForkServer:
    """Parent-side handle of one fork server (one per executor slot; not shared between threads)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self._log_path = ""
        self._buffer = b""

    def start(self, env: dict[str, str], timeout_s: float = 120.0) -> "ForkServer":
        """Start the server with environment `env` and wait until its imports are done."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd, self._log_path = tempfile.mkstemp(prefix="evoarch-forkserver-", suffix=".log")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fitness.forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=PROJECT_ROOT, env=env,
                start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(),),
            )
        finally:
            os.close(fd)
            theirs.close()
        self.sock = ours
        reply = self._recv(timeout_s)
        if reply.get("op") != "ready":
            problem = f"fork server did not start: {reply} {self.log_tail()}"
            self.close()
            raise ForkServerError(problem)
        return self

    def alive(self) -> bool:
        """Whether the server is open and its process still running."""
        return self.sock is not None and self.proc is not None and self.proc.poll() is None

    def spawn(self, fds: tuple[int, int, int], cwd: str, env: dict[str, str], timeout_s: float = 30.0) -> int:
        """Fork a worker with stdin/stdout/stderr = fds, in `cwd`, with `env` added; return its pid."""
        if self.sock is None:
            raise ForkServerError("the fork server is closed")
        try:
            socket.send_fds(self.sock, [json.dumps({"op": "fork", "cwd": cwd, "env": env}).encode() + b"\n"], list(fds))
        except OSError as e:
            self.close()
            raise ForkServerError(f"the fork server is gone: {e}") from e
        reply = self._recv(timeout_s)
        if reply.get("op") != "forked":
            raise ForkServerError(f"fork failed: {reply}")
        return int(reply["pid"])

    def wait(self, pid: int, timeout_s: float = 30.0) -> tuple[int, dict]:
        """(exit code, usage) of the launcher `pid` once it has ended (code negative: the signal that
        killed it; usage: {"cpu_s", "max_rss_mb"} of it and the worker it waited for)."""
        reply = self._recv(timeout_s)
        if reply.get("op") != "exited" or reply.get("pid") != pid:
            raise ForkServerError(f"unexpected fork-server reply {reply} while waiting for {pid}")
        return int(reply["code"]), reply.get("usage", {})

    def answered_within(self, seconds: float) -> bool:
        """Whether a reply is waiting, or arrives within `seconds` (without reading it)."""
        if b"\n" in self._buffer:
            return True
        if self.sock is None:
            raise ForkServerError("the fork server is closed")
        return bool(select.select([self.sock], [], [], seconds)[0])

    def close(self) -> None:
        """Stop the server (it kills a worker it still waits on)."""
        self._buffer = b""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = ""

    def log_tail(self, chars: int = 1500) -> str:
        """The end of the server's own log (its start-up errors)."""
        try:
            with open(self._log_path, "rb") as f:
                return f.read()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _recv(self, timeout_s: float) -> dict:
        try:
            return self._recv_line(timeout_s)
        except (ForkServerError, OSError, ValueError) as e:
            self.close()  # out of step with the server: it is not used again
            raise e if isinstance(e, ForkServerError) else ForkServerError(f"fork server protocol error: {e}") from e
        except BaseException:  # interrupted mid-reply (KeyboardInterrupt, a Ray cancel): same
            self.close()
            raise

    def _recv_line(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ForkServerError(f"no reply from the fork server in {timeout_s:g} s")
            if self.sock is None:
                raise ForkServerError("the fork server is closed")
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    code = self.proc.poll() if self.proc else None
                    raise ForkServerError(f"the fork server exited (code {code}) {self.log_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


# --------------------------------------------------------------------------- server side


def _preload() -> None:
    """Everything a worker imports before it arms the guard, so a forked child finds it loaded."""
    import torch
    import torch._dynamo  # noqa: F401  - what the first AdamW would import (~3 s)
    import torch.optim  # noqa: F401
    import torch.utils._python_dispatch  # noqa: F401  - the worker lists the harness's operators with it

    from fitness import (backbone, cgroup, checks, containment, genome_module, guard, landlock,  # noqa: F401
                         namespaces, protocol, seccomp, settings, tasks, train, worker)
    from fitness.tasks import mqar, shakespeare  # noqa: F401

    try:
        import pyseccomp  # noqa: F401  - finds libseccomp with a subprocess: never under the sandbox
    except (ImportError, OSError):
        pass

    try:
        import einops  # noqa: F401
    except ImportError:
        pass
    assert not torch.cuda.is_initialized(), "the fork server must not touch CUDA"


def _child(fds: list[int], server_pid: int, cwd: str, env: dict[str, str]) -> None:
    """In the forked child: become a fresh worker (own session, own stdio), then run it."""
    try:
        os.setsid()
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != server_pid:  # the server died before the line above
            os._exit(70)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the control socket, the server's log, ...
        os.chdir(cwd)
        os.environ.update(env)
        gc.enable()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from fitness import worker

        worker.launch()
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(2, f"fork server child failed: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(71)
    os._exit(0)


def usage(rusage) -> dict:
    """CPU seconds and peak resident memory (MiB) from a wait4 resource usage."""
    return {"cpu_s": round(rusage.ru_utime + rusage.ru_stime, 3), "max_rss_mb": round(rusage.ru_maxrss / 1024, 1)}


def _wait_for(pid: int, sock: socket.socket) -> tuple[int, dict] | None:
    """Reap `pid`: (exit code, usage); None if the engine hung up meanwhile (the child's group is killed)."""
    while True:
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage(rusage)
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready and not sock.recv(1, socket.MSG_PEEK):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            os.waitpid(pid, 0)
            return None


def serve() -> None:
    """The server loop: preload, say ready, then one fork per request until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    sock = socket.socket(fileno=int(sys.argv[1]))
    buffer = b""
    gc.disable()  # what Python's docs advise for a pre-fork server: no collection before the freeze,
    _preload()
    gc.freeze()  # then everything imported moves to a permanent generation the children's GC skips

    def send(msg: dict) -> None:
        sock.sendall(json.dumps(msg).encode() + b"\n")

    send({"op": "ready", "pid": os.getpid()})
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, _MAX_MSG, 3)
        if not msg:
            return
        buffer += msg
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            req = json.loads(line)
            if req["op"] != "fork" or len(fds) != 3:
                send({"op": "error", "reason": f"bad request {req.get('op')!r} with {len(fds)} fds"})
                for fd in fds:
                    os.close(fd)
                continue
            server_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                _child(fds, server_pid, req["cwd"], req["env"])
            for fd in fds:
                os.close(fd)
            fds = []
            send({"op": "forked", "pid": pid})
            ended = _wait_for(pid, sock)
            if ended is None:
                return
            send({"op": "exited", "pid": pid, "code": ended[0], "usage": ended[1]})


if __name__ == "__main__":
    serve()
