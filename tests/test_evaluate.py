"""evaluate(): policy rejections never start anything; a real (short) training goes end to end,
scored by the engine; the engine times the complexity probe; task mixes score per task."""
import pytest

from evo.seeds import load_seeds
from fitness.evaluate import clean_text, evaluate, evaluate_sandboxed
from fitness.protocol import FITNESS_PROTOCOL
from fitness.settings import FitnessSettings, StageSettings
from genomes import SECRET
from genomes import TINY as TINIEST

TINY = dict(TINIEST, batch_size=16, steps=20, eval_batches=2)
SETTINGS = FitnessSettings.model_validate({"device": "cpu", "stage1": TINY, "stage2": dict(TINY, seeds=[0, 1]),
                                           "checks": {"complexity_probe": False}})
SEEDS = dict(load_seeds())


def test_policy_rejection_does_not_start_a_worker():
    ev = evaluate("g1", "import os\nclass Mixer: pass\n", 1, None, 0, SETTINGS, SECRET)
    assert ev.status == "rejected" and ev.reason.startswith("policy: line 1: import of `os`")
    assert ev.wall_s < 0.5 and ev.score is None and ev.metrics == {"protocol": FITNESS_PROTOCOL}


def test_short_real_training_end_to_end():
    ev = evaluate("soft", SEEDS["softmax_attention"], 2, None, 1, SETTINGS, SECRET)
    assert ev.status == "ok", (ev.reason, ev.metrics.get("log_tail"))
    assert (ev.genome_id, ev.stage, ev.seed) == ("soft", 2, 1)
    assert 0.0 <= ev.score <= 1.0 and ev.params == 4 * 32 * 32 + 4 * 32
    assert ev.score == ev.metrics["test_accuracy"] and ev.metrics["test_positions"] == 2 * 16 * 2
    assert ev.metrics["causal_after_training"] and ev.metrics["causal_pairs"] >= 2
    for key in ("train_loss", "train_s", "params_total", "params_mixer"):  # the trainer's, trusted
        assert ev.metrics[key] > 0, key
    assert ev.metrics["reported"] == {"params_mixer_layer": ev.params}  # what the genome's worker says, apart
    for key in ("wall_s", "cpu_s", "max_rss_mb", "train_wall_s"):  # measured by the engine and the kernel
        assert ev.metrics[key] > 0, key
    assert all(ev.metrics["containment"].values()), ev.metrics["containment"]
    assert ev.metrics["protocol"] == FITNESS_PROTOCOL and ev.metrics["device"] == "cpu"


def test_same_secret_same_score_other_secret_other_test():
    a = evaluate("a", SEEDS["delta_rule"], 1, None, 0, SETTINGS, SECRET)
    b = evaluate("b", SEEDS["delta_rule"], 1, None, 0, SETTINGS, SECRET)
    c = evaluate("c", SEEDS["delta_rule"], 1, None, 0, SETTINGS, bytes(32))
    assert a.metrics["predictions_sha256"] == b.metrics["predictions_sha256"] and a.score == b.score
    assert a.metrics["test_set"] == b.metrics["test_set"] != c.metrics["test_set"]
    assert a.metrics["predictions_sha256"] != c.metrics["predictions_sha256"]
    assert a.metrics["train_loss"] == b.metrics["train_loss"] != c.metrics["train_loss"]  # training data: secret too


def test_check_rejection_stored_with_reason():
    code = SEEDS["softmax_attention"].replace('scores = scores.masked_fill(~mask, float("-inf"))', "")
    ev = evaluate("leaky", code, 1, None, 0, SETTINGS, SECRET)
    assert ev.status == "rejected" and "not causal" in ev.reason


def test_runtime_error_points_at_genome_line():
    code = SEEDS["short_conv"].replace("return self.out(u * F.silu(g))", "return self.out(u[..., :3])")
    ev = evaluate_sandboxed("bad", code, 1, None, 0, SETTINGS, SECRET)
    assert ev.status == "failed"
    assert "RuntimeError" in ev.reason and "genome line 21: `return self.out(u[..., :3])`" in ev.reason


def test_complexity_timed_by_the_engine():
    limited = SETTINGS.model_copy(update={"checks": SETTINGS.checks.model_copy(update={
        "complexity_probe": True, "complexity_lengths": [256, 512, 1024], "max_complexity_exponent": 1.5})})
    soft = evaluate("soft", SEEDS["softmax_attention"], 1, None, 0, limited, SECRET)
    conv = evaluate("conv", SEEDS["short_conv"], 1, None, 0, limited, SECRET)
    assert soft.status == "rejected" and "above the limit max_complexity_exponent = 1.5" in soft.reason, soft.reason
    assert conv.status == "ok", conv.reason
    c = conv.metrics["complexity"]
    assert set(c["forward_ms"]) == {"32", "256", "512", "1024"}  # the stage's length and the probe's
    # the raw slope carries CPU timing noise; the limit applies to it less the margin
    assert c["scaling_exponent"] == round(c["time_exponent"] - limited.checks.complexity_time_margin, 2) <= 1.5, c


def test_task_mix_scored_per_task():
    mix = SETTINGS.model_copy(update={"stage1": StageSettings(**dict(TINY, tasks={"mqar": 1.0, "shakespeare": 3.0}))})
    ev = evaluate("soft", SEEDS["softmax_attention"], 1, None, 0, mix, SECRET)
    assert ev.status == "ok", ev.reason
    m = ev.metrics
    assert ev.score == pytest.approx(0.25 * m["mqar/score"] + 0.75 * m["shakespeare/score"])
    assert m["shakespeare/test_positions"] == 2 * 16 and m["mqar/test_positions"] == 2 * 16 * 2
    assert "mqar/train_loss" in m and "shakespeare/train_loss" in m


def test_clean_text_bounds_untrusted_text():
    text = clean_text("a\x00b\x1b[31m" + "x" * 10_000, limit=50)
    assert len(text) <= 54 and "\x00" not in text and "\x1b" not in text


def test_settings_reject_bad_values():
    with pytest.raises(ValueError):
        StageSettings(task="lm")
    with pytest.raises(ValueError):
        StageSettings(seq_len=16, num_kv_pairs=8)
    with pytest.raises(ValueError):
        FitnessSettings.model_validate({"sandbox": {"timeout": 3}})
    with pytest.raises(ValueError, match="allow_missing"):
        FitnessSettings.model_validate({"sandbox": {"allow_missing": ["landlok"]}})
