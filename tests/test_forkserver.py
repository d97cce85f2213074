"""The fork server: same results as a fresh interpreter, nothing of the server reachable from
a genome, no evaluation outliving a killed engine or server, and a dead server replaced."""
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest

from evo.seeds import load_seeds
from fitness.evaluate import evaluate
from fitness.executor import EvalJob, LocalExecutor
from fitness.forkserver import ForkServer
from fitness.sandbox import run_job, worker_env
from fitness.settings import CheckSettings, FitnessSettings, SandboxSettings
from fitness.tasks import data_env
from genomes import TINY_STAGE, at_import, in_forward
from procs import alive, children

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE = TINY_STAGE.model_copy(update={"steps": 5})
FS = FitnessSettings(device="cpu", sandbox=SandboxSettings(timeout_s=60, memory_mb=3072, cpu_s=80),
                     checks=CheckSettings(complexity_probe=False), stage1=STAGE)
GOOD = dict(load_seeds())["softmax_attention"]
FD_SCAN = """import os, stat
found = []
for fd in range(3, 1024):
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        continue
    if stat.S_ISSOCK(mode):
        found.append(fd)
raise RuntimeError(f"sockets at fds {found}" if found else "NO SOCKET")"""


def job(code: str) -> dict:
    return {"nonce": secrets.token_hex(16), "code": code, "stage": STAGE.model_dump(),
            "checks": FS.checks.model_dump(), "seed": 0, "device": "cpu", "threads": 1, "max_procs": 0,
            "memory_mb": FS.sandbox.memory_mb}


@pytest.fixture(scope="module")
def server():
    srv = ForkServer().start(worker_env(1, data_env()))
    yield srv
    srv.close()


def test_fork_and_spawn_give_the_same_result(server):
    forked = evaluate("g", GOOD, 1, None, 0, FS, device="cpu", server=server)
    spawned = evaluate("g", GOOD, 1, None, 0, FS, device="cpu")
    assert forked.status == spawned.status == "ok", (forked.reason, spawned.reason)
    assert (forked.metrics["launch"], spawned.metrics["launch"]) == ("fork", "spawn")
    assert forked.score == spawned.score
    assert forked.params == spawned.params
    assert forked.metrics["train_loss"] == spawned.metrics["train_loss"]


def test_server_is_reused_and_children_are_fresh(server):
    pid = server.proc.pid
    # the first genome leaves a mark in a module everybody imports; the second must not see it
    marker = at_import("F._evoarch_mark = 1")
    probe = at_import("assert not hasattr(F, '_evoarch_mark'), 'state leaked'")
    first = run_job(job(marker), FS.sandbox, server=server)
    second = run_job(job(probe), FS.sandbox, server=server)
    assert first.status == "rejected" and "tampering" in first.reason, first.reason
    assert second.status == "ok", (second.reason, second.log_tail[-500:])
    assert server.proc.pid == pid and server.alive()


def test_no_socket_reachable_from_the_genome(server):
    out = run_job(job(at_import(FD_SCAN)), FS.sandbox, server=server)
    assert out.status == "failed"
    assert "NO SOCKET" in out.reason, out.reason


def test_genome_cannot_signal_its_server(server):
    code = at_import("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    out = run_job(job(code), FS.sandbox, server=server)
    assert out.status == "failed" and "sandbox denied os.kill" in out.reason, out.reason
    assert server.alive()


ENGINE = """
import sys, secrets
sys.path.insert(0, {root!r})
from fitness.forkserver import ForkServer
from fitness.sandbox import run_job, worker_env
from fitness.settings import CheckSettings, SandboxSettings
from fitness.tasks import data_env
job = {job!r}
job["nonce"] = secrets.token_hex(8)
srv = ForkServer().start(worker_env(1, data_env())) if sys.argv[1] == "fork" else None
print(srv.proc.pid if srv else 0, flush=True)
run_job(job, SandboxSettings(timeout_s=300, memory_mb=3072, cpu_s=300), server=srv)
"""


@pytest.mark.parametrize("launch", ["fork", "spawn"])
def test_no_evaluation_outlives_a_killed_engine(tmp_path, launch):
    loop = in_forward("while True: pass")
    script = tmp_path / "engine.py"
    script.write_text(ENGINE.format(root=PROJECT, job=job(loop)))
    engine = subprocess.Popen([sys.executable, str(script), launch], stdout=subprocess.PIPE, text=True)
    server_pid = int(engine.stdout.readline())
    parent = server_pid or engine.pid
    deadline = time.monotonic() + 60
    while not children(parent):
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.2)
    (worker,) = children(parent)
    time.sleep(1.0)
    engine.send_signal(signal.SIGKILL)
    engine.wait()
    deadline = time.monotonic() + 15
    while alive(worker) or (server_pid and alive(server_pid)):
        assert time.monotonic() < deadline, f"still running after the engine was killed: worker {worker}"
        time.sleep(0.2)


def test_executor_replaces_a_dead_server():
    settings = FS.model_copy(update={"workers": 1, "sandbox": FS.sandbox.model_copy(update={"timeout_s": 20})})
    loop = in_forward("while True: pass")
    with LocalExecutor(settings) as ex:
        (first,) = ex.run([EvalJob("a", GOOD, 1, 0)])
        slot = ex._all_slots[0]
        old_pid = slot.server.proc.pid
        box = []
        waiter = threading.Thread(target=lambda: box.extend(ex.run([EvalJob("loop", loop, 1, 0)])))
        waiter.start()
        deadline = time.monotonic() + 60
        while not children(old_pid):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(old_pid, signal.SIGKILL)  # the server dies under a running evaluation
        waiter.join(60)
        (dead,) = box
        (after,) = ex.run([EvalJob("b", GOOD, 1, 0)])
        assert slot.server.proc.pid != old_pid
    assert first.status == after.status == "ok" and first.score == after.score
    # the evaluation the server took down ran again, spawned, and ended as the genome does
    assert (dead.status, dead.metrics["launch"]) == ("timeout", "spawn"), (dead.status, dead.reason)
    assert after.metrics["launch"] == "fork"
