"""LocalExecutor: results stream back as each job finishes; bad genomes do not stop the batch."""
from evo.seeds import load_seeds
from fitness.executor import EvalJob, LocalExecutor
from fitness.settings import FitnessSettings
from genomes import SECRET, TINY


def test_runs_jobs_in_parallel_and_streams():
    settings = FitnessSettings.model_validate({"device": "cpu", "workers": 2, "stage1": TINY,
                                               "checks": {"complexity_probe": False}})
    seeds = dict(load_seeds())
    jobs = [
        EvalJob("bad", "import os\nclass Mixer: pass\n", 1, 0),
        EvalJob("soft", seeds["softmax_attention"], 1, 0),
        EvalJob("conv", seeds["short_conv"], 1, 3),
    ]
    with LocalExecutor(settings, SECRET) as ex:
        results = list(ex.run(jobs))
    by_id = {r.genome_id: r for r in results}
    assert set(by_id) == {"bad", "soft", "conv"}
    assert results[0].genome_id == "bad"  # policy rejection finishes first
    assert by_id["bad"].status == "rejected"
    assert by_id["soft"].status == "ok" and by_id["conv"].status == "ok", [r.reason for r in results]
    assert by_id["conv"].seed == 3


def test_closing_early_kills_in_flight():
    settings = FitnessSettings.model_validate({"device": "cpu", "workers": 1, "stage1": TINY,
                                               "sandbox": {"timeout_s": 60}})
    loop = "import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, d, h):\n        while True:\n            pass\n"
    with LocalExecutor(settings, SECRET) as ex:
        it = ex.run([EvalJob("fast", "class X: pass\n", 1, 0), EvalJob("loop", loop, 1, 0)])
        first = next(it)
        assert first.genome_id == "fast" and first.status == "rejected"
        it.close()  # kills the looping worker instead of waiting 60 s
