"""Namespaces, private mounts and the unprivileged user, in a plain subprocess: the forked worker
is process 1 and sees only itself and a loopback interface; a child that leaves its session
dies with it; scratch is a small noexec tmpfs; the user is nobody with no capabilities."""
import json
import os
import subprocess
import sys
import time

from procs import cmdline

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import json, os, sys, time
from fitness.namespaces import capabilities, drop_privileges, private_mounts, unshare_all
scratch, marker = sys.argv[1], sys.argv[2]
unshare_all()
pid = os.fork()
if pid:
    os.waitpid(pid, 0)
    sys.exit(0)
info = {"pid": os.getpid()}
info["mounts"] = private_mounts(scratch, 4, 64, [sys.base_prefix])
info["procs"] = sorted(p for p in os.listdir("/proc") if p.isdigit())
with open("/proc/self/net/dev") as f:
    info["interfaces"] = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
os.chdir(scratch)
try:
    with open("big", "wb") as f:
        f.write(b"x" * (8 << 20))
    info["quota"] = "none"
except OSError as e:
    info["quota"] = e.errno
info["drop"] = drop_privileges()
info["uid"], info["caps"] = os.geteuid(), capabilities()
if os.fork() == 0:  # leaves the session, outlives process 1 if anything would
    os.setsid()
    time.sleep(120)
    os._exit(0)
print(json.dumps(info), flush=True)
"""


def test_process_one_alone_with_private_mounts_and_no_survivors(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    marker = f"evoarch-ns-test-{os.getpid()}"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(scratch), marker], capture_output=True, text=True,
                          timeout=60, cwd=PROJECT, env={**os.environ, "PYTHONPATH": PROJECT})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["pid"] == 1 and info["procs"] == ["1"] and info["interfaces"] == ["lo"]
    assert info["quota"] == 28  # ENOSPC: 4 MiB of scratch
    assert info["uid"] == 65534 and info["caps"] == 0, info["drop"]
    assert not os.listdir(scratch)  # the tmpfs was the worker's own
    time.sleep(0.5)
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in cmdline(pid):
                survivors.append(pid)
        except OSError:
            pass
    assert survivors == []
