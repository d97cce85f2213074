"""Classic (non-LLM) variation: AST-level edits of a genome, and a crossover that blends two.

Each mutation takes a genome's source and a seeded `random.Random` and returns new source, or
None where it does not apply (nothing to swap, no gate to drop). The edits keep the Mixer
contract by construction (same input and output shape, causal where the parent was):

- `swap_activation`  one elementwise activation (F.elu, F.relu, F.gelu, F.silu, F.softplus,
  F.mish, torch.sigmoid, torch.tanh) becomes another;
- `change_size`      an integer default of `__init__` other than the first two (a kernel size,
  a chunk length) is halved, doubled or moved by one;
- `scale_constant`   a float literal in `forward` (an epsilon, an offset) is halved or doubled;
- `add_output_gate`  output * sigmoid(Linear(x));
- `add_output_norm`  LayerNorm(output);
- `add_skip`         output + a learned per-channel scale (zero at start) * x;
- `drop_gate`        a product with a sigmoid or SiLU gate loses the gate.

`crossover(a, b)` puts both parents' Mixers in one module (their top-level names prefixed) and
mixes their outputs by a learned gate. Every child goes through the same screen and checks as
an LLM child; `propose` records which edit made it. Useful for LLM-free baselines ("is the LLM
worth its cost?") and for fast searches in tests.
"""
from __future__ import annotations

import ast
import random
from typing import Callable

from records.source import parse as parse_source

ACTIVATIONS = ("F.elu", "F.relu", "F.gelu", "F.silu", "F.softplus", "F.mish", "torch.sigmoid", "torch.tanh")
GATES = ("torch.sigmoid", "F.sigmoid", "F.silu")


class ClassicError(ValueError):
    """A genome the classic operators cannot edit (no parsable `class Mixer` with __init__ and forward)."""


def _mixer(tree: ast.Module) -> tuple[ast.ClassDef, ast.FunctionDef, ast.FunctionDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Mixer":
            methods = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
            if "__init__" in methods and "forward" in methods and len(methods["__init__"].args.args) >= 3 \
                    and len(methods["forward"].args.args) >= 2:
                return node, methods["__init__"], methods["forward"]
    raise ClassicError("no `class Mixer` with __init__(self, d_model, n_heads) and forward(self, x)")


def _parse(code: str) -> tuple[ast.Module, ast.ClassDef, ast.FunctionDef, ast.FunctionDef]:
    try:
        tree = parse_source(code)
    except SyntaxError as e:
        raise ClassicError(f"unparsable genome: {e}") from None
    return (tree, *_mixer(tree))


def _name(node: ast.AST) -> str:
    return ast.unparse(node) if isinstance(node, (ast.Name, ast.Attribute)) else ""


def _ensure_imports(tree: ast.Module) -> None:
    """`import torch` and `import torch.nn as nn` at the top if the genome lacks them."""
    have = {ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    start = 1 if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant) else 0
    while start < len(tree.body) and isinstance(tree.body[start], ast.ImportFrom) and tree.body[start].module == "__future__":
        start += 1
    for line in ("import torch.nn as nn", "import torch"):
        if line not in have:
            tree.body.insert(start, parse_source(line).body[0])


def _fresh(cls: ast.ClassDef, stem: str) -> str:
    used = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)}
    i = 0
    while f"{stem}{i}" in used:
        i += 1
    return f"{stem}{i}"


def _wrap_returns(forward: ast.FunctionDef, wrap: Callable[[ast.expr], ast.expr]) -> bool:
    """Replace the value of every `return` of forward (not of nested functions) with wrap(value)."""
    done = False

    class Returns(ast.NodeTransformer):
        def visit_FunctionDef(self, node):
            return node if node is not forward else self.generic_visit(node)

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Lambda(self, node):
            return node

        def visit_Return(self, node):
            nonlocal done
            if node.value is not None:
                node.value = wrap(node.value)
                done = True
            return node

    Returns().visit(forward)
    return done


def _add_module(init: ast.FunctionDef, attr: str, expr: str) -> None:
    """Append `self.<attr> = <expr>` to __init__ (after super().__init__() and everything else)."""
    init.body.append(parse_source(f"self.{attr} = {expr}").body[0])


