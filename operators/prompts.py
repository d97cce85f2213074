"""Chat prompts for the LLM researcher: mutate, crossover, repair.

Kept short: a 0.5B-1.5B model on CPU pays for every prompt token. Layout puts what a
whole generation shares (system text, archive examples) first, so vLLM's prefix cache can
reuse it, and what differs per child (parent, directive) last. Every reply is asked to be
one `MOTIVATION:` line and one ```python block holding the whole module.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

SYSTEM = """You are an ML researcher editing a PyTorch sequence-mixing layer.
The module must define:
class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int): ...
    def forward(self, x: Tensor) -> Tensor: ...
x is (batch, seq, d_model); the output has the same shape. It must be causal: output at
position t may only use inputs at positions <= t. Create every parameter or layer in
__init__, never in forward. Allowed imports: torch, torch.nn, torch.nn.functional, math,
typing, functools, einops. Nothing else.
Reply with exactly:
MOTIVATION: <one line>
```python
<the whole module>
```"""

FORMAT_REMINDER = "Reply with the MOTIVATION line and one ```python block with the whole module."


@dataclasses.dataclass(frozen=True)
class Example:
    """A genome as shown in a prompt: its code, its score (None = not scored) and a short note."""

    code: str
    score: float | None = None
    note: str = ""


def _score(s: float | None) -> str:
    return "not scored" if s is None else f"score {s:.4f}"


def _block(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def _examples(examples: Sequence[Example]) -> str:
    if not examples:
        return ""
    parts = ["Strong mixers from the archive, for reference:"]
    for e in examples:
        parts.append(f"# {_score(e.score)}" + (f" - {e.note}" if e.note else ""))
        parts.append(_block(e.code))
    return "\n".join(parts) + "\n\n"


def _avoid(avoid: Sequence[Example]) -> str:
    if not avoid:
        return ""
    lines = ["These existing mixers are too close to what you may write; move away from them:"]
    for e in avoid:
        lines.append(f"- {e.note}" if e.note else _block(e.code))
    return "\n".join(lines) + "\n\n"


def _notes(notes: str) -> str:
    return f"Notes from earlier experiments: {notes.strip()}\n\n" if notes.strip() else ""


def messages(user: str) -> list[dict[str, str]]:
    """System + user chat messages."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def mutation(parent: Example, directive: str, examples: Sequence[Example] = (),
             avoid: Sequence[Example] = (), notes: str = "") -> list[dict[str, str]]:
    """Apply ONE concrete directive to the parent."""
    user = (
        _examples(examples) + _notes(notes)
        + f"Parent mixer ({_score(parent.score)}, higher is better):\n{_block(parent.code)}\n\n"
        + _avoid(avoid)
        + f"Change to make: {directive}\n"
        + "Change only what this requires; keep the class name, signatures and shapes.\n"
        + FORMAT_REMINDER
    )
    return messages(user)


def crossover(a: Example, b: Example, examples: Sequence[Example] = (),
              avoid: Sequence[Example] = (), notes: str = "") -> list[dict[str, str]]:
    """Combine one specific idea of parent B into parent A."""
    user = (
        _examples(examples) + _notes(notes)
        + f"Mixer A ({_score(a.score)}):\n{_block(a.code)}\n\n"
        + f"Mixer B ({_score(b.score)}):\n{_block(b.code)}\n\n"
        + _avoid(avoid)
        + "Take ONE specific idea from B that A lacks (e.g. its feature map, gate, decay, "
        + "normalisation or convolution) and add it to A. Start from A's code.\n"
        + FORMAT_REMINDER
    )
    return messages(user)


def repair(code: str, error: str, max_error_chars: int = 1500) -> list[dict[str, str]]:
    """Fix a module that failed with `error` (a traceback or check message, tail kept)."""
    err = error.strip()
    if len(err) > max_error_chars:
        err = "..." + err[-max_error_chars:]
    user = (
        f"This mixer fails:\n{_block(code)}\n\nError:\n```\n{err}\n```\n\n"
        + "Fix the error with the smallest change; keep the idea of the module.\n"
        + FORMAT_REMINDER
    )
    return messages(user)
