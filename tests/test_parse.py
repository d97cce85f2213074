"""operators.parse: tolerant extraction of the Mixer module and the motivation line."""
import pytest

from operators.parse import ParseError, extract_code, motivation, parse_reply

MIXER = "import torch\nfrom torch import nn\n\n\nclass Mixer(nn.Module):\n    def __init__(self, d_model, n_heads):\n        super().__init__()\n\n    def forward(self, x):\n        return x\n"


def test_python_block_with_prose_around():
    text = f"Sure! Here it is.\nMOTIVATION: softplus keeps features positive.\n```python\n{MIXER}```\nThis works because..."
    code, why = parse_reply(text)
    assert code == MIXER
    assert why == "softplus keeps features positive."


def test_prefers_block_that_defines_mixer():
    text = f"```python\nx = 1\n```\n\n```python\n{MIXER}```"
    assert "class Mixer" in extract_code(text)


def test_plain_fence_and_unclosed_fence():
    assert extract_code(f"```\n{MIXER}```") == MIXER
    assert extract_code(f"MOTIVATION: x\n```python\n{MIXER}") == MIXER  # cut off before closing fence


def test_bare_code_with_leading_and_trailing_prose():
    text = f"Here is the improved module:\n\n{MIXER}\nThe change makes it faster."
    assert extract_code(text) == MIXER


def test_motivation_variants():
    assert motivation("**MOTIVATION:** use a gate") == "use a gate"
    assert motivation("Motivation - decay helps recall\n```python\n```") == "decay helps recall"
    assert motivation("no such line") == ""


@pytest.mark.parametrize("text, reason", [
    ("", "empty reply"),
    ("I cannot help with that.", "no code found"),
    ("```python\ndef f(:\n```", "SyntaxError"),
    ("```python\nclass Other: pass\n```", "no top-level `class Mixer`"),
])
def test_parse_errors_say_why(text, reason):
    with pytest.raises(ParseError, match=reason):
        extract_code(text)


def test_missing_standard_imports_are_added():
    body = "class Mixer(nn.Module):\n    def forward(self, x):\n        return F.silu(x) * math.pi + torch.zeros(1)\n"
    code = extract_code(f"```python\n{body}```")
    assert code.startswith("import torch\nfrom torch import nn\nimport torch.nn.functional as F\nimport math\n")
    assert extract_code(f"```python\n{MIXER}```") == MIXER  # nothing added when all are bound
