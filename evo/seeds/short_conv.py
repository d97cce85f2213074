"""Gated short convolution (H3 / BaseConv family, without the long filter):
a causal depthwise convolution over the last few tokens, multiplied by a gate of the input.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, kernel: int = 8):
        super().__init__()
        self.kernel = kernel
        self.in_proj = nn.Linear(d_model, 2 * d_model)
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, padding=kernel - 1)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        u, g = self.in_proj(x).chunk(2, dim=-1)
        u = self.conv(u.transpose(1, 2))[..., :t].transpose(1, 2)
        return self.out(u * F.silu(g))
