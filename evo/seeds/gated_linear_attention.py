"""Gated (decayed) linear attention: each head forgets its past by a data-dependent gate.

Output at t: sum over s <= t of (q_t . k_s) * prod_{s < r <= t} g_r * v_s, with the gate
g_r = sigmoid(w . x_r) in (0, 1) per head (GLA / RetNet family), then a norm and an output gate.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.gate = nn.Linear(d_model, n_heads)
        self.out_gate = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(self.head_dim)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        log_g = F.logsigmoid(self.gate(x)).transpose(1, 2)  # (b, h, t)
        cum = log_g.cumsum(dim=-1)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        decay = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~mask, float("-inf")).exp()
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim) * decay
        y = self.norm(scores @ v)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.out(y * F.silu(self.out_gate(x)))
