"""archive.embed: the packaged MiniLM loads offline and gives unit vectors that track code similarity."""
import numpy as np
import pytest

from archive.embed import Embedder

SOFTMAX = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    """Causal softmax attention."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        k = k.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        v = v.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))
'''

LINEAR = SOFTMAX.replace("y = F.scaled_dot_product_attention(q, k, v, is_causal=True)", """q, k = F.elu(q) + 1, F.elu(k) + 1
        att = (q @ k.transpose(-2, -1)).tril()
        y = att @ v / (att.sum(-1, keepdim=True) + 1e-6)""")

CONV = '''
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, 4, groups=d_model, padding=3)
        self.gate = nn.Linear(d_model, d_model)

    def forward(self, x):
        t = x.shape[1]
        y = self.conv(x.transpose(1, 2))[..., :t].transpose(1, 2)
        return y * torch.sigmoid(self.gate(x))
'''


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def test_unit_vectors_of_dim_384(embedder):
    v = embedder.embed([SOFTMAX, CONV, "def broken(:"])  # unparsable code is embedded as written
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_similar_code_is_closer_than_different_code(embedder):
    soft, reformatted, linear, conv = embedder.embed(
        [SOFTMAX, SOFTMAX.replace('"""Causal softmax attention."""', "# comment").replace("3 * d_model", "3*d_model"),
         LINEAR, CONV])
    assert float(soft @ reformatted) > 0.9999  # same normalised code: same vector
    assert float(soft @ linear) > float(soft @ conv) + 0.05
    assert float(soft @ linear) < 0.99  # a real edit is not a near-duplicate at the default threshold
