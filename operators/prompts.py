"""Chat prompts for the LLM researcher: mutate, crossover, repair.

Kept short: a 0.5B-1.5B model on CPU pays for every prompt token. Layout puts what a
whole generation shares (system text, archive examples) first, so vLLM's prefix cache can
reuse it, and what differs per child (parent, directive) last. A reply is asked to be one
`MOTIVATION:` line and either one ```python block holding the whole module, or (`edits=True`)
SEARCH/REPLACE blocks that edit the (first) parent (read by operators.edits); both system texts
start with the same contract. A repair prompt shows a minimal module that meets the contract,
the failing code, the whole error when it is short, and the line it points at, marked.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Sequence

from records.source import parse as parse_source

CONTRACT = """You are an ML researcher editing a PyTorch sequence-mixing layer.
The module must define:
class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int): ...
    def forward(self, x: Tensor) -> Tensor: ...
x is (batch, seq, d_model); the output has the same shape. It must be causal: output at
position t may only use inputs at positions <= t. Create every parameter or layer in
__init__, never in forward. Allowed imports: torch, torch.nn, torch.nn.functional, math,
typing, functools, einops. Nothing else.
"""

SYSTEM = CONTRACT + """Reply with exactly:
MOTIVATION: <one line>
```python
<the whole module>
```"""

DIFF_SYSTEM = CONTRACT + """Reply with a MOTIVATION line, then one or more edits of the code, each a block:
<<<<<<< SEARCH
<lines copied exactly from the code>
=======
<the lines that replace them>
>>>>>>> REPLACE
Each SEARCH must match one place only. Use one block per place you change. Example:
MOTIVATION: softplus feature map
<<<<<<< SEARCH
        q = F.elu(q) + 1
=======
        q = F.softplus(q)
>>>>>>> REPLACE"""

FORMAT_REMINDER = "Reply with the MOTIVATION line and one ```python block with the whole module."
DIFF_REMINDER = "Reply with the MOTIVATION line and SEARCH/REPLACE blocks that edit {what}."
REPAIR_DIFF_REMINDER = ("Reply with the MOTIVATION line and SEARCH/REPLACE blocks that fix the code above, "
                        "or with one ```python block holding the whole fixed module.")

# the smallest module that meets the contract: shown to the engineer with every repair
CONTRACT_EXAMPLE = """import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v(x)  # (batch, seq, d_model)
        n = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        y = v.cumsum(dim=1) / n[:, None]  # causal: the mean over positions <= t
        return self.out(y)  # a tensor shaped like x
"""

# line references in the errors of the policy and the sandbox (fitness.policy, fitness.genome_module)
_LINE_REF = re.compile(r'(?:File "<genome>", line|genome line|policy: line|policy: syntax error at line) (\d+)')


NOTE_CHARS = 200  # most characters of a genome's note (the LLM's motivation line) in a prompt


@dataclasses.dataclass(frozen=True)
class Example:
    """A genome as shown in a prompt: its code, its score (None = not scored) and a short note."""

    code: str
    score: float | None = None
    note: str = ""


def _note(note: str) -> str:
    """A note of at most NOTE_CHARS (a motivation is the LLM's own line, of any length)."""
    return note if len(note) <= NOTE_CHARS else note[:NOTE_CHARS - 3].rstrip() + "..."


def _score(s: float | None) -> str:
    return "not scored" if s is None else f"score {s:.4f}"


def _block(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def _examples(examples: Sequence[Example]) -> str:
    if not examples:
        return ""
    parts = ["Strong mixers from the archive, for reference:"]
    for e in examples:
        parts.append(f"# {_score(e.score)}" + (f" - {_note(e.note)}" if e.note else ""))
        parts.append(_block(e.code))
    return "\n".join(parts) + "\n\n"


def _avoid(avoid: Sequence[Example]) -> str:
    if not avoid:
        return ""
    lines = ["These existing mixers are too close to what you may write; move away from them:"]
    for e in avoid:
        lines.append(f"- {_note(e.note)}" if e.note else _block(e.code))
    return "\n".join(lines) + "\n\n"


def _notes(notes: str) -> str:
    return f"Notes from earlier experiments: {notes.strip()}\n\n" if notes.strip() else ""


def messages(user: str, system: str = SYSTEM) -> list[dict[str, str]]:
    """System + user chat messages."""
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def mutation(parent: Example, directive: str, examples: Sequence[Example] = (),
             avoid: Sequence[Example] = (), notes: str = "", edits: bool = False) -> list[dict[str, str]]:
    """Apply ONE concrete directive to the parent; `edits`: as SEARCH/REPLACE blocks instead of a whole module."""
    user = (
        _examples(examples) + _notes(notes)
        + f"Parent mixer ({_score(parent.score)}, higher is better):\n{_block(parent.code)}\n\n"
        + _avoid(avoid)
        + f"Change to make: {directive}\n"
        + "Change only what this requires; keep the class name, signatures and shapes.\n"
        + (DIFF_REMINDER.format(what="the parent") if edits else FORMAT_REMINDER)
    )
    return messages(user, DIFF_SYSTEM if edits else SYSTEM)


def crossover(a: Example, b: Example, examples: Sequence[Example] = (),
              avoid: Sequence[Example] = (), notes: str = "", edits: bool = False) -> list[dict[str, str]]:
    """Combine one specific idea of parent B into parent A; `edits`: as SEARCH/REPLACE blocks of A."""
    user = (
        _examples(examples) + _notes(notes)
        + f"Mixer A ({_score(a.score)}):\n{_block(a.code)}\n\n"
        + f"Mixer B ({_score(b.score)}):\n{_block(b.code)}\n\n"
        + _avoid(avoid)
        + "Take ONE specific idea from B that A lacks (e.g. its feature map, gate, decay, "
        + "normalisation or convolution) and add it to A. Start from A's code.\n"
        + (DIFF_REMINDER.format(what="A") if edits else FORMAT_REMINDER)
    )
    return messages(user, DIFF_SYSTEM if edits else SYSTEM)


def _forward(tree: ast.Module) -> ast.FunctionDef | None:
    """`Mixer.forward` in a parsed module, or None."""
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name == "Mixer":
            return next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "forward"), None)
    return None


