"""archive.normalise: comments and docstrings vanish, formatting is canonical, output is stable."""
import pytest

from archive.normalise import NormaliseError, code_hash, normalise

SRC = '''
"""Module docstring."""
import torch   # trailing comment
from torch import nn


class Mixer(nn.Module):
    """Class docstring."""

    def __init__(self, d_model: int, n_heads: int):
        """Init docstring."""
        super().__init__()
        # a comment line
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        """Only a docstring before the return."""
        return self.proj(x)
'''

REFORMATTED = """import torch
from torch import nn
class Mixer(nn.Module):
    def __init__(self, d_model:int, n_heads:int):
        super(
        ).__init__()
        self.proj=nn.Linear(d_model,d_model)
    def forward(self,x): return self.proj(x)
"""


def test_drops_comments_and_docstrings():
    out = normalise(SRC)
    assert "#" not in out and "docstring" not in out and "comment" not in out
    assert "self.proj = nn.Linear(d_model, d_model)" in out


def test_stable_and_formatting_insensitive():
    out = normalise(SRC)
    assert normalise(out) == out
    assert normalise(REFORMATTED) == out
    assert code_hash(SRC) == code_hash(REFORMATTED)
    assert len(code_hash(SRC)) == 64


def test_semantic_change_changes_hash():
    assert code_hash(SRC) != code_hash(SRC.replace("d_model, d_model", "d_model, 2 * d_model"))


def test_docstring_only_body_becomes_pass_and_stays_valid():
    out = normalise('def f():\n    """doc"""\n\ntry:\n    x = 1\nfinally:\n    "note"\n')
    compile(out, "<normalised>", "exec")
    assert normalise(out) == out and "pass" in out


def test_syntax_error_is_clear():
    with pytest.raises(NormaliseError, match="line 2"):
        normalise("x = 1\ndef broken(:\n")
    with pytest.raises(ValueError):  # NormaliseError is a ValueError
        code_hash("class (")
