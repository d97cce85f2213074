"""evaluate(): policy rejections never spawn; a real (short) training run goes end to end."""
import pytest

from evo.seeds import load_seeds
from fitness.evaluate import evaluate, evaluate_in_process
from fitness.settings import FitnessSettings, StageSettings
from genomes import TINY as TINIEST

TINY = dict(TINIEST, batch_size=16, steps=20, eval_batches=2)
SETTINGS = FitnessSettings.model_validate({"device": "cpu", "stage1": TINY, "stage2": dict(TINY, seeds=[0, 1]),
                                           "checks": {"complexity_probe": False}})


def test_policy_rejection_does_not_spawn():
    ev = evaluate("g1", "import os\nclass Mixer: pass\n", 1, None, 0, SETTINGS)
    assert ev.status == "rejected" and ev.reason.startswith("policy: line 1: import of `os`")
    assert ev.wall_s < 0.5 and ev.score is None and ev.metrics == {}


def test_short_real_training_end_to_end():
    ev = evaluate("soft", dict(load_seeds())["softmax_attention"], 2, None, 1, SETTINGS)
    assert ev.status == "ok", ev.reason
    assert (ev.genome_id, ev.stage, ev.seed) == ("soft", 2, 1)
    assert 0.0 <= ev.score <= 1.0 and ev.params == 4 * 32 * 32 + 4 * 32
    for key in ("train_loss", "test_loss", "train_s", "steps_per_s", "params_total", "check_s"):
        assert key in ev.metrics
    assert ev.metrics["device"] == "cpu"


def test_check_rejection_stored_with_reason():
    code = dict(load_seeds())["softmax_attention"].replace('scores = scores.masked_fill(~mask, float("-inf"))', "")
    ev = evaluate("leaky", code, 1, None, 0, SETTINGS)
    assert ev.status == "rejected" and "not causal" in ev.reason


def test_runtime_error_points_at_genome_line():
    code = dict(load_seeds())["short_conv"].replace("return self.out(u * F.silu(g))", "return self.out(u[..., :3])")
    out = evaluate_in_process(code, StageSettings(**TINY), {"complexity_probe": False}, 0)
    assert out["status"] == "failed"
    assert "RuntimeError" in out["reason"] and "genome line 21: `return self.out(u[..., :3])`" in out["reason"]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError):
        StageSettings(task="lm")
    with pytest.raises(ValueError):
        StageSettings(seq_len=16, num_kv_pairs=8)
    with pytest.raises(ValueError):
        FitnessSettings.model_validate({"sandbox": {"timeout": 3}})