def _returns(fn: ast.FunctionDef) -> list[ast.Return]:
    """The return statements of `fn` itself (not of functions or lambdas nested in it), in order."""
    found, todo = [], list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Return):
            found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda r: r.lineno)


def error_line(code: str, error: str) -> tuple[int, str] | None:
    """(line number in `code`, what to say there) the error points at, or None.

    The sandbox's `genome line N` and traceback `File "<genome>", line N` (the deepest), the policy's
    `line N`; for "forward must return ..." (no line given) the last return of `Mixer.forward`, or its
    last line when it has none (a reply cut off at its token limit, then trimmed to parse, ends that way).
    """
    lines = code.split("\n")
    refs = [int(n) for n in _LINE_REF.findall(error) if 1 <= int(n) <= len(lines)]
    if refs:
        return refs[-1], "the error points here"
    if "forward must return" not in error:
        return None
    try:
        fn = _forward(parse_source(code))
    except (SyntaxError, ValueError):
        return None
    if fn is None:
        return None
    returns = _returns(fn)
    if not returns:
        return fn.body[-1].end_lineno or fn.lineno, "forward ends here without a return statement: it returns None"
    return returns[-1].lineno, "forward returns this"


def _pointer(code: str, error: str) -> str:
    """The lines around the one the error points at, that one marked; '' when it points at none."""
    where = error_line(code, error)
    if where is None:
        return ""
    n, note = where
    lines = code.split("\n")
    shown = [f"{s}  # <-- {note}" if i == n else s for i, s in enumerate(lines[max(0, n - 3):n + 1], max(1, n - 2))]
    return f"At line {n}:\n```python\n" + "\n".join(shown) + "\n```\n"


def _clip(text: str, max_chars: int) -> str:
    """`text` whole when short enough, else its head and its tail (a check's message leads, a traceback ends)."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 4
    return text[:head] + "\n...\n" + text[-(max_chars - head):]


def repair(code: str, error: str, edits: bool = False, max_error_chars: int = 1500) -> list[dict[str, str]]:
    """Fix a module that failed with `error`: the error (whole when it fits `max_error_chars`, else its head and
    tail), the line it points at marked, and a minimal module that meets the contract (first: the same for every
    repair, so it is a shared prefix). `edits`: ask for SEARCH/REPLACE blocks against `code` or a whole module."""
    user = (
        f"A minimal mixer that meets the contract (causal, returns a tensor shaped like x):\n"
        f"{_block(CONTRACT_EXAMPLE)}\n\n"
        + ("This mixer, or your SEARCH/REPLACE edits of it, failed:\n" if edits else "This mixer fails:\n")
        + f"{_block(code)}\n\nError:\n```\n{_clip(error.strip(), max_error_chars)}\n```\n"
        + _pointer(code, error)
        + "\nFix the error with the smallest change; keep the idea of the module (the minimal mixer only shows "
          "the contract; a copy of it is rejected).\n"
        + (REPAIR_DIFF_REMINDER if edits else FORMAT_REMINDER)
    )
    return messages(user, DIFF_SYSTEM if edits else SYSTEM)
