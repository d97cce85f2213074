"""The engine's side of an evaluation's processes (fitness.sandbox.Channel: the trainer and two
sandboxed workers), spawned and forked: every layer of both workers reported before any genome
code, the deadline and a cancel end everything, how a worker ended is classified from the
kernel's exit status, and nothing is left on disk or in cgroups."""
import os
import threading
import time

import pytest

from fitness.containment import LAYERS
from fitness.evaluate import evaluate_sandboxed
from fitness.sandbox import Channel, Closed
from fitness.settings import CheckSettings, FitnessSettings, SandboxSettings, StageSettings
from genomes import SECRET, TINY_STAGE, ServerPool, at_import, in_forward

FS = FitnessSettings(device="cpu", sandbox=SandboxSettings(timeout_s=30, memory_mb=3072, cpu_s=60),
                     checks=CheckSettings(complexity_probe=False))
JOB = {"code": "", "stage": StageSettings().model_dump(), "checks": FS.checks.model_dump(), "seed": 0,
       "device": "cpu", "threads": 1, "gpu_memory_mb": None}


@pytest.fixture(scope="module", params=["spawn", "fork"])
def server(request):
    pool = ServerPool(1) if request.param == "fork" else None
    yield pool._all[0] if pool else None
    if pool:
        pool.close()


def run(code, server, stage=TINY_STAGE, cancel=None):
    return evaluate_sandboxed("g", code, 1, stage, 0, FS, SECRET, server=server, cancel=cancel)


def test_every_layer_reported_before_the_genome(server):
    with Channel(FS.sandbox, 60, server=server) as channel:
        channel.send(JOB)
        armed, _ = channel.receive()
        root = channel.root
        assert os.path.isdir(root)
    assert armed["op"] == "armed" and len(armed["layers"]) == 2  # the worker that trains, the one that checks
    for report in armed["layers"]:
        assert {name for name, layer in report.items() if layer["active"]} == set(LAYERS), report
    assert not os.path.exists(root)


def test_deadline_kills_the_evaluation(server):
    t0 = time.monotonic()
    ev = run(in_forward("while True: pass"), server, TINY_STAGE.model_copy(update={"timeout_s": 5.0}))
    assert ev.status == "timeout" and "timeout after 5 s" in ev.reason
    assert time.monotonic() - t0 < 12


def test_cancel_kills_the_evaluation(server):
    cancel = threading.Event()
    threading.Timer(2.0, cancel.set).start()
    ev = run(in_forward("while True: pass"), server, cancel=cancel)
    assert ev.status == "killed" and "cancelled" in ev.reason


def test_exit_without_answer_classified(server):
    ev = run(at_import("import os\nos._exit(3)"), server)
    assert ev.status == "failed" and "ended without answering (exit code 3)" in ev.reason, ev.reason


def test_printing_goes_to_the_log_not_the_channel(server):
    ev = run(at_import("print('hello from the genome')\nraise ValueError('boom')"), server)
    assert ev.status == "failed" and "ValueError: boom" in ev.reason
    assert "hello from the genome" in ev.metrics["log_tail"]


def test_receive_refuses_what_it_was_not_asked_for(server):
    with Channel(FS.sandbox, 60, server=server) as channel:
        channel.send(JOB)
        with pytest.raises(Exception, match="exceeds the limit"):
            channel.receive(max_json=16)  # the `armed` report is longer than 16 bytes


def test_closed_channel_raises_closed(server):
    with Channel(FS.sandbox, 60, server=server) as channel:
        channel.send({**JOB, "threads": "not a number"})  # the trainer dies reading the job
        with pytest.raises(Closed):
            channel.receive()
        ended = channel.close(2.0)
    assert ended.trainer not in (0, None) and "ValueError" in ended.trainer_log