def _finish(tree: ast.Module) -> str:
    _ensure_imports(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


# ------------------------------------------------------------------------------------ mutations


def swap_activation(code: str, rng: random.Random) -> str | None:
    """One call of an elementwise activation becomes another activation."""
    tree, cls, _, _ = _parse(code)
    calls = [n for n in ast.walk(cls) if isinstance(n, ast.Call) and _name(n.func) in ACTIVATIONS and len(n.args) == 1]
    if not calls:
        return None
    call = rng.choice(calls)
    call.func = parse_source(rng.choice([a for a in ACTIVATIONS if a != _name(call.func)]), mode="eval").body
    call.keywords = []
    return _finish(tree)


def change_size(code: str, rng: random.Random) -> str | None:
    """An integer default of __init__ (beyond d_model and n_heads) is halved, doubled or moved by one."""
    tree, _, init, _ = _parse(code)
    args = init.args.args
    defaults = init.args.defaults
    offset = len(args) - len(defaults)
    sizes = [(i, d) for i, d in enumerate(defaults) if offset + i >= 3 and isinstance(d, ast.Constant)
             and type(d.value) is int and d.value >= 1]
    if not sizes:
        return None
    i, node = rng.choice(sizes)
    options = sorted({max(1, node.value // 2), node.value * 2, node.value + 1, max(1, node.value - 1)} - {node.value})
    defaults[i] = ast.Constant(rng.choice(options))
    return _finish(tree)


def scale_constant(code: str, rng: random.Random) -> str | None:
    """A float literal in forward (an epsilon, an offset, a scale) is halved or doubled."""
    tree, _, _, forward = _parse(code)
    floats = [n for n in ast.walk(forward) if isinstance(n, ast.Constant) and type(n.value) is float and n.value != 0.0]
    if not floats:
        return None
    node = rng.choice(floats)
    node.value = node.value * rng.choice((0.5, 2.0))
    return _finish(tree)


def add_output_gate(code: str, rng: random.Random) -> str | None:
    """output * sigmoid(Linear(x)), the Linear created in __init__."""
    tree, cls, init, forward = _parse(code)
    attr, d, x = _fresh(cls, "classic_gate"), init.args.args[1].arg, forward.args.args[1].arg
    _add_module(init, attr, f"nn.Linear({d}, {d})")
    gate = parse_source(f"torch.sigmoid(self.{attr}({x}))", mode="eval").body
    _wrap_returns(forward, lambda v: ast.BinOp(v, ast.Mult(), gate))
    return _finish(tree)


def add_output_norm(code: str, rng: random.Random) -> str | None:
    """LayerNorm over the output's channels."""
    tree, cls, init, forward = _parse(code)
    attr, d = _fresh(cls, "classic_norm"), init.args.args[1].arg
    _add_module(init, attr, f"nn.LayerNorm({d})")
    _wrap_returns(forward, lambda v: ast.Call(parse_source(f"self.{attr}", mode="eval").body, [v], []))
    return _finish(tree)


def add_skip(code: str, rng: random.Random) -> str | None:
    """output + s * x with a learned per-channel s, zero at the start (so the child starts as its parent)."""
    tree, cls, init, forward = _parse(code)
    attr, d, x = _fresh(cls, "classic_skip"), init.args.args[1].arg, forward.args.args[1].arg
    _add_module(init, attr, f"nn.Parameter(torch.zeros({d}))")
    skip = parse_source(f"self.{attr} * {x}", mode="eval").body
    _wrap_returns(forward, lambda v: ast.BinOp(v, ast.Add(), skip))
    return _finish(tree)


def drop_gate(code: str, rng: random.Random) -> str | None:
    """A product `a * gate(...)` (sigmoid or SiLU) in forward becomes `a`."""
    tree, _, _, forward = _parse(code)

    def is_gate(node) -> bool:
        return isinstance(node, ast.Call) and _name(node.func) in GATES

    products = [n for n in ast.walk(forward) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult)
                and (is_gate(n.left) or is_gate(n.right))]
    if not products:
        return None
    target = rng.choice(products)

    class Drop(ast.NodeTransformer):
        def visit_BinOp(self, node):
            self.generic_visit(node)
            if node is target:
                return node.left if is_gate(node.right) else node.right
            return node

    Drop().visit(forward)
    return _finish(tree)


MUTATIONS: dict[str, Callable[[str, random.Random], str | None]] = {
    f.__name__: f for f in (swap_activation, change_size, scale_constant, add_output_gate, add_output_norm,
                            add_skip, drop_gate)
}


def mutate(code: str, rng: random.Random) -> tuple[str, str]:
    """(child source, the edit's name): an edit drawn uniformly among those that apply."""
    names = list(MUTATIONS)
    rng.shuffle(names)
    for name in names:
        child = MUTATIONS[name](code, rng)
        if child is not None and child != code:
            return child, name
    raise ClassicError("no classic edit applies to this genome")


# ------------------------------------------------------------------------------------ crossover


def _prefixed(code: str, prefix: str) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(imports, other top-level statements) of a genome with its top-level names prefixed."""
    tree = parse_source(code)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    class Rename(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id in names:
                node.id = prefix + node.id
            return node

        def visit_ClassDef(self, node):
            if node.name in names:
                node.name = prefix + node.name
            return self.generic_visit(node)

        def visit_FunctionDef(self, node):
            if node.name in names and node in tree.body:
                node.name = prefix + node.name
            return self.generic_visit(node)

    Rename().visit(tree)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    body = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str))]
    return imports, body


def crossover(a: str, b: str, rng: random.Random) -> str:
    """Both parents' Mixers in one module, their outputs mixed by a learned gate (0.5 at the start)."""
    _parse(a), _parse(b)
    imports, body = [], []
    for code, prefix in ((a, "A_"), (b, "B_")):
        imp, rest = _prefixed(code, prefix)
        imports += imp
        body += rest
    seen, unique = set(), []
    for node in sorted(imports, key=lambda n: not (isinstance(n, ast.ImportFrom) and n.module == "__future__")):
        text = ast.unparse(node)
        if text not in seen:
            seen.add(text)
            unique.append(node)
    blend = parse_source('''
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.a = A_Mixer(d_model, n_heads)
        self.b = B_Mixer(d_model, n_heads)
        self.mix = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        g = torch.sigmoid(self.mix)
        return g * self.a(x) + (1 - g) * self.b(x)
''').body
    doc = ast.Expr(ast.Constant("Crossover: the Mixers of two parents (A_, B_), their outputs mixed by a learned gate."))
    tree = ast.Module([doc, *unique, *body, *blend], [])
    return _finish(tree)
