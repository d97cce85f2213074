"""Delta-rule linear attention (DeltaNet): a fast-weight memory S updated by the delta rule,
S_t = S_{t-1} + beta_t * k_t^T (v_t - k_t S_{t-1}),  output o_t = q_t S_t.

Computed chunk by chunk: inside a chunk a triangular solve replaces the step-by-step loop.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, chunk: int = 16):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.chunk = chunk
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.beta = nn.Linear(d_model, n_heads)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, e, c = self.n_heads, self.head_dim, self.chunk
        q, k, v = self.qkv(x).view(b, t, 3, h, e).permute(2, 0, 3, 1, 4)  # each (b, h, t, e)
        q = F.normalize(F.silu(q), dim=-1)
        k = F.normalize(F.silu(k), dim=-1)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2).unsqueeze(-1)  # (b, h, t, 1)
        pad = (-t) % c
        q, k, v, beta = [F.pad(z, (0, 0, 0, pad)).view(b, h, -1, c, z.shape[-1]) for z in (q, k, v, beta)]
        eye = torch.eye(c, device=x.device)
        a = eye + ((beta * k) @ k.transpose(-2, -1)).tril(-1)
        w = torch.linalg.solve_triangular(a, beta * k, upper=False, unitriangular=True)
        u = torch.linalg.solve_triangular(a, beta * v, upper=False, unitriangular=True)
        causal = torch.ones(c, c, device=x.device).tril()
        state = x.new_zeros(b, h, e, e)
        outs = []
        for i in range(q.shape[2]):
            qi, ki = q[:, :, i], k[:, :, i]
            ui = u[:, :, i] - w[:, :, i] @ state
            outs.append(qi @ state + ((qi @ ki.transpose(-2, -1)) * causal) @ ui)
            state = state + ki.transpose(-2, -1) @ ui
        y = torch.cat(outs, dim=2)[:, :, :t]
        return self.out(y.transpose(1, 2).reshape(b, t, d))
