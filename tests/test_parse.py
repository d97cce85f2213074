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


def test_a_lone_mixer_class_under_another_name_is_renamed_with_its_uses():
    body = ("class NormalizedMixer(nn.Module):\n    def __init__(self, d_model, n_heads):\n"
            "        super(NormalizedMixer, self).__init__()\n\n    def forward(self, x):\n        return x\n")
    code = extract_code(f"Motivation: normalise.\n```python\n{body}```\n")
    assert "class Mixer(nn.Module)" in code and "super(Mixer, self)" in code and "NormalizedMixer" not in code
    assert code.startswith("from torch import nn\n")


def test_the_mixer_among_several_classes_is_the_one_taking_d_model_and_a_real_mixer_block_wins():
    helper = "class Gate(nn.Module):\n    def __init__(self, width):\n        super().__init__()\n\n    def forward(self, x):\n        return x\n"
    main = "class MyMixer(nn.Module):\n    def __init__(self, d_model, n_heads):\n        super().__init__()\n        self.g = Gate(d_model)\n\n    def forward(self, x):\n        return self.g(x)\n"
    code = extract_code(f"```python\n{helper}\n\n{main}```")
    assert "class Mixer(nn.Module)" in code and "class Gate(nn.Module)" in code
    assert extract_code(f"```python\n{main}```\n```python\n{MIXER}```") == MIXER  # the real Mixer wins


@pytest.mark.parametrize("body", [
    "class A(nn.Module):\n    def forward(self, x):\n        return x\n\n\nclass B(nn.Module):\n    def forward(self, x):\n        return x\n",
    "class Helper:\n    def run(self, x):\n        return x\n",
    "class Other(nn.Module):\n    def forward(self, x):\n        Mixer = x\n        return Mixer\n",
])
def test_no_rename_when_the_mixer_class_is_ambiguous_absent_or_the_name_is_taken(body):
    with pytest.raises(ParseError, match="no top-level `class Mixer`"):
        extract_code(f"```python\n{body}```")
