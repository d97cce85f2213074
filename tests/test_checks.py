"""Structural checks: every seed passes; leaks of the future (in either mode, at any batch size,
across rows), bad shapes, NaNs and budgets are rejected; the complexity verdict tells the
sub-quadratic seeds from the (T x T) ones."""
import pytest
import torch

from evo.seeds import load_seeds
from fitness.checks import CheckFailed, complexity_verdict, run_checks
from fitness.genome_module import load_genome
from fitness.settings import CheckSettings

torch.set_num_threads(1)
CHECKS = CheckSettings(complexity_probe=False)


def mixer_factory(code, d=32, h=2):
    module = load_genome(code)
    return lambda: module.Mixer(d, h)


def run(code, d=32, t=32, checks=CHECKS):
    return run_checks(mixer_factory(code, d), d, t, checks, seed=0)


@pytest.mark.parametrize("name,code", load_seeds())
def test_seeds_pass(name, code):
    metrics = run(code)
    assert metrics["params_mixer_layer"] > 0


UNMASKED = dict(load_seeds())["softmax_attention"].replace(
    'scores = scores.masked_fill(~mask, float("-inf"))', "")
REVERSED_CUMSUM = """
import torch
import torch.nn as nn
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
    def forward(self, x):
        return self.proj(x).flip(1).cumsum(1).flip(1)
"""
FUTURE_PAD_CONV = """
import torch
import torch.nn as nn
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, 3, padding=1, groups=d_model)
    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)
"""
TIME_MEAN = """
import torch
import torch.nn as nn
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
    def forward(self, x):
        return self.proj(x) + x.mean(dim=1, keepdim=True)
"""


@pytest.mark.parametrize("code", [UNMASKED, REVERSED_CUMSUM, FUTURE_PAD_CONV, TIME_MEAN],
                         ids=["unmasked_attention", "reversed_cumsum", "future_padding_conv", "mean_over_time"])
def test_non_causal_rejected(code):
    with pytest.raises(CheckFailed, match="not causal"):
        run(code)


def test_causality_can_be_disabled():
    run(REVERSED_CUMSUM, checks=CheckSettings(causality=False, complexity_probe=False))


SIMPLE = """
import torch
import torch.nn as nn
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.proj = nn.Linear(d_model, {out})
    def forward(self, x):
        return {expr}
"""


@pytest.mark.parametrize("out,expr,match", [
    ("d_model", "self.proj(x)[:, :-1]", "output shape"),
    ("2 * d_model", "self.proj(x)", "output shape"),
    ("d_model", "self.proj(x).double()", "dtype"),
    ("d_model", "self.proj(x) / 0.0", "NaN or infinite"),
    ("d_model", "(self.proj(x), None)", "must return a Tensor"),
    ("d_model", "self.proj(x) + torch.randn_like(x)", "not deterministic"),
])
def test_bad_outputs_rejected(out, expr, match):
    with pytest.raises(CheckFailed, match=match):
        run(SIMPLE.format(out=out, expr=expr))


def test_parameter_budget():
    code = SIMPLE.format(out="d_model", expr="self.proj(x)")  # 32*32+32 = 1056 params
    with pytest.raises(CheckFailed, match="parameter budget exceeded: 1,056"):
        run(code, checks=CheckSettings(max_params=1000, complexity_probe=False))
    with pytest.raises(CheckFailed, match="parameter budget"):
        run(code, checks=CheckSettings(max_params_per_d2=0.5, complexity_probe=False))


TENSOR_SUBCLASS = """
import torch
import torch.nn as nn
class Lying(torch.Tensor):
    def argmax(self, *args, **kwargs):
        return super().argmax(*args, **kwargs)
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
    def forward(self, x):
        return self.proj(x).as_subclass(Lying)
"""


def test_tensor_subclass_output_rejected():
    # a tensor subclass propagates through the backbone to the logits, whose argmax could lie
    with pytest.raises(CheckFailed, match="plain torch.Tensor, got the subclass Lying"):
        run(TENSOR_SUBCLASS)


BATCH_LEAK = SIMPLE.format(out="d_model", expr="self.proj(x) + (x.roll(-1, dims=1) if x.shape[0] == 3 else 0)")
ROW_MIXING = SIMPLE.format(out="d_model", expr="self.proj(x) + x.mean(dim=0, keepdim=True)")
TRAIN_MODE_LEAK = SIMPLE.format(out="d_model", expr="self.proj(x) + (x.roll(-1, dims=1) if self.training else 0)")


@pytest.mark.parametrize("code,match", [(BATCH_LEAK, "not causal in eval mode at batch 3"),
                                        (ROW_MIXING, "rows of a batch are not independent"),
                                        (TRAIN_MODE_LEAK, "not causal in train mode")],
                         ids=["leak_at_another_batch_size", "rows_mix", "leak_in_train_mode"])
def test_checks_look_at_more_than_one_shape_and_mode(code, match):
    with pytest.raises(CheckFailed, match=match):
        run(code)


def test_hidden_parameters_are_counted():
    code = SIMPLE.format(out="d_model", expr="self.proj(x)").replace(
        "    def forward(self, x):", "    def parameters(self, recurse=True):\n        return iter([])\n    def forward(self, x):")
    with pytest.raises(CheckFailed, match="parameter budget exceeded: 1,056"):
        run(code, checks=CheckSettings(max_params=1000, complexity_probe=False))


# The complexity verdict, fed as the engine feeds it: CPU seconds per length (several each).
LIMITED = CheckSettings(max_complexity_exponent=1.5, complexity_time_margin=0.4)
LENGTHS = [64, 256, 512, 1024]


def series(power: float, noise: float = 0.0) -> dict[int, list[float]]:
    """Times growing as T**power (plus multiplicative noise on some repeats, which only adds)."""
    return {t: [1e-6 * t ** power * (1 + noise * (i % 2)) for i in range(5)] for t in LENGTHS}


def test_complexity_quadratic_rejected_linear_accepted():
    metrics, reason = complexity_verdict(LENGTHS, series(2.0), LIMITED)
    assert reason is not None and "above the limit max_complexity_exponent = 1.5" in reason
    assert metrics["time_exponent"] == 2.0 and metrics["scaling_exponent"] == 1.6
    metrics, reason = complexity_verdict(LENGTHS, series(1.0, noise=0.5), LIMITED)
    assert reason is None and metrics["time_exponent"] == 1.0  # the lower quartile shrugs off the noise
    assert set(metrics["forward_ms"]) == {"64", "256", "512", "1024"}


def test_complexity_steepest_segment_counts():
    times = {64: [1.0] * 5, 256: [1.1] * 5, 512: [1.2] * 5, 1024: [4.8] * 5}  # flat, then quadratic
    metrics, reason = complexity_verdict(LENGTHS, times, LIMITED)
    assert metrics["time_exponent"] == 2.0 and reason is not None


def test_complexity_report_only_without_a_limit():
    metrics, reason = complexity_verdict(LENGTHS, series(2.0), CheckSettings())
    assert reason is None and metrics["scaling_exponent"] == 1.6


def test_complexity_lengths_validated():
    with pytest.raises(ValueError, match="distinct lengths"):
        CheckSettings(complexity_lengths=[64, 64])
