"""The fork server: same results as a fresh interpreter, nothing of the server reachable from
a genome, no evaluation outliving a killed engine or server, and a dead server replaced."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from evo.seeds import load_seeds
from fitness.evaluate import evaluate_sandboxed
from fitness.executor import EvalJob, LocalExecutor
from fitness.forkserver import ForkServer
from fitness.sandbox import worker_env
from fitness.settings import CheckSettings, FitnessSettings, SandboxSettings
from fitness.tasks import data_env
from genomes import SECRET, TINY_STAGE, at_import, in_forward
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


def run(code, server=None):
    return evaluate_sandboxed("g", code, 1, None, 0, FS, SECRET, device="cpu", server=server)


@pytest.fixture(scope="module")
def server():
    srv = ForkServer().start(worker_env(1, data_env()))
    yield srv
    srv.close()


def test_fork_and_spawn_give_the_same_result(server):
    forked, spawned = run(GOOD, server), run(GOOD)
    assert forked.status == spawned.status == "ok", (forked.reason, spawned.reason)
    assert (forked.metrics["launch"], spawned.metrics["launch"]) == ("fork", "spawn")
    assert forked.score == spawned.score and forked.params == spawned.params
    assert forked.metrics["predictions_sha256"] == spawned.metrics["predictions_sha256"]


def test_server_is_reused_and_children_are_fresh(server):
    pid = server.proc.pid
    # the first genome leaves a mark in a module everybody imports; the second must not see it
    first = run(at_import("F._evoarch_mark = 1"), server)
    second = run(at_import("assert not hasattr(F, '_evoarch_mark'), 'state leaked'"), server)
    assert first.status == "ok", first.reason  # the mark changes only the genome's own process
    assert second.status == "ok", (second.reason, second.metrics.get("log_tail", "")[-500:])
    assert server.proc.pid == pid and server.alive()


def test_no_socket_reachable_from_the_genome(server):
    out = run(at_import(FD_SCAN), server)
    assert out.status == "failed" and "NO SOCKET" in out.reason, out.reason


def test_genome_cannot_signal_its_server(server):
    code = at_import(f"import os, signal\nfor pid in ({server.proc.pid}, os.getppid(), -1):\n"
                     "    try:\n        os.kill(pid, signal.SIGKILL)\n    except Exception:\n        pass")
    out = run(code, server)
    assert out.status == "ok", out.reason  # every kill was refused; the genome trained on
    assert server.alive()


ENGINE = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from genomes import SECRET
from fitness.evaluate import evaluate_sandboxed
from fitness.forkserver import ForkServer
from fitness.sandbox import worker_env
from fitness.settings import FitnessSettings
from fitness.tasks import data_env
settings = FitnessSettings.model_validate_json({settings!r})
srv = ForkServer().start(worker_env(1, data_env())) if sys.argv[1] == "fork" else None
print(srv.proc.pid if srv else 0, flush=True)
evaluate_sandboxed("g", {code!r}, 1, None, 0, settings, SECRET, server=srv)
"""


@pytest.mark.parametrize("launch", ["fork", "spawn"])
def test_no_evaluation_outlives_a_killed_engine(tmp_path, launch):
    settings = FS.model_copy(update={"sandbox": FS.sandbox.model_copy(update={"timeout_s": 300, "cpu_s": 300})})
    script = tmp_path / "engine.py"
    script.write_text(ENGINE.format(root=PROJECT, tests=os.path.join(PROJECT, "tests"),
                                    settings=settings.model_dump_json(), code=in_forward("while True: pass")))
    engine = subprocess.Popen([sys.executable, str(script), launch], stdout=subprocess.PIPE, text=True)
    server_pid = int(engine.stdout.readline())
    parent = server_pid or engine.pid
    deadline = time.monotonic() + 60
    while sum(bool(children(p)) for p in children(parent)) < 2:  # both launchers have forked their workers
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.2)
    processes = children(parent) + [w for p in children(parent) for w in children(p)]  # trainer, launchers, workers
    assert len(processes) == 5, processes
    time.sleep(1.0)
    engine.send_signal(signal.SIGKILL)
    engine.wait()
    deadline = time.monotonic() + 15
    while any(alive(p) for p in processes) or (server_pid and alive(server_pid)):
        assert time.monotonic() < deadline, f"still running after the engine was killed: {processes}"
        time.sleep(0.2)


def test_executor_replaces_a_dead_server():
    settings = FS.model_copy(update={"workers": 1, "sandbox": FS.sandbox.model_copy(update={"timeout_s": 20})})
    loop = in_forward("while True: pass")
    with LocalExecutor(settings, SECRET) as ex:
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
