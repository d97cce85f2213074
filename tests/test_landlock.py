"""Landlock alone (no audit hook, in a plain subprocess): C-level reads and writes outside the
allowed roots, exec, TCP and signals out are refused by the kernel; allowed paths still work."""
import os
import subprocess
import sys

import pytest

from fitness.landlock import abi_version

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import os, socket, subprocess, sys
from fitness.containment import read_roots
from fitness.landlock import restrict
scratch, outside = sys.argv[1], sys.argv[2]
print(restrict(read_roots("cpu"), [scratch], ["/dev/null"]))
open(os.path.join(scratch, "ok"), "w").write("x")
import torch
def tries():
    yield "read", lambda: open(outside).read()
    yield "read_c", lambda: torch.from_file(outside, size=4, dtype=torch.uint8)
    yield "list", lambda: os.listdir(os.path.dirname(outside))
    yield "write", lambda: open(outside + ".w", "w")
    yield "exec", lambda: subprocess.run(["true"])
    yield "tcp", lambda: socket.create_connection(("127.0.0.1", 9), timeout=1)
    yield "signal", lambda: os.kill(os.getppid(), 0)
    yield "read_allowed", lambda: open(os.path.join(os.path.dirname(socket.__file__), "json", "__init__.py")).read()
for what, fn in tries():
    try:
        fn()
        print(what, "allowed")
    except (OSError, RuntimeError) as e:
        print(what, "denied", getattr(e, "errno", None) or str(e)[:80])
"""


@pytest.mark.skipif(abi_version() < 1, reason="no Landlock in this kernel")
def test_kernel_refuses_what_the_rules_do_not_grant(tmp_path):
    scratch, outside = tmp_path / "scratch", tmp_path / "outside.txt"
    scratch.mkdir()
    outside.write_text("secret\n")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(scratch), str(outside)], capture_output=True,
                          text=True, timeout=120, cwd=PROJECT, env={**os.environ, "PYTHONPATH": PROJECT})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ABI ") and "writes only in scratch" in lines[0]
    seen = dict(line.split(" ", 1) for line in lines[1:])
    for what in ("read", "read_c", "list", "write", "exec"):
        assert seen[what].startswith("denied"), (what, seen[what])
    assert seen["read_allowed"] == "allowed" and (scratch / "ok").exists() and not (tmp_path / "outside.txt.w").exists()
    if "no TCP" in lines[0]:
        assert seen["tcp"].startswith("denied")
    if "signals" in lines[0]:
        assert seen["signal"].startswith("denied")
