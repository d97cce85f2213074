"""Linear attention with the elu(x)+1 feature map (Katharopoulos et al. 2020), in chunked form.

Inside a chunk of `chunk` tokens: the masked quadratic form. Across chunks: the running sum of
the (d x d) key-value outer products and the running key sum (the normaliser) of the chunks
before. The cost grows linearly with T; at T <= chunk it is the quadratic form.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, chunk: int = 64):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.chunk = chunk
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, e, c = self.n_heads, self.head_dim, self.chunk
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = F.elu(q.view(b, t, h, e).transpose(1, 2)) + 1
        k = F.elu(k.view(b, t, h, e).transpose(1, 2)) + 1
        v = v.view(b, t, h, e).transpose(1, 2)
        pad = (-t) % c  # zero keys and values after the end change nothing before it
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        n = (t + pad) // c
        q, k, v = (z.reshape(b, h, n, c, e) for z in (q, k, v))
        mask = torch.ones(c, c, device=x.device).tril()
        scores = (q @ k.transpose(-2, -1)) * mask
        kv = k.transpose(-2, -1) @ v  # (b, h, n, e, e): each chunk's outer products
        state = kv.cumsum(dim=2) - kv  # the chunks before
        ksum = k.sum(dim=-2)
        before = ksum.cumsum(dim=2) - ksum
        num = scores @ v + q @ state
        den = scores.sum(dim=-1) + (q * before.unsqueeze(-2)).sum(dim=-1)
        y = (num / (den.unsqueeze(-1) + 1e-6)).reshape(b, h, n * c, e)[:, :, :t]
        return self.out(y.transpose(1, 2).reshape(b, t, d))
