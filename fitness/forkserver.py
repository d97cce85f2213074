"""A fork server: pay the worker's imports once per executor slot, not once per genome.

A fresh `python -m fitness.worker` spends ~7 s importing torch, torch._dynamo (which
torch.optim pulls in on the first AdamW) and the harness before it can train anything: about
20% of a stage-1 evaluation on a CPU. The fork server is a process that does those imports
once, runs no torch op (so it holds no OpenMP pool and has not touched CUDA) and never sees
a genome; for each evaluation it forks the evaluation's processes: the trainer (fitness.trainer,
trusted) and one launcher per sandboxed worker (fitness.worker), which applies the containment
layers and forks the worker. Every genome still gets processes that never ran another genome,
in their own sessions and namespaces, with every layer set up after the fork.

Parent side: `ForkServer.start(env)`, then per evaluation `spawn([Child, ...]) -> pids` and
`wait() -> {pid: (exit code, usage)}` once all have ended (code negative: killed by that
signal, as subprocess reports it; usage: CPU seconds and peak resident memory of the child and
what it waited for, from wait4). Server side (`python -m fitness.forkserver FD`): a loop over
requests on the Unix socket FD, each carrying the children's descriptors (SCM_RIGHTS).

Lifetimes: the server exits when its socket closes (the engine exited or was killed), killing
the children it is waiting on; a child gets SIGKILL when the server dies (PR_SET_PDEATHSIG), so
no evaluation outlives the engine.
"""
from __future__ import annotations

import dataclasses
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


ROLES = ("trainer", "launcher")


@dataclasses.dataclass
class Child:
    """One process of an evaluation: its role, descriptors (they become 0, 1, 2, ...), cwd, extra env."""

    role: str
    fds: tuple[int, ...]
    cwd: str
    env: dict[str, str]


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

    def spawn(self, children: list[Child], timeout_s: float = 30.0) -> list[int]:
        """Fork `children` (one evaluation's processes); their pids, in order."""
        if self.sock is None:
            raise ForkServerError("the fork server is closed")
        request = {"op": "fork", "children": [{"role": c.role, "fds": len(c.fds), "cwd": c.cwd, "env": c.env}
                                              for c in children]}
        try:
            socket.send_fds(self.sock, [json.dumps(request).encode() + b"\n"], [fd for c in children for fd in c.fds])
        except OSError as e:
            self.close()
            raise ForkServerError(f"the fork server is gone: {e}") from e
        reply = self._recv(timeout_s)
        if reply.get("op") != "forked":
            raise ForkServerError(f"fork failed: {reply}")
        return [int(pid) for pid in reply["pids"]]

    def wait(self, timeout_s: float = 30.0) -> dict[int, tuple[int, dict]]:
        """{pid: (exit code, usage)} of the last group spawned, once every one of them has ended."""
        reply = self._recv(timeout_s)
        if reply.get("op") != "exited":
            raise ForkServerError(f"unexpected fork-server reply {reply} while waiting")
        return {int(pid): (int(code), usage) for pid, (code, usage) in reply["ended"].items()}

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

    from fitness import (  # noqa: F401
        backbone,
        cgroup,
        checks,
        containment,
        genome_module,
        guard,
        landlock,
        namespaces,
        protocol,
        seccomp,
        settings,
        tasks,
        train,
        trainer,
        worker,
    )
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


def _child(role: str, fds: list[int], server_pid: int, cwd: str, env: dict[str, str]) -> None:
    """In a forked child: become a fresh process of the evaluation (own session, own descriptors),
    then run its role."""
    try:
        os.setsid()
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != server_pid:  # the server died before the line above
            os._exit(70)
        moved = [os.dup(fd) for fd in fds]  # above every target number, so none is overwritten early
        for target, fd in enumerate(moved):
            os.dup2(fd, target)
        os.closerange(len(fds), os.sysconf("SC_OPEN_MAX"))  # the control socket, the server's log, ...
        os.chdir(cwd)
        os.environ.update(env)
        gc.enable()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if role == "trainer":
            from fitness import trainer

            trainer.main()
        else:
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


def _wait_for(pids: list[int], sock: socket.socket) -> dict | None:
    """Reap every pid: {pid: (exit code, usage)}; None if the engine hung up meanwhile (then every
    child's process group is killed)."""
    ended: dict = {}
    while len(ended) < len(pids):
        for pid in pids:
            if pid not in ended:
                done, status, rusage = os.wait4(pid, os.WNOHANG)
                if done:
                    ended[pid] = (os.waitstatus_to_exitcode(status), usage(rusage))
        if len(ended) == len(pids):
            break
        ready, _, _ = select.select([sock], [], [], 0.02)
        if ready and not sock.recv(1, socket.MSG_PEEK):
            for pid in pids:
                if pid not in ended:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    os.waitpid(pid, 0)
            return None
    return ended


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
        msg, fds, _, _ = socket.recv_fds(sock, _MAX_MSG, 64)
        if not msg:
            return
        buffer += msg
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            req = json.loads(line)
            children = req.get("children", []) if req.get("op") == "fork" else []
            if not children or sum(c["fds"] for c in children) != len(fds) or \
                    any(c["role"] not in ROLES for c in children):
                send({"op": "error", "reason": f"bad request {req.get('op')!r} with {len(fds)} fds"})
                for fd in fds:
                    os.close(fd)
                fds = []
                continue
            server_pid, pids, at = os.getpid(), [], 0
            for c in children:
                pid = os.fork()
                if pid == 0:
                    _child(c["role"], fds[at:at + c["fds"]], server_pid, c["cwd"], c["env"])
                pids.append(pid)
                at += c["fds"]
            for fd in fds:
                os.close(fd)
            fds = []
            send({"op": "forked", "pids": pids})
            ended = _wait_for(pids, sock)
            if ended is None:
                return
            send({"op": "exited", "ended": {str(pid): list(v) for pid, v in ended.items()}})


if __name__ == "__main__":
    serve()
