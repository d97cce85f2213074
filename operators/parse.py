"""Tolerant extraction of a mixer module from an LLM reply.

Tries, in order: each ```python block, each plain ``` block (also an unclosed last one),
then the reply itself with leading prose stripped. The first candidate that parses with
`ast.parse` and defines `class Mixer` wins; a module whose one mixer-shaped class has another name
(models often call it `NormalizedMixer` or the like) gets it renamed to `Mixer`; missing standard
imports (torch, nn, F, math) are added. Also reads the one-line `MOTIVATION:`.
Only syntax and the presence of `Mixer` are checked here; fitness/ validates strictly.
"""
from __future__ import annotations

import ast
import re

from records.source import parse as parse_source

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_MOTIVATION = re.compile(r"^[\s>*_#-]*motivation\s*[:\-]\s*(.+)$", re.I | re.M)
_CODE_START = re.compile(r"^(import |from \S+ import |class |def |@|#)", re.M)


class ParseError(ValueError):
    """No Python module defining `class Mixer` could be extracted; the message says why."""


def motivation(text: str) -> str:
    """The one-line `MOTIVATION:` of a reply ('' when absent), markdown stripped."""
    m = _MOTIVATION.search(text)
    return m.group(1).strip().strip("*_`").strip() if m else ""


def _candidates(text: str) -> list[tuple[str, str]]:
    """(where, code) candidates in order of preference."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    out = [("```python block", b) for lang, b in blocks if lang in ("python", "py", "python3")]
    out += [(f"```{lang} block", b) for lang, b in blocks if lang not in ("python", "py", "python3")]
    m = _CODE_START.search(text)
    if m:  # bare code: drop prose before the first code-looking line, and any stray fences
        bare = "\n".join(ln for ln in text[m.start():].splitlines() if not ln.strip().startswith("```"))
        out.append(("bare text", bare))
    return out


def defines_mixer(tree: ast.Module) -> bool:
    """Whether a parsed module defines a top-level `class Mixer`."""
    return any(isinstance(n, ast.ClassDef) and n.name == "Mixer" for n in tree.body)


def _lone_mixer_class(tree: ast.Module) -> str | None:
    """The name of the module's one top-level class with a `forward` method (among several, the one
    whose `__init__` takes `d_model`); None when there is no such class or it is ambiguous."""
    def init_args(c: ast.ClassDef) -> list[str]:
        init = [f for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
        return [a.arg for a in init[0].args.args] if init else []

    shaped = [n for n in tree.body if isinstance(n, ast.ClassDef)
              and any(isinstance(f, ast.FunctionDef) and f.name == "forward" for f in n.body)]
    if len(shaped) > 1:
        shaped = [c for c in shaped if "d_model" in init_args(c)]
    return shaped[0].name if len(shaped) == 1 else None


def _renamed_to_mixer(code: str, tree: ast.Module) -> str | None:
    """`code` with its lone mixer-shaped class (and every use of its name) renamed to `Mixer`."""
    name = _lone_mixer_class(tree)
    if name is None or any(isinstance(n, ast.Name) and n.id == "Mixer" for n in ast.walk(tree)):
        return None
    renamed = re.sub(rf"\b{re.escape(name)}\b", "Mixer", code)
    try:
        return renamed if defines_mixer(parse_source(renamed)) else None
    except SyntaxError:
        return None


def _trim_trailing_prose(code: str) -> str | None:
    """Drop trailing lines until the code parses (models often add an explanation after)."""
    lines = code.rstrip().splitlines()
    while lines:
        try:
            parse_source("\n".join(lines))
            return "\n".join(lines)
        except SyntaxError:
            lines.pop()
    return None


# names a reply often uses without importing them, and the import that binds each
_STD_IMPORTS = {"torch": "import torch", "nn": "from torch import nn", "F": "import torch.nn.functional as F",
                "math": "import math"}


def add_missing_imports(code: str) -> str:
    """Prepend the standard import of torch / nn / F / math when the code uses one it never binds."""
    tree = parse_source(code)
    bound, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else used).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    missing = [imp for name, imp in _STD_IMPORTS.items() if name in used and name not in bound]
    return "\n".join(missing) + "\n" + code if missing else code


def extract_code(text: str) -> str:
    """The module source in `text` that defines `class Mixer`; raise ParseError saying why not.

    A candidate that defines `Mixer` wins over one whose lone mixer-shaped class is renamed."""
    if not text or not text.strip():
        raise ParseError("empty reply")
    reasons, parsed = [], []
    for where, code in _candidates(text):
        code = code.strip("\n")
        try:
            tree = parse_source(code)
        except SyntaxError as e:
            trimmed = _trim_trailing_prose(code) if where == "bare text" else None
            if trimmed is None:
                reasons.append(f"{where}: SyntaxError line {e.lineno}: {e.msg}")
                continue
            code, tree = trimmed, parse_source(trimmed)
        if defines_mixer(tree):
            return add_missing_imports(code.rstrip() + "\n")
        parsed.append((where, code, tree))
    for where, code, tree in parsed:
        renamed = _renamed_to_mixer(code, tree)
        if renamed is not None:
            return add_missing_imports(renamed.rstrip() + "\n")
        reasons.append(f"{where}: parses but defines no top-level `class Mixer`")
    if not reasons:
        raise ParseError("no code found in reply (no ``` block, no import/class line)")
    raise ParseError("; ".join(reasons))


def parse_reply(text: str) -> tuple[str, str]:
    """(code, motivation) of a reply; raises ParseError when no module parses."""
    return extract_code(text), motivation(text)
