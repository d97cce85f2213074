"""The analyst: what the children measured so far say about the directives that made them.

ASI-Arch's analyst reads each result and writes notes that later prompts read. Here the notes are
computed, not generated: asking a 0.5B-1.5B model on CPU to summarise a table of numbers is
slower, and less faithful, than counting them, and what the analysis feeds is that same model's
prompt, which pays for every token. So `analyse(step, outcomes, before)` is a pure function: it
tallies one step's children (`Outcome`s) per directive (LLM children), per operator and per edit
format (children made, children that scored, mean stage-1 score change against the first parent,
the best and the worst child with its motivation, failure reasons by count), adds the step's tally
to the one before it, and writes a short `gist` of the cumulative tally, a few lines: which
directives raised the score, which lowered it, which rarely scored and why most often. The same
outcomes always give the same analysis, so a replayed run feeds its prompts the same notes.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

TABLES = ("directive", "operator", "edit_format")  # what children are grouped by (directive: LLM children only)
LABEL_CHARS = 100  # a directive as the gist names it
REASON_CHARS = 70  # a failure reason as the gist names it
MOTIVATION_CHARS = 100  # a best or worst child's motivation as stored


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One child of a step as the analyst sees it: what was asked (operator, directive, edit format:
    "full" | "diff" for LLM children, "classic"), the parents' stage-1 mean scores (None: not
    scored), the child's stage-1 mean score, or why it has none (`failure`), its motivation and
    whether it is the LLM's repair of the child first made."""

    operator: str
    directive: str
    edit_format: str = "full"
    parent_scores: tuple[float | None, ...] = ()
    score: float | None = None
    failure: str = ""
    motivation: str = ""
    genome_id: str = ""  # "" when the reply did not parse
    repaired: bool = False

    @property
    def delta(self) -> float | None:
        """The child's score minus its first parent's, when both scored."""
        if self.score is None or not self.parent_scores or self.parent_scores[0] is None:
            return None
        return self.score - self.parent_scores[0]


@dataclasses.dataclass(frozen=True)
class Pick:
    """A child singled out (best or worst score change), with its motivation, truncated."""

    genome_id: str
    step: int
    delta: float
    motivation: str


@dataclasses.dataclass(frozen=True)
class Group:
    """The tally of one directive, operator or edit format (or of all children)."""

    children: int = 0
    passed: int = 0  # children that scored at stage 1
    repaired: int = 0  # of those, children that scored after a repair
    delta_sum: float = 0.0  # sum of score changes against the first parent, over `delta_n` children
    delta_n: int = 0
    best: Pick | None = None
    worst: Pick | None = None
    failures: dict[str, int] = dataclasses.field(default_factory=dict)  # shortened reason -> children

    @property
    def pass_rate(self) -> float:
        """Children that scored / children made."""
        return self.passed / self.children if self.children else 0.0

    @property
    def mean_delta(self) -> float | None:
        """Mean score change against the first parent (None: no child with both scores)."""
        return self.delta_sum / self.delta_n if self.delta_n else None

    @property
    def top_failure(self) -> tuple[str, int] | None:
        """The most frequent failure reason and its count (ties: the reason first in sort order)."""
        return min(self.failures.items(), key=lambda kv: (-kv[1], kv[0])) if self.failures else None

    def merge(self, other: Group) -> Group:
        """This tally followed by `other` (on equal changes the earlier best or worst child stays)."""
        failures = dict(self.failures)
        for reason, n in other.failures.items():
            failures[reason] = failures.get(reason, 0) + n
        return Group(self.children + other.children, self.passed + other.passed, self.repaired + other.repaired,
                     self.delta_sum + other.delta_sum, self.delta_n + other.delta_n, _keep(self.best, other.best, 1),
                     _keep(self.worst, other.worst, -1), dict(sorted(failures.items())))

    @staticmethod
    def of(step: int, outcome: Outcome) -> Group:
        """The tally of one child."""
        if outcome.score is None:
            return Group(1, failures={reason_kind(outcome.failure): 1})
        delta = outcome.delta
        if delta is None:
            return Group(1, 1, int(outcome.repaired))
        pick = Pick(outcome.genome_id, step, delta, shorten(outcome.motivation, MOTIVATION_CHARS))
        return Group(1, 1, int(outcome.repaired), delta, 1, pick, pick)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Group:
        picks = {k: None if d[k] is None else Pick(**d[k]) for k in ("best", "worst")}
        return Group(**{**d, **picks})


