"""The fixed language model around a genome's Mixer, so scores compare mixers, not tricks.

embedding -> n_layers x [norm -> short causal depthwise conv -> Mixer -> residual
(-> norm -> MLP -> residual)] -> norm -> tied output head, evaluated only at masked positions.
The short convolution follows Zoology: without it softmax attention does not learn MQAR
within CPU budgets.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over the sequence: (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


class Block(nn.Module):
    """norm -> short conv -> Mixer -> residual, then optionally norm -> MLP -> residual."""

    def __init__(self, mixer: nn.Module, d_model: int, conv_kernel: int, mlp: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.conv = ShortConv(d_model, conv_kernel) if conv_kernel > 0 else nn.Identity()
        self.mixer = mixer
        self.mlp = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        ) if mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.conv(self.norm(x)))
        if self.mlp is not None:
            x = x + self.mlp(x)
        return x


class Backbone(nn.Module):
    """Token model with a genome's Mixer in every block; logits only where `mask` is True."""

    def __init__(self, make_mixer: Callable[[], nn.Module], vocab_size: int, d_model: int,
                 n_layers: int, conv_kernel: int, mlp: bool):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)  # best of 0.02 / d**-0.5 / 1 measured on MQAR
        self.blocks = nn.ModuleList(Block(make_mixer(), d_model, conv_kernel, mlp) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """inputs (B, T) ids, mask (B, T) bool -> logits (N, V) for the N masked positions."""
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x[mask]), self.embed.weight)

    def mixer_params(self) -> int:
        """Parameters inside the Mixers (all layers), as `registered_parameters` finds them."""
        return sum(p.numel() for b in self.blocks for p in registered_parameters(b.mixer))


def registered_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every parameter registered in `module` and its submodules, found by reading the modules'
    own registries (`_parameters`, `_modules`), never by calling methods a genome can override
    (`parameters()`, `named_modules()`, ...). The optimizer trains exactly these and the
    parameter count counts exactly these: a parameter hidden from one is hidden from both."""
    found: dict[int, nn.Parameter] = {}
    seen: set[int] = set()
    stack = [module]
    while stack:
        m = stack.pop()
        if id(m) in seen or not isinstance(m, nn.Module):
            continue
        seen.add(id(m))
        own = object.__getattribute__(m, "__dict__")
        for p in own.get("_parameters", {}).values():
            if isinstance(p, nn.Parameter):
                found.setdefault(id(p), p)
        stack.extend(reversed(list(own.get("_modules", {}).values())))
    return list(found.values())
