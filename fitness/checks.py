"""Structural checks on a freshly built Mixer, before any training.

Each check answers one question and returns None (pass) or a reason string the LLM
repair step can act on: does the output have the input's shape and dtype, is it finite,
do gradients flow and stay finite, is the mixer deterministic and causal (changing tokens
after t never changes outputs at <= t), does it fit the parameter budget. A complexity probe
measures forward time and activation memory at several lengths, fits how the cost
scales with the sequence length, and can reject super-linear mixers
(CheckSettings.max_complexity_exponent).
"""
from __future__ import annotations

import math
import random
import statistics
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


def saved_activation_bytes(mixer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward (parameters
    excluded): the activation memory training pays per layer, exact and allocator-independent
    (a (T x T) attention matrix shows as T**2). Uses saved_tensors_hooks, not a dispatch mode,
    which would import torch._dynamo (~2 s) in every fresh worker."""
    params = {p.untyped_storage().data_ptr() for p in mixer.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = mixer(x.detach().requires_grad_(True))
    del y
    return sum(seen.values())


def fit_exponent(lengths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(length): cost ~ T**slope."""
    xs = [math.log(t) for t in lengths]
    ys = [math.log(max(v, 1e-12)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


@torch.no_grad()
def complexity_probe(mixer: nn.Module, d_model: int, lengths: list[int], device: str, repeats: int = 5,
                     time_margin: float = 0.4) -> dict:
    """How the cost of one forward (batch 1) grows with the sequence length T.

    At each length: the activation memory saved for backward (MiB, exact, see
    saved_activation_bytes) and the forward time (ms, no grad; the lower quartile of
    `repeats` timed passes after a warm-up, interleaved across lengths so a burst of load
    hits every length alike). Exponents k of cost ~ T**k are least-squares fits over all
    lengths. "scaling_exponent", the one a limit is checked against, is the larger of the
    memory exponent (deterministic) and the time exponent less `time_margin` (wall time on
    a shared CPU is noisy, but it still catches quadratic work that saves nothing for
    backward, e.g. a broadcast product reduced at once, or a Python loop over pairs)."""
    lengths = sorted(set(lengths))
    xs = {t: torch.randn(1, t, d_model, device=device) for t in lengths}
    mems = {t: saved_activation_bytes(mixer, xs[t]) / 2 ** 20 for t in lengths}  # also the warm-up
    runs: dict[int, list[float]] = {t: [] for t in lengths}
    for _ in range(repeats):  # round-robin, so a burst of load hits every length alike
        for t in lengths:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mixer(xs[t])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            runs[t].append(time.perf_counter() - t0)
    # noise only ever adds time: the lower quartile is steadier than the median on a shared CPU
    times = {t: statistics.quantiles(r, n=4)[0] * 1000 if len(r) >= 4 else min(r) * 1000 for t, r in runs.items()}
    time_k = fit_exponent(lengths, [times[t] for t in lengths])
    mem_k = fit_exponent(lengths, [mems[t] for t in lengths])
    return {
        "forward_ms": {str(k): round(v, 3) for k, v in times.items()},
        "activation_mib": {str(k): round(v, 3) for k, v in mems.items()},
        "time_exponent": round(time_k, 2), "memory_exponent": round(mem_k, 2),
        "scaling_exponent": round(max(mem_k, time_k - time_margin), 2),
    }


def check_complexity(metrics: dict, checks: CheckSettings) -> str | None:
    """Reject when the fitted exponent exceeds checks.max_complexity_exponent."""
    limit = checks.max_complexity_exponent
    k = metrics["scaling_exponent"]
    if limit is None or k <= limit:
        return None
    lengths = ", ".join(metrics["forward_ms"])
    return (f"complexity: cost grows as T**{k:.2f} (activation-memory exponent {metrics['memory_exponent']:.2f}, "
            f"time exponent {metrics['time_exponent']:.2f}, fitted at T = {lengths}), above the limit "
            f"max_complexity_exponent = {limit:g}; the mixer must be sub-quadratic, e.g. a recurrent or "
            f"chunked form instead of a (T x T) matrix")


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
    if checks.complexity_probe or checks.max_complexity_exponent is not None:
        metrics["complexity"] = complexity_probe(mixer, d_model, checks.complexity_lengths, device,
                                                 checks.complexity_repeats, checks.complexity_time_margin)
        reason = check_complexity(metrics["complexity"], checks)
        if reason:
            raise CheckFailed(reason)
    return metrics
