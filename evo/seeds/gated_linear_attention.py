"""Gated linear attention (GLA family, Yang et al. 2024), chunk by chunk: linear attention with
positive features elu(x)+1 and a normaliser, where each key dimension of each head forgets its
past by a data-dependent gate, log g = logsigmoid(W x + b) / 16 (flash-linear-attention's logit
normaliser; b starts at 3, so at first g is close to 1 and it is linear attention), then an
output gate. Inside a chunk the decays factor into the queries and keys (the log gate is clamped
at -2 per token so they stay finite); across chunks a (d_k x d_v) state carries the past: the
cost grows linearly with T.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, chunk: int = 16):
        super().__init__()
        self.n_heads, self.head_dim, self.chunk = n_heads, d_model // n_heads, chunk
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.gate = nn.Linear(d_model, d_model)
        nn.init.constant_(self.gate.bias, 3.0)
        self.out_gate = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, e, c = self.n_heads, self.head_dim, self.chunk
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        log_g = (F.logsigmoid(self.gate(x)) / 16).clamp(min=-2.0)
        q, k, v, log_g = (z.view(b, t, h, e).transpose(1, 2) for z in (q, k, v, log_g))
        q, k = F.elu(q) + 1, F.elu(k) + 1
        pad = (-t) % c  # padding after the end: zero keys, no decay
        n = (t + pad) // c
        q, k, v, log_g = (F.pad(z, (0, 0, 0, pad)).reshape(b, h, n, c, e) for z in (q, k, v, log_g))
        cum = log_g.cumsum(dim=-2)  # decay since the chunk's start
        qg, kg = q * cum.exp(), k * (-cum).exp()
        scores = (qg @ kg.transpose(-2, -1)) * torch.ones(c, c, device=x.device).tril()
        k_end = k * (cum[..., -1:, :] - cum).exp()  # each key decayed to the chunk's end
        kv, ksum = k_end.transpose(-2, -1) @ v, k_end.sum(dim=-2)
        state, zsum = x.new_zeros(b, h, e, e), x.new_zeros(b, h, e)
        num, den = [], []
        for i in range(n):
            num.append(qg[:, :, i] @ state)
            den.append(qg[:, :, i] @ zsum.unsqueeze(-1))
            decay = cum[:, :, i, -1].exp()
            state, zsum = decay.unsqueeze(-1) * state + kv[:, :, i], decay * zsum + ksum[:, :, i]
        y = (scores @ v + torch.stack(num, 2)) / (scores.sum(-1, keepdim=True) + torch.stack(den, 2) + 1e-6)
        y = y.reshape(b, h, n * c, e)[:, :, :t].transpose(1, 2).reshape(b, t, d)
        return self.out(y * F.silu(self.out_gate(x)))
