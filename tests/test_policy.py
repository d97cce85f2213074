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
    # monkeypatching through an alias stored on self
    "self_alias_patch": (
        "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\nclass Mixer(nn.Module):\n"
        "    def __init__(self, d, h):\n        super().__init__()\n        self.f = F\n"
        "        self.f.cross_entropy = None\n", "line 8: assigning to the nested attribute `self.f.cross_entropy`"),
    "self_alias_augassign": (
        "import torch\nimport torch.nn as nn\nclass Mixer(nn.Module):\n    def forward(self, x):\n"
        "        self.t.Tensor.add += 1\n", "nested attribute"),
    "update_wrapper": ("import functools\n" + HEAD + "functools.update_wrapper(torch.tanh, len)\n", "`.update_wrapper`"),
    "from_functools_wraps": ("from functools import wraps\n" + HEAD, "importing `functools.wraps`"),
    "typing_operator": ("import typing\n" + HEAD + "typing.operator.attrgetter('x')\n", "attribute `.operator`"),
    "global_hook": (HEAD + "torch.nn.modules.module.register_module_forward_hook(print)\n",
                    "`.register_module_forward_hook`"),
    "module_hook": (HEAD + "nn.Linear(2, 2).register_forward_hook(print)\n", "`.register_forward_hook`"),
    # tensor subclasses propagate to the logits and could lie to the scoring
    "tensor_subclass": ("import torch\nimport torch.nn as nn\nclass T(torch.Tensor):\n    pass\n" + HEAD,
                        "line 3: the base class `torch.Tensor`"),
    "parameter_subclass": ("import torch.nn as nn\nclass P(nn.Parameter):\n    pass\n", "the base class `nn.Parameter`"),
    "aliased_base": ("import torch\nimport torch.nn as nn\nB = torch.Tensor\nclass T(B):\n    pass\n" + HEAD,
                     "the base class `B`"),
    "call_base": ("import torch\nclass T(type(torch.ones(1))):\n    pass\n", "the base class `type(torch.ones(1))`"),
    "as_subclass": (HEAD + "y = torch.ones(1).as_subclass(torch.Tensor)\n", "`.as_subclass`"),
    "share_memory": (HEAD + "torch.ones(1).share_memory_()\n", "`.share_memory_`"),
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


def test_allowed_classes_and_assignments():
    code = (
        "import torch\nimport torch.nn as nn\nfrom torch.nn import Module\nfrom torch import nn as tnn\n"
        "class Gate(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n        return x\n"
        "class Block(Module):\n    pass\n"
        "class Inner(tnn.Module):\n    pass\n"
        "class Mixer(Block):\n"
        "    def __init__(self, d_model, n_heads):\n        super().__init__()\n"
        "        self.proj = nn.Linear(d_model, d_model)\n        self.cache = {}\n        self.cache['k'] = 1\n"
        "    def forward(self, x):\n        y = self.proj(x)\n        y[:, 0] = 0\n        self.last = y\n        return y\n"
    )
    assert check_policy(code) is None
