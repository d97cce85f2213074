"""The seccomp filter alone, in a plain subprocess: processes, exec, every socket, leaving the
session and clearing the parent-death signal fail with EPERM; threads and training still work."""
import os
import subprocess
import sys

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import ctypes, os, socket, threading
import torch
from fitness.seccomp import restrict
print(restrict())
libc = ctypes.CDLL(None, use_errno=True)
def pdeath():
    if libc.prctl(1, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")
def tries():
    yield "fork", os.fork
    yield "exec", lambda: os.execv("/bin/true", ["true"])
    yield "udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield "tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield "unix", lambda: socket.socket(socket.AF_UNIX)
    yield "socketpair", socket.socketpair
    yield "setsid", os.setsid
    yield "setpgid", lambda: os.setpgid(0, 0)
    yield "clear_pdeathsig", pdeath
    yield "unshare", lambda: os.unshare(os.CLONE_NEWUSER) if hasattr(os, "unshare") else libc.unshare(0x10000000) and (_ for _ in ()).throw(OSError(ctypes.get_errno(), "unshare"))
for what, fn in tries():
    try:
        if fn() == 0:
            os._exit(0)
        print(what, "allowed")
    except OSError as e:
        print(what, "denied", e.errno)
box = []
t = threading.Thread(target=lambda: box.append(1))
t.start(); t.join()
torch.set_num_threads(2)
x = torch.randn(256, 256, requires_grad=True)
(x @ x).sum().backward()
print("threads", box, "training", bool(x.grad.abs().sum() > 0))
"""


def test_filter_refuses_processes_sockets_and_sessions():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=PROJECT,
                          env={**os.environ, "PYTHONPATH": PROJECT})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "syscalls denied" in lines[0]
    seen = dict(line.split(" ", 1) for line in lines[1:-1])
    assert seen == {k: "denied 1" for k in ("fork", "exec", "udp", "tcp", "unix", "socketpair", "setsid", "setpgid",
                                            "clear_pdeathsig", "unshare")}, seen
    assert lines[-1] == "threads [1] training True"
