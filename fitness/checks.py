"""Structural checks on a freshly built Mixer, before any training, and the complexity verdict.

Each check answers one question and returns None (pass) or a reason string the LLM
repair step can act on: does the output have the input's shape and dtype, is it finite,
do gradients flow and stay finite, is the mixer deterministic and causal (changing inputs
after t never changes outputs at <= t, at two batch sizes and lengths, in train and eval mode,
and changing one row of a batch never changes another), does it fit the parameter budget.

These run inside the sandbox on an untrained Mixer: fast, clear feedback for honest code, but a
genome can tell them apart from training. What decides selection is checked by the engine on
the trained model (fitness.testset: causality on real test sequences at secret positions) and
timed by the engine (`complexity_verdict`, from the round trips of the worker's forward passes
at several lengths, the training length included).
"""
from __future__ import annotations

import math
import random
import statistics

import torch
import torch.nn as nn

from fitness.backbone import registered_parameters
from fitness.settings import CheckSettings


class CheckFailed(Exception):
    """A structural check failed; str() is the reason."""


def param_budget(d_model: int, checks: CheckSettings) -> int:
    """The largest parameter count a Mixer of width d_model may have."""
    return int(min(checks.max_params, checks.max_params_per_d2 * d_model * d_model))


def check_params(mixer: nn.Module, d_model: int, checks: CheckSettings) -> str | None:
    """Reject a mixer above the parameter budget."""
    n = sum(p.numel() for p in registered_parameters(mixer))
    budget = param_budget(d_model, checks)
    if n > budget:
        return f"parameter budget exceeded: {n:,} parameters > {budget:,} allowed at d_model={d_model}"
    return None


def check_output(mixer: nn.Module, x: torch.Tensor) -> str | None:
    """Output must be a tensor of x's shape, dtype and device, with finite values."""
    y = mixer(x)
    if not isinstance(y, torch.Tensor):
        return f"forward must return a Tensor, got {type(y).__name__}"
    if type(y) is not torch.Tensor:
        return f"forward must return a plain torch.Tensor, got the subclass {type(y).__name__}"
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


def _forward(mixer: nn.Module, x: torch.Tensor, seed: int | None) -> torch.Tensor:
    if seed is not None:  # train mode: the same dropout masks for both inputs
        torch.manual_seed(seed)
    return mixer(x)


@torch.no_grad()
def check_causality(mixer: nn.Module, x: torch.Tensor, checks: CheckSettings, rng: random.Random,
                    seed: int | None = None) -> str | None:
    """Changing inputs after t must not change outputs at positions <= t, and changing one row of
    the batch must not change the others. `seed`: reseed torch before each forward (train mode)."""
    mode = "train" if mixer.training else "eval"
    y = _forward(mixer, x, seed)
    again = _forward(mixer, x, seed)
    if not torch.equal(y, again):
        diff = (y - again).abs().max().item()
        if diff > checks.tolerance * (1 + y.abs().max().item()):
            return f"forward is not deterministic in {mode} mode (two calls differ by {diff:.3g})"
    scale = 1 + y.abs().max().item()
    where = f"in {mode} mode at batch {x.shape[0]}, length {x.shape[1]}"
    for t in probe_positions(x.shape[1], checks.causality_positions, rng):
        x2 = x.clone()
        x2[:, t + 1:] = 3 * torch.randn_like(x2[:, t + 1:])
        diff = (_forward(mixer, x2, seed)[:, : t + 1] - y[:, : t + 1]).abs()
        worst = diff.max().item()
        if not worst <= checks.tolerance * scale:
            first = int(diff.amax(dim=(0, 2)).gt(checks.tolerance * scale).nonzero()[0])
            return (f"not causal {where}: changing tokens after position {t} changed the output at position "
                    f"{first} by {worst:.3g} (tolerance {checks.tolerance:g} x {scale:.3g}); outputs at t may only "
                    f"depend on inputs at <= t")
    if x.shape[0] > 1:
        x2 = x.clone()
        x2[1:] = 3 * torch.randn_like(x2[1:])
        worst = (_forward(mixer, x2, seed)[0] - y[0]).abs().max().item()
        if not worst <= checks.tolerance * scale:
            return (f"rows of a batch are not independent {where}: changing the other rows changed row 0's "
                    f"output by {worst:.3g}; each sequence must be mixed on its own")
    return None


def steepest_exponent(lengths: list[int], values: list[float]) -> float:
    """The largest log-log slope between consecutive lengths: growth as T**k somewhere in the range
    (a fit over all lengths would let the cheap projections at short T hide quadratic growth)."""
    logs = [(math.log(t), math.log(max(v, 1e-12))) for t, v in zip(lengths, values)]
    return max((y1 - y0) / (x1 - x0) for (x0, y0), (x1, y1) in zip(logs, logs[1:]))


def complexity_verdict(lengths: list[int], times_s: dict[int, list[float]],
                       checks: CheckSettings) -> tuple[dict, str | None]:
    """How the Mixer's forward cost grows with T, from CPU seconds measured outside its process
    (`times_s`: several per length; the lower quartile counts, since contention only ever adds).
    Returns (metrics, reason or None): "time_exponent" is the steepest log-log slope between
    consecutive lengths; "scaling_exponent", checked against max_complexity_exponent, is it less
    complexity_time_margin (CPU time on a shared machine is noisy)."""
    lengths = sorted(lengths)
    times = {t: statistics.quantiles(times_s[t], n=4)[0] if len(times_s[t]) >= 4 else min(times_s[t])
             for t in lengths}
    time_k = steepest_exponent(lengths, [times[t] for t in lengths])
    metrics = {"forward_ms": {str(t): round(v * 1000, 3) for t, v in times.items()},
               "time_exponent": round(time_k, 2), "scaling_exponent": round(time_k - checks.complexity_time_margin, 2)}
    limit, k = checks.max_complexity_exponent, metrics["scaling_exponent"]
    if limit is None or k <= limit:
        return metrics, None
    return metrics, (f"complexity: cost grows as T**{time_k:.2f} (CPU time of the Mixer's forward at T = "
                     f"{', '.join(map(str, lengths))}, less a margin of {checks.complexity_time_margin:g}: "
                     f"T**{k:.2f}), above the limit max_complexity_exponent = {limit:g}; the mixer must be "
                     f"sub-quadratic, e.g. a recurrent or chunked form instead of a (T x T) matrix")


def run_checks(make_mixer, d_model: int, seq_len: int, checks: CheckSettings, seed: int,
               device: str = "cpu") -> dict:
    """Build one Mixer and run every check; raise CheckFailed(reason) on the first failure.
    Returns {"params_mixer_layer": n} when all pass."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    mixer = make_mixer().to(device)
    if not isinstance(mixer, nn.Module):
        raise CheckFailed(f"Mixer(d_model, n_heads) must build an nn.Module, got {type(mixer).__name__}")
    reason = check_params(mixer, d_model, checks)
    x = torch.randn(2, seq_len, d_model, device=device)
    mixer.train()
    reason = reason or check_output(mixer, x) or check_gradients(mixer, x)
    if not reason and checks.causality:
        short = torch.randn(3, max(2, seq_len // 2), d_model, device=device)
        mixer.eval()
        reason = check_causality(mixer, x, checks, rng) or check_causality(mixer, short, checks, rng)
        mixer.train()
        reason = reason or check_causality(mixer, short, checks, rng, seed=seed)
    if reason:
        raise CheckFailed(reason)
    return {"params_mixer_layer": sum(p.numel() for p in registered_parameters(mixer))}
