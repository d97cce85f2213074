"""Structural checks on a freshly built Mixer, before any training.

Each check answers one question and returns None (pass) or a reason string the LLM
repair step can act on: does the output have the input's shape and dtype, is it finite,
do gradients flow and stay finite, is the mixer deterministic and causal (changing tokens
after t never changes outputs at <= t), does it fit the parameter budget. A timing probe
at several lengths estimates how the cost scales with the sequence length.
"""
from __future__ import annotations

import math
import random
import time

import torch
import torch.nn as nn

from fitness.settings import CheckSettings


class CheckFailed(Exception):
    """A structural check failed; str() is the reason."""


def param_budget(d_model: int, checks: CheckSettings) -> int:
    """The largest parameter count a Mixer of width d_model may have."""
    return int(min(checks.max_params, checks.max_params_per_d2 * d_model * d_model))


def check_params(mixer: nn.Module, d_model: int, checks: CheckSettings) -> str | None:
    """Reject a mixer above the parameter budget."""
    n = sum(p.numel() for p in mixer.parameters())
    budget = param_budget(d_model, checks)
    if n > budget:
        return f"parameter budget exceeded: {n:,} parameters > {budget:,} allowed at d_model={d_model}"
    return None


def check_output(mixer: nn.Module, x: torch.Tensor) -> str | None:
    """Output must be a tensor of x's shape, dtype and device, with finite values."""
    y = mixer(x)
    if not isinstance(y, torch.Tensor):
        return f"forward must return a Tensor, got {type(y).__name__}"
    if y.shape != x.shape:
        return f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)} (batch, seq, d_model)"
    if y.dtype != x.dtype:
        return f"output dtype {y.dtype} != input dtype {x.dtype}"
    if y.device != x.device:
        return f"output device {y.device} != input device {x.device}"
    if not torch.isfinite(y).all():
        return "output has NaN or infinite values on a standard-normal input"
    return None


def check_gradients(mixer: nn.Module, x: torch.Tensor) -> str | None:
    """Backward must run and give finite gradients to the input and to the parameters."""
    x = x.clone().requires_grad_(True)
    mixer.zero_grad(set_to_none=True)
    y = mixer(x)
    if not y.requires_grad:
        return "output does not depend on the input or parameters through autograd"
    y.square().mean().backward()
    if x.grad is None or not torch.isfinite(x.grad).all():
        return "gradient with respect to the input is missing or not finite"
    for name, p in mixer.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"gradient of parameter {name!r} is not finite"
    mixer.zero_grad(set_to_none=True)
    return None


def probe_positions(seq_len: int, count: int, rng: random.Random) -> list[int]:
    """Positions t to probe: first, middle and last-but-one, then random ones."""
    fixed = [0, seq_len // 2, seq_len - 2]
    rest = [t for t in range(seq_len - 1) if t not in fixed]
    chosen = fixed[:count] + rng.sample(rest, min(len(rest), max(0, count - len(fixed))))
    return sorted(set(chosen))


@torch.no_grad()
def check_causality(mixer: nn.Module, x: torch.Tensor, checks: CheckSettings, rng: random.Random) -> str | None:
    """Changing inputs after t must not change outputs at positions <= t (eval mode)."""
    y = mixer(x)
    if not torch.equal(y, mixer(x)):
        diff = (y - mixer(x)).abs().max().item()
        if diff > checks.tolerance * (1 + y.abs().max().item()):
            return f"forward is not deterministic in eval mode (two calls differ by {diff:.3g})"
    scale = 1 + y.abs().max().item()
    for t in probe_positions(x.shape[1], checks.causality_positions, rng):
        x2 = x.clone()
        x2[:, t + 1:] = 3 * torch.randn_like(x2[:, t + 1:])
        diff = (mixer(x2)[:, : t + 1] - y[:, : t + 1]).abs()
        worst = diff.max().item()
        if not worst <= checks.tolerance * scale:
            first = int(diff.amax(dim=(0, 2)).gt(checks.tolerance * scale).nonzero()[0])
            return (f"not causal: changing tokens after position {t} changed the output at position {first} "
                    f"by {worst:.3g} (tolerance {checks.tolerance:g} x {scale:.3g}); outputs at t may only "
                    f"depend on inputs at <= t")
    return None


@torch.no_grad()
def complexity_probe(mixer: nn.Module, d_model: int, seq_len: int, device: str) -> dict:
    """Forward time (ms, batch 1) at seq_len, 2x and 4x; exponent of time ~ T**k between the ends."""
    times = {}
    for t in (seq_len, 2 * seq_len, 4 * seq_len):
        x = torch.randn(4, t, d_model, device=device)
        mixer(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(2):
            mixer(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times[t] = (time.perf_counter() - t0) / 2 * 1000
    lo, hi = times[seq_len], times[4 * seq_len]
    exponent = math.log(max(hi, 1e-6) / max(lo, 1e-6)) / math.log(4)
    return {"forward_ms": {str(k): round(v, 3) for k, v in times.items()}, "scaling_exponent": round(exponent, 2)}


def run_checks(make_mixer, d_model: int, seq_len: int, checks: CheckSettings, seed: int,
               device: str = "cpu") -> dict:
    """Build one Mixer and run every check; raise CheckFailed(reason) on the first failure.

    Returns metrics (parameter count, complexity probe) when all checks pass.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    mixer = make_mixer().to(device)
    if not isinstance(mixer, nn.Module):
        raise CheckFailed(f"Mixer(d_model, n_heads) must build an nn.Module, got {type(mixer).__name__}")
    reason = check_params(mixer, d_model, checks)
    x = torch.randn(2, seq_len, d_model, device=device)
    mixer.train()
    reason = reason or check_output(mixer, x) or check_gradients(mixer, x)
    mixer.eval()
    if not reason and checks.causality:
        reason = check_causality(mixer, x, checks, rng)
    if reason:
        raise CheckFailed(reason)
    metrics = {"params_mixer_layer": sum(p.numel() for p in mixer.parameters())}
    if checks.complexity_probe:
        metrics["complexity"] = complexity_probe(mixer, d_model, seq_len, device)
    return metrics
