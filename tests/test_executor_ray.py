"""RayExecutor on a real local Ray cluster (no mocks): the same results as LocalExecutor for the
same jobs, policy rejections answered at once, and closing early kills the sandboxes in flight."""
import os
import time

import pytest

ray = pytest.importorskip("ray")

from evo.seeds import load_seeds  # noqa: E402
from fitness.executor import EvalJob, LocalExecutor, make_executor  # noqa: E402
from fitness.executor_ray import RayExecutor  # noqa: E402
from fitness.settings import FitnessSettings  # noqa: E402
import genomes  # noqa: E402
from procs import alive, cmdline, state_and_parent  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ci]  # starting Ray costs ~10 s on 2 cores

TINY = dict(genomes.TINY, timeout_s=120)
NON_CAUSAL = """import torch.nn as nn
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
    def forward(self, x):
        return self.proj(x.mean(dim=1, keepdim=True).expand_as(x))
"""
LOOP = "import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, d, h):\n        while True:\n            pass\n"


def _settings(executor: str, **extra) -> FitnessSettings:
    return FitnessSettings.model_validate({"device": "cpu", "workers": 2, "executor": executor, "stage1": TINY,
                                           "checks": {"complexity_probe": False}, **extra})


@pytest.fixture(scope="module")
def ray_executor():
    ex = make_executor(_settings("ray"), genomes.SECRET)
    assert isinstance(ex, RayExecutor)
    yield ex
    ex.close()
    assert not ray.is_initialized()  # the executor started the local cluster, so it shut it down


def _jobs() -> list[EvalJob]:
    seeds = dict(load_seeds())
    return [
        EvalJob("soft", seeds["softmax_attention"], 1, 0),
        EvalJob("conv", seeds["short_conv"], 1, 3),
        EvalJob("policy", "import os\nclass Mixer: pass\n", 1, 0),
        EvalJob("noncausal", NON_CAUSAL, 1, 1),
    ]


def test_ray_matches_local(ray_executor):
    t0 = time.perf_counter()
    got = {ev.genome_id: ev for ev in ray_executor.run(_jobs())}
    ray_s = time.perf_counter() - t0
    with LocalExecutor(_settings("local"), genomes.SECRET) as ex:
        want = {ev.genome_id: ev for ev in ex.run(_jobs())}
    assert set(got) == set(want) == {"soft", "conv", "policy", "noncausal"}
    for gid, w in want.items():
        g = got[gid]
        assert (g.status, g.seed, g.stage, g.reason) == (w.status, w.seed, w.stage, w.reason), gid
        assert g.params == w.params, gid
        if w.score is None:
            assert g.score is None, gid
        else:
            assert g.score == pytest.approx(w.score, abs=1e-6), gid
    assert want["soft"].ok and want["conv"].ok, [w.reason for w in want.values()]
    assert want["policy"].status == "rejected" and want["policy"].reason.startswith("policy:")
    assert want["noncausal"].status == "rejected" and "causal" in want["noncausal"].reason
    assert got["soft"].metrics["executor"] == "ray" and got["soft"].metrics["device"] == "cpu"
    assert got["soft"].metrics["launch"] == "fork"  # forked by the Ray worker's fork server
    print(f"ray executor: 4 jobs in {ray_s:.1f} s")


def _ray_sandboxes() -> set[int]:
    """pids of sandbox workers driven by a Ray worker process: spawned by it (python -m fitness.worker)
    or forked by its fork server (python -m fitness.forkserver, whose parent is the Ray worker)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = cmdline(pid)
            state, ppid = state_and_parent(pid)
            if state == "Z":
                continue
            if b"fitness.worker" in cmd and cmdline(ppid).startswith(b"ray::"):
                found.add(int(pid))
            elif b"fitness.forkserver" in cmd and b"fitness.forkserver" in cmdline(ppid) \
                    and cmdline(state_and_parent(ppid)[1]).startswith(b"ray::"):
                found.add(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_closing_early_cancels_and_kills_the_sandbox(ray_executor):
    before = _ray_sandboxes()
    it = ray_executor.run([EvalJob("loop", LOOP, 1, 0), EvalJob("fast", "class X: pass\n", 1, 0)])
    first = next(it)
    assert first.genome_id == "fast" and first.status == "rejected"  # answered without waiting for a slot
    deadline = time.monotonic() + 60
    while not (_ray_sandboxes() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    running = _ray_sandboxes() - before
    assert running, "the looping genome's sandbox never started"
    t0 = time.perf_counter()
    it.close()  # cancels the Ray task, whose sandbox kills the process group (timeout would be 120 s)
    assert time.perf_counter() - t0 < 30
    gone = time.monotonic() + 10  # a forced cancel kills the Ray worker; its sandbox follows (parent-death signal)
    while any(alive(pid) for pid in running) and time.monotonic() < gone:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in running)
    assert not ray_executor._inflight
