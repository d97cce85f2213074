"""Per-evaluation cgroups: limits set, tasks capped (threads count), every process killed
whatever its session, the group removed; an unwritable hierarchy is reported, not ignored."""
import os
import subprocess
import sys
import time

import pytest

from fitness.cgroup import CgroupUnavailable, EvalGroup
from procs import alive

SCRIPT = """
import os, sys, threading, time
from fitness.cgroup import join
join(sys.argv[1:])
if os.fork() == 0:
    os.setsid()
    time.sleep(120)
    os._exit(0)
started = 0
try:
    for _ in range(40):
        threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
        started += 1
except RuntimeError:
    pass
print(started, flush=True)
time.sleep(120)
"""


def test_limits_kill_all_and_remove():
    group = EvalGroup.create(f"evoarch-test-{os.getpid()}", memory_mb=512, max_tasks=12)
    try:
        for d in group.dirs:
            if (d / "pids.max").exists():
                assert (d / "pids.max").read_text().strip() == "12"
            for name in ("memory.max", "memory.limit_in_bytes"):
                if (d / name).exists():
                    assert int((d / name).read_text()) == 512 << 20
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, *group.join_files()], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
        started = int(proc.stdout.readline())
        assert started < 12  # the main thread, its setsid child and the threads share the 12 tasks
        pids = group.pids()
        assert proc.pid in pids and len(pids) == 2  # the process and its setsid child
        group.kill_all()
        proc.wait(timeout=10)
        time.sleep(0.2)
        assert group.pids() == [] and not any(alive(p) for p in pids)
    finally:
        group.remove()
    assert not any(d.exists() for d in group.dirs)


def test_unwritable_hierarchy_is_reported(tmp_path):
    with pytest.raises(CgroupUnavailable, match="cannot create a cgroup"):
        EvalGroup.create("x", 512, 16, root=str(tmp_path / "none"))