Tally = dict[str, dict[str, Group]]  # "all" -> {"": every child}; each of TABLES -> key -> Group


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The analysis after `step`: the step's own tally, the cumulative one over steps
    `first_step`..`step`, and the gist of the cumulative one (the notes later prompts read)."""

    step: int
    first_step: int
    this: Tally
    total: Tally
    gist: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (floats round-trip exactly, so a stored analysis continues the tally unchanged)."""
        return {"step": self.step, "first_step": self.first_step, "gist": self.gist,
                "this": _tally_dict(self.this), "total": _tally_dict(self.total)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Analysis:
        """The inverse of `as_dict`."""
        return Analysis(d["step"], d["first_step"], _tally_from(d["this"]), _tally_from(d["total"]), d["gist"])


def analyse(step: int, outcomes: Sequence[Outcome], before: Analysis | None = None) -> Analysis:
    """The analysis of step `step`'s children, cumulative with `before` (the analysis of an earlier step)."""
    this = tally(step, outcomes)
    total = merge(before.total, this) if before is not None else this
    first = before.first_step if before is not None else step
    return Analysis(step, first, this, total, gist(total, first, step))


def tally(step: int, outcomes: Sequence[Outcome]) -> Tally:
    """One step's children grouped: all of them, by directive (LLM children), by operator, by edit format."""
    out: Tally = {"all": {}, **{t: {} for t in TABLES}}
    for o in outcomes:
        one = Group.of(step, o)
        keys = {"all": "", "directive": o.directive if o.operator.startswith("llm_") else None,
                "operator": o.operator, "edit_format": o.edit_format}
        for table, key in keys.items():
            if key is not None:
                out[table][key] = out[table].get(key, Group()).merge(one)
    return _sorted(out)


def merge(a: Tally, b: Tally) -> Tally:
    """Tally `a` followed by tally `b`."""
    out = {table: dict(groups) for table, groups in a.items()}
    for table, groups in b.items():
        for key, g in groups.items():
            out.setdefault(table, {})[key] = out.get(table, {}).get(key, Group()).merge(g)
    return _sorted(out)


def gist(total: Tally, first: int, last: int) -> str:
    """A few lines on the cumulative tally, for the LLM: the most common failure, the (at most two)
    directives that raised the score most on average, the one that lowered it most, (at most two)
    others that scored in fewer than half of their children with their most frequent failure, and
    the motivation of the best child. Empty before any child."""
    everything = total["all"].get("")
    if everything is None or not everything.children:
        return ""
    span = f"step {first}" if first == last else f"steps {first}-{last}"
    lines = [f"In {span}: {everything.children} children, {everything.passed} scored."]
    common = everything.top_failure
    if common is not None and common[1] > 1:
        lines[0] += f" Most common failure: {common[0]} ({common[1]}x)."
    rows = [(label(d), g) for d, g in total["directive"].items()]
    measured = [(name, g) for name, g in rows if g.mean_delta is not None]
    up = sorted(((n, g) for n, g in measured if g.mean_delta > 0), key=lambda r: (-r[1].mean_delta, r[0]))[:2]
    down = sorted(((n, g) for n, g in measured if g.mean_delta < 0), key=lambda r: (r[1].mean_delta, r[0]))[:1]
    named = {n for n, _ in up + down}
    rare = sorted(((n, g) for n, g in rows if n not in named and g.children >= 2 and g.pass_rate < 0.5),
                  key=lambda r: (r[1].passed - r[1].children, r[0]))[:2]
    if up:
        lines.append("Raised the score: " + "; ".join(f"{n} ({g.mean_delta:+.4f}, {g.passed}/{g.children} scored)"
                                                      for n, g in up) + ".")
    if down:
        lines.append("Lowered the score: " + "; ".join(f"{n} ({g.mean_delta:+.4f})" for n, g in down) + ".")
    if rare:
        lines.append("Rarely scored, avoid: " + "; ".join(
            f"{n} ({g.passed}/{g.children} scored" + (f", failed with: {g.top_failure[0]})" if g.failures else ")")
            for n, g in rare) + ".")
    best = everything.best
    if best is not None and best.delta > 0 and best.motivation:
        lines.append(f"Best change so far ({best.delta:+.4f}): {best.motivation}")
    return "\n".join(lines)


def label(directive: str) -> str:
    """A directive as the gist names it: up to its first clause break outside brackets (': ', ', ',
    '; '), at most LABEL_CHARS."""
    depth = 0
    for i, ch in enumerate(directive):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and ch in ":,;" and directive[i + 1:i + 2] == " ":
            directive = directive[:i]
            break
    return shorten(directive.rstrip(". "), LABEL_CHARS)


def reason_kind(failure: str) -> str:
    """A failure reason shortened so that alike failures count together: the first line without its
    status prefix, the failing genome line, trailing advice or long bracketed asides, with numbers
    and genome ids masked."""
    text = (failure.strip().splitlines() or ["no score"])[0]
    text = re.sub(r"^(?:(?:ok|rejected|failed|timeout|killed|error): )+", "", text)
    text = re.split(r" \(genome line|; ", text)[0]
    text = re.sub(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", "<id>", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e-?\d+)?\b", "N", text)
    text = re.sub(r" \([^()]{12,}\)", "", text)  # long asides: what is allowed, measured values
    return shorten(text, REASON_CHARS) or "no score"


def shorten(text: str, limit: int) -> str:
    """One line of at most `limit` characters, cut at a word boundary with '...'."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 3].rsplit(" ", 1)[0] if " " in text[:limit - 3] else text[:limit - 3]
    return cut.rstrip(" ,;:") + "..."


def _keep(old: Pick | None, new: Pick | None, sign: int) -> Pick | None:
    """The earlier pick, unless the later one's change is further in the direction `sign` (1: up)."""
    if old is None or (new is not None and sign * new.delta > sign * old.delta):
        return new
    return old


def _sorted(t: Tally) -> Tally:
    return {table: dict(sorted(groups.items())) for table, groups in t.items()}


def _tally_dict(t: Tally) -> dict[str, Any]:
    return {table: {key: g.as_dict() for key, g in groups.items()} for table, groups in t.items()}


def _tally_from(d: dict[str, Any]) -> Tally:
    return {table: {key: Group.from_dict(g) for key, g in groups.items()} for table, groups in d.items()}
