"""Structural checks: every seed passes; leaks of the future, bad shapes, NaNs and budgets are rejected."""
import types

import pytest
import torch

from evo.seeds import load_seeds
from fitness.checks import CheckFailed, run_checks
from fitness.evaluate import load_genome
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


def test_complexity_probe_reports_exponent():
    metrics = run_checks(mixer_factory(dict(load_seeds())["short_conv"]), 32, 32, CheckSettings(), seed=0)
    assert "scaling_exponent" in metrics["complexity"]
