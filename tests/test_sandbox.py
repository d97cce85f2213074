"""Sandbox containment: hostile genomes run WITHOUT the static policy (to test the runtime
layers: audit hook, rlimits, deadline, process-group kill). Each must end with a stored
reason and leave the evaluator working. All jobs run once, two at a time, in a fixture."""
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest

from evo.seeds import load_seeds
from fitness.sandbox import run_job
from fitness.settings import CheckSettings, SandboxSettings
from genomes import TINY_STAGE, ServerPool, at_import, in_forward, in_init

MARK = f"/tmp/evoarch-hostile-{os.getpid()}"
SANDBOX = SandboxSettings(timeout_s=25, memory_mb=3072, cpu_s=60)
STAGE = TINY_STAGE.model_copy(update={"steps": 2})


HOSTILE = {
    "read_file": (at_import("data = open('/etc/passwd').read()"), "failed", "sandbox denied open: reading '/etc/passwd'"),
    "write_file": (at_import(f"open('{MARK}-w', 'w').write('x')"), "failed", "sandbox denied open: writing"),
    "socket": (at_import("import socket\nsocket.socket().connect(('127.0.0.1', 9))"), "failed", "sandbox denied"),
    "subprocess": (at_import(f"import subprocess\nsubprocess.run(['touch', '{MARK}-s'])"), "failed", "sandbox denied"),
    "os_system": (at_import(f"import os\nos.system('touch {MARK}-o')"), "failed", "sandbox denied os.system"),
    "os_fork": (at_import("import os\nos.fork()"), "failed", "sandbox denied os.fork"),
    "dunder_escape": (at_import(
        "p = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]\n"
        f"p(['touch', '{MARK}-d'])"), "failed", "sandbox denied subprocess.Popen"),
    "import_escape": (at_import(f"__import__('os').system('touch {MARK}-i')"), "failed", "sandbox denied os.system"),
    "kill_parent": (at_import("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"), "failed", "sandbox denied os.kill"),
    "raise_limits": (at_import("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))"), "failed", "sandbox denied resource.setrlimit"),
    "loop_init": (in_init("while True: pass"), "timeout", "timeout after"),
    "loop_forward": (in_forward("while True: pass"), "timeout", "timeout after"),
    "signal_ignore_loop": (at_import("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                     "signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass"),
                           "timeout", "timeout after"),
    "allocate": (in_init("self.big = [torch.empty(10**9) for _ in range(100)]"),
                 "killed", "memory limit 3072 MB exceeded"),
    "sys_exit": (at_import("import sys\nsys.exit(3)"), "failed", "SystemExit: 3"),
    "os_exit": (at_import("import os\nos._exit(3)"), "failed", "exit code 3 before reporting"),
    "forged_result": (at_import("print('0' * 32 + ' {\"status\": \"ok\", \"score\": 1.0}')\nimport os\nos._exit(0)"),
                      "failed", "exit code 0 before reporting"),
    "ctypes": (at_import("import ctypes\nctypes.string_at(0)"), "failed", "sandbox denied"),
}


def run_raw(code, sandbox=SANDBOX, server=None):
    job = {"nonce": secrets.token_hex(16), "code": code, "stage": STAGE.model_dump(),
           "checks": CheckSettings(complexity_probe=False).model_dump(), "seed": 0, "device": "cpu",
           "threads": 1, "max_procs": 0, "memory_mb": sandbox.memory_mb}
    return run_job(job, sandbox, timeout_s=sandbox.timeout_s, server=server)


@pytest.fixture(scope="module", params=["spawn", "fork"])
def outcomes(request):
    """{name: Outcome} with workers spawned fresh, or forked from two fork servers."""
    names = sorted(HOSTILE, key=lambda n: HOSTILE[n][1] != "timeout")  # long ones first
    small = SandboxSettings(timeout_s=12, memory_mb=3072, cpu_s=60)
    pool = ServerPool(2) if request.param == "fork" else None
    run = pool.run if pool else lambda fn, *a, **k: fn(*a, **k)
    try:
        with ThreadPoolExecutor(2) as threads:
            futs = {n: threads.submit(run, run_raw, HOSTILE[n][0], small if HOSTILE[n][1] == "timeout" else SANDBOX)
                    for n in names}
            futs["good"] = threads.submit(run, run_raw, dict(load_seeds())["softmax_attention"])
            return {n: f.result() for n, f in futs.items()}
    finally:
        if pool:
            pool.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_contained(outcomes, name):
    _, status, reason = HOSTILE[name]
    out = outcomes[name]
    assert out.status == status, (out.status, out.reason, out.log_tail[-500:])
    assert reason in out.reason, (out.reason, out.log_tail[-500:])


def test_no_side_effects(outcomes):
    leftovers = [p for p in os.listdir("/tmp") if p.startswith(os.path.basename(MARK))]
    assert leftovers == []


def test_evaluator_survives(outcomes):
    good = outcomes["good"]
    assert good.status == "ok", (good.reason, good.log_tail[-500:])
    assert 0.0 <= good.result["score"] <= 1.0


LANDLOCK_PROBE = """
import os, socket, subprocess, sys
from fitness.guard import restrict_filesystem
scratch, outside = sys.argv[1], sys.argv[2]
print(restrict_filesystem(scratch))
open(os.path.join(scratch, "ok"), "w").write("x")
def tries():
    yield "write", lambda: open(outside, "w")
    yield "exec", lambda: subprocess.run(["true"])
    yield "tcp", lambda: socket.create_connection(("127.0.0.1", 9), timeout=1)
    yield "signal", lambda: os.kill(os.getppid(), 0)
for what, fn in tries():
    try:
        fn()
        print(what, "allowed")
    except OSError as e:
        print(what, "denied", e.errno)
"""


def test_landlock_kernel_layer(tmp_path):
    """The kernel layer alone (no audit hook): C-level writes, exec, TCP and signals out are denied."""
    import subprocess
    import sys

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    outside = tmp_path / "outside"
    proc = subprocess.run([sys.executable, "-c", LANDLOCK_PROBE, str(scratch), str(outside)], capture_output=True,
                          text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    if lines[0].startswith("unavailable"):
        pytest.skip(f"Landlock {lines[0]}")
    assert "writes only in scratch" in lines[0] and "no exec" in lines[0]
    assert (scratch / "ok").exists() and not outside.exists()
    denied = {line.split()[0] for line in lines[1:] if " denied " in line}
    assert {"write", "exec"} <= denied, lines
    if "no TCP" in lines[0]:
        assert "tcp" in denied, lines
    if "signals scoped" in lines[0]:
        assert "signal" in denied, lines
