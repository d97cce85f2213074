"""SEARCH/REPLACE edits of a module: read them from an LLM reply, apply them tolerantly.

A reply holds one `MOTIVATION:` line and one or more blocks

    <<<<<<< SEARCH
    lines copied from the module
    =======
    the lines that replace them
    >>>>>>> REPLACE

with or without ``` fences around or inside them. A marker line may have more or fewer of its
characters (five at least, three with its word) and may lack its SEARCH / REPLACE word; a block
that the next SEARCH marker (or the end of a reply that was not cut off) follows needs no end marker.
Blocks apply in order, each to the result of the ones before, at the ONE place that matches: the
exact lines first, then the same lines shifted by one indentation or with other trailing whitespace
(the replacement is re-indented by the shift), then the window of as many lines most similar to
them (difflib ratio at least `NEAR_MISS`) when no other place is as similar and it names the same
variables, attributes and calls in the same order (it differs only in spacing, punctuation, numbers
or comments: a SEARCH naming `k` where the code has `q`, or one that skips a line of the code, is
no near miss of it). Lines whose indentation differs from the code's line by line (not by one
shift) are refused: they would move the replacement into or out of a block. An empty SEARCH is
refused (where an addition goes must be said by the lines around it). Anything that does not
apply raises EditError, whose message names the block and quotes the closest lines of the module,
so the repair round can fix it; so does a result that does not parse or defines no `class Mixer`.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence

from operators.parse import add_missing_imports, defines_mixer, motivation
from records.source import parse as parse_source

NEAR_MISS = 0.85  # least difflib ratio of a near-miss match
TIE = 0.01  # another place within this ratio of the best makes a near-miss ambiguous
QUOTE_LINES = 12  # most lines of the module quoted in an error

_START = re.compile(r"^\s*(?:<{5,}\s*(?:SEARCH)?|<{3,}\s*SEARCH)\s*:?\s*$", re.IGNORECASE)
_DIVIDER = re.compile(r"^\s*={5,}\s*$")
_END = re.compile(r"^\s*(?:>{5,}\s*(?:REPLACE)?|>{3,}\s*REPLACE)\s*:?\s*$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*```")
_NAME = re.compile(r"(?<!\w)[A-Za-z_]\w*")  # identifiers and keywords (not the e of 1e-6)


class EditError(ValueError):
    """The edits could not be read or applied; the message says which block and why."""


@dataclasses.dataclass(frozen=True)
class Edit:
    """One block: the lines to find and the lines that replace them (no blank lines at either end)."""

    search: str
    replace: str

    @property
    def first_line(self) -> str:
        """The first SEARCH line, stripped, as errors name the block."""
        return self.search.splitlines()[0].strip() if self.search else ""


def has_edits(text: str) -> bool:
    """Whether the reply holds a SEARCH marker line."""
    return any(_START.match(line) for line in text.splitlines())


def _trim(lines: list[str]) -> str:
    """The lines joined, without blank lines at either end."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(line.rstrip("\r") for line in lines)


def parse_edits(text: str, cut_off: bool = False) -> list[Edit]:
    """The blocks of a reply, in order. `cut_off`: the reply stopped at its token limit, so a last
    block without its end marker may be incomplete and is refused."""
    blocks: list[tuple[list[str], list[str]]] = []
    state = "out"
    for line in text.splitlines():
        if _START.match(line):
            if state == "search" and any(s.strip() for s in blocks[-1][0]):
                raise EditError(f"block {len(blocks)} (SEARCH starting `{_first(blocks[-1][0])}`) has no ======= "
                                "line between its SEARCH and REPLACE parts")
            if state != "search":  # a repeated SEARCH marker opens nothing new
                blocks.append(([], []))
            state = "search"
        elif state == "out" or _FENCE.match(line):
            continue
        elif _DIVIDER.match(line):
            if state == "replace":
                raise EditError(f"block {len(blocks)} has two ======= lines")
            state = "replace"
        elif _END.match(line):
            if state == "search":
                raise EditError(f"block {len(blocks)} (SEARCH starting `{_first(blocks[-1][0])}`) has no ======= "
                                "line between its SEARCH and REPLACE parts")
            state = "out"
        else:
            blocks[-1][0 if state == "search" else 1].append(line)
    if state == "search":
        raise EditError(f"block {len(blocks)} ends before its ======= line")
    if state == "replace" and cut_off:
        raise EditError(f"block {len(blocks)} has no >>>>>>> REPLACE line: the reply was cut off")
    if not blocks:
        raise EditError("no <<<<<<< SEARCH / ======= / >>>>>>> REPLACE block in the reply")
    edits = [Edit(_trim(s), _trim(r)) for s, r in blocks]
    for n, e in enumerate(edits, 1):
        if not e.search:
            raise EditError(f"block {n} has an empty SEARCH part; copy the lines to change (or the lines an "
                            "addition goes after) from the code")
    return edits


def _first(lines: Sequence[str]) -> str:
    return next((s.strip() for s in lines if s.strip()), "")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _reindent(lines: list[str], delta: int) -> list[str]:
    """Shift every non-blank line right by `delta` columns (left when negative, never past column 0)."""
    if delta >= 0:
        return [" " * delta + s if s.strip() else s for s in lines]
    return [s[min(-delta, _indent(s)):] if s.strip() else s for s in lines]


