"""Static policy: seeds pass; escapes are rejected with a reason naming the line."""
import pytest

from evo.seeds import load_seeds
from fitness.policy import check_policy

HEAD = "import torch\nimport torch.nn as nn\nclass Mixer(nn.Module):\n    pass\n"

REJECTED = {
    "open": (HEAD + "data = open('/etc/passwd').read()\n", "`open`"),
    "import_os": ("import os\n" + HEAD, "import of `os`"),
    "import_subprocess": ("import subprocess\n" + HEAD, "import of `subprocess`"),
    "import_socket": ("import socket\n" + HEAD, "import of `socket`"),
    "import_signal": ("import signal\n" + HEAD, "import of `signal`"),
    "import_sys": ("import sys\n" + HEAD, "import of `sys`"),
    "from_torch_load": ("from torch import load\n" + HEAD, "`torch.load`"),
    "torch_save": (HEAD + "torch.save({}, 'x.pt')\n", "`.save`"),
    "torch_hub": (HEAD + "torch.hub.load('a', 'b')\n", "`.hub`"),
    "torch_ops": (HEAD + "torch.ops.aten.add\n", "`.ops`"),
    "torch_C": (HEAD + "torch._C._set_grad_enabled(False)\n", "private attribute `._C`"),
    "cpp_extension": (HEAD + "torch.utils.cpp_extension.load_inline('x', '')\n", "`.utils`"),
    "torch_os": (HEAD + "torch.os.system('ls')\n", "`.os`"),
    "exec": (HEAD + "exec('1')\n", "`exec`"),
    "eval": (HEAD + "eval('1')\n", "`eval`"),
    "compile": (HEAD + "compile('1', 'x', 'exec')\n", "`compile`"),
    "dunder_import": (HEAD + "__import__('os').system('ls')\n", "`__import__`"),
    "builtins": (HEAD + "__builtins__['open']\n", "`__builtins__`"),
    "getattr": (HEAD + "getattr(torch, 'lo' + 'ad')\n", "`getattr`"),
    "subclasses": (HEAD + "x = ().__class__.__base__.__subclasses__()\n", "dunder attribute"),
    "globals_attr": (HEAD + "def f(): pass\ng = f.__globals__\n", "dunder attribute `.__globals__`"),
    "frame": (HEAD + "def g():\n    yield 1\nf = g().gi_frame.f_back\n", "attribute `.gi_frame`"),
    "monkeypatch": (HEAD + "torch.tanh = lambda x: x\n", "monkeypatching"),
    "monkeypatch_alias": (HEAD + "t = torch\nt.Tensor.add = None\n", "monkeypatching"),
    "monkeypatch_in_init": (
        "import torch\nimport torch.nn as nn\nclass Mixer(nn.Module):\n"
        "    def __init__(self, d, h):\n        super().__init__()\n        nn.functional.softmax = None\n",
        "line 6"),
    "type_escape": (HEAD + "type(torch.ones(1)).add = None\n", "monkeypatching"),
    "type_call": (HEAD + "T = type(torch.ones(1))\n", "`type`"),
    "sys_exit": (HEAD + "raise SystemExit(3)\n", "`SystemExit`"),
    "exit_builtin": (HEAD + "exit(3)\n", "`exit`"),
    "metaclass": ("import torch.nn as nn\nclass Mixer(nn.Module, metaclass=type):\n    pass\n", "metaclass"),
    "dunder_method": (HEAD + "class A:\n    def __del__(self):\n        pass\n", "`__del__`"),
    "get_type_hints": ("import typing\n" + HEAD + "typing.get_type_hints(Mixer)\n", "`.get_type_hints`"),
    "no_mixer": ("import torch\n", "no top-level `class Mixer`"),
    "syntax": ("class Mixer(:\n", "syntax error at line 1"),
    "relative_import": ("from . import x\n" + HEAD, "import from `.`"),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_with_reason(name):
    code, expected = REJECTED[name]
    reason = check_policy(code)
    assert reason is not None, name
    assert expected in reason, reason


@pytest.mark.parametrize("name,code", load_seeds())
def test_seeds_pass(name, code):
    assert check_policy(code) is None


def test_allowed_constructs():
    code = (
        "from __future__ import annotations\nimport math\nfrom functools import partial\n"
        "from typing import Optional\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n"
        "from einops import rearrange\n"
        "class Mixer(nn.Module):\n"
        "    def __init__(self, d_model: int, n_heads: int):\n"
        "        super().__init__()\n        self._scale = 1 / math.sqrt(d_model)\n"
        "        self.proj = nn.Linear(d_model, d_model)\n"
        "    def forward(self, x):\n        y = self.proj(x) * self._scale\n        y[:, 0] = 0\n"
        "        return F.gelu(y)\n"
    )
    assert check_policy(code) is None


def test_reason_names_line():
    reason = check_policy(HEAD + "\n\nimport os\n")
    assert reason.startswith("line 7:"), reason