def _names(lines: Sequence[str]) -> list[str]:
    """The identifiers and keywords of `lines` in order, comments left out."""
    return [name for line in lines for name in _NAME.findall(line.split("#", 1)[0])]


def _shift(code: Sequence[str], search: Sequence[str], name: str, start: int) -> int:
    """The one indentation shift from the SEARCH lines to the code lines they match (those equal but for
    their indentation); EditError when it differs from line to line."""
    pairs = [(_indent(a) - _indent(b), a.strip()) for a, b in zip(code, search) if b.strip() and a.strip() == b.strip()]
    odd = next((line for d, line in pairs if d != pairs[0][0]), None)
    if odd is not None:
        raise EditError(f"{name} matches {_where([start], len(search))} only with other indentation line by line "
                        f"(`{odd}` is indented differently); copy the SEARCH lines with the code's indentation, so "
                        "that the REPLACE lines keep each line in its block")
    if pairs:
        return pairs[0][0]
    k = next((j for j, b in enumerate(search) if b.strip()), 0)
    return _indent(code[k]) - _indent(search[k])


def _ratio(a: Sequence[str], b: Sequence[str]) -> float:
    return difflib.SequenceMatcher(None, "\n".join(s.strip() for s in a), "\n".join(s.strip() for s in b)).ratio()


def _where(starts: Sequence[int], n: int) -> str:
    return ", ".join(f"lines {i + 1}-{i + n}" if n > 1 else f"line {i + 1}" for i in starts)


def _quote(lines: Sequence[str]) -> str:
    """The lines as they are (no fences: a repair prompt shows the error inside a fence), at most QUOTE_LINES."""
    return "\n".join(list(lines[:QUOTE_LINES]) + (["..."] if len(lines) > QUOTE_LINES else []))


def _locate(code: list[str], search: list[str], name: str) -> tuple[int, int]:
    """(first line index, indentation delta) of the one place of `code` that `search` matches."""
    n = len(search)
    windows = range(len(code) - n + 1)
    for same in (lambda a, b: a == b, lambda a, b: a.strip() == b.strip()):
        starts = [i for i in windows if all(same(a, b) for a, b in zip(code[i:i + n], search))]
        if len(starts) > 1:
            raise EditError(f"{name} matches {len(starts)} places ({_where(starts, n)}); add lines around it "
                            "so it matches one place only")
        if starts:
            return starts[0], _shift(code[starts[0]:starts[0] + n], search, name, starts[0])
    if not windows:
        raise EditError(f"{name} has {n} lines but the code has only {len(code)}")
    ratios = [_ratio(code[i:i + n], search) for i in windows]
    best = max(windows, key=lambda i: ratios[i])
    if ratios[best] < NEAR_MISS:
        raise EditError(f"{name} matches no lines of the code; the closest ({_where([best], n)}, "
                        f"{ratios[best]:.0%} similar) are:\n{_quote(code[best:best + n])}\n"
                        "(SEARCH lines must be copied exactly from the code)")
    rivals = [i for i in windows if abs(i - best) >= n and ratios[i] >= ratios[best] - TIE]
    if rivals:
        raise EditError(f"{name} matches no lines exactly and {_where(sorted([best] + rivals), n)} equally well "
                        f"({ratios[best]:.0%} similar); copy the SEARCH lines exactly from the code")
    if _names(code[best:best + n]) != _names(search):
        raise EditError(f"{name} matches no lines of the code; the closest ({_where([best], n)}, "
                        f"{ratios[best]:.0%} similar) name other variables or calls, or have lines more or less:\n"
                        f"{_quote(code[best:best + n])}\n(SEARCH lines must be copied exactly from the code)")
    return best, _shift(code[best:best + n], search, name, best)


def apply_edits(code: str, edits: Sequence[Edit]) -> str:
    """`code` with every edit applied in order; raises EditError when one does not apply, or when
    the result does not parse, defines no `class Mixer`, or equals `code`."""
    lines = code.rstrip("\n").split("\n")
    for n, e in enumerate(edits, 1):
        search = e.search.split("\n")
        i, delta = _locate(lines, search, f"block {n} (SEARCH starting `{e.first_line}`)")
        replace = _reindent(e.replace.split("\n"), delta) if e.replace else []
        lines = lines[:i] + replace + lines[i + len(search):]
    new = "\n".join(lines) + "\n"
    try:
        tree = parse_source(new)
    except SyntaxError as err:
        at = lines[err.lineno - 1].strip() if err.lineno and 0 < err.lineno <= len(lines) else ""
        raise EditError(f"after the edits the module does not parse ({err.msg})" + (f" at `{at}`" if at else "")
                        + "; check the indentation of the REPLACE lines") from None
    if not defines_mixer(tree):
        raise EditError("after the edits the module defines no top-level `class Mixer`")
    if new == code.rstrip("\n") + "\n":
        raise EditError("the edits change nothing")
    return add_missing_imports(new)


def apply_reply(code: str, text: str, cut_off: bool = False) -> tuple[str, str]:
    """(edited code, motivation) from a reply of SEARCH/REPLACE blocks against `code`."""
    return apply_edits(code, parse_edits(text, cut_off)), motivation(text)
