"""The LLM researcher: turn one generation's variation specs into child modules.

`Researcher.propose(specs)` builds every prompt of the generation (mutation: one parent
+ one concrete directive; crossover: two parents) and sends them in ONE `generate` call,
so the backend batches them. Each child is asked either for the whole module ("full") or, with
probability `diff_share`, for SEARCH/REPLACE edits of its first parent ("diff", applied by
operators.edits; a diff reply that holds a whole module instead is taken as one). `repair(items)`
does the same for failed children; a diff child is repaired as edits of the code shown (its own,
or the parent's when its edits did not apply), and a repair reply may also be a whole module. All
randomness (edit format, directive choice, sampling seeds) comes from the `random.Random` it is
given, so a seeded run with a response cache replays exactly; with `diff_share` 0 the format is
not drawn, so such runs replay as before the format existed.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import NamedTuple

from operators import prompts
from operators.backends import Backend, Completion, Request
from operators.edits import EditError, apply_reply, has_edits
from operators.parse import ParseError, parse_reply
from operators.settings import FREE_FORM_DIRECTIVE, LLMSettings
from records import Genome


@dataclasses.dataclass(frozen=True)
class Scored:
    """A genome with its score (None when not scored yet), as the prompts show it."""

    genome: Genome
    score: float | None = None

    def example(self) -> prompts.Example:
        return prompts.Example(self.genome.code, self.score, self.genome.motivation)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One child to make: 1 parent -> mutation, 2 parents -> crossover.

    examples: top archive genomes shown for reference (the first `examples_k` are used).
    avoid: nearest neighbours the child should move away from (first `avoid_k`).
    notes: the analyst's notes. directive: force a directive (mutation only) instead of drawing one.
    """

    parents: tuple[Scored, ...]
    examples: tuple[Scored, ...] = ()
    avoid: tuple[Scored, ...] = ()
    notes: str = ""
    directive: str | None = None

    @property
    def operator(self) -> str:
        return "llm_mutate" if len(self.parents) == 1 else "llm_crossover"


@dataclasses.dataclass
class Proposal:
    """One proposed child. `code` is None when it could not be made (see `error`); `request` and
    `completion` are None for a classic (non-LLM) edit."""

    code: str | None
    motivation: str
    operator: str  # llm_mutate | llm_crossover | llm_repair | classic_<edit>
    parents: tuple[str, ...]
    directive: str
    request: Request | None
    completion: Completion | None
    error: str = ""
    edit_format: str = ""  # full | diff (what the LLM was asked for) | classic
    base: str = dataclasses.field(default="", repr=False)  # diff: the code the edits were made against

    @property
    def ok(self) -> bool:
        return self.code is not None


class RepairItem(NamedTuple):
    """A failed child for the engineer: the code to show (the child's; its raw reply when it did not parse; for
    a diff child whose edits did not apply, the code they were made against), the error, the parent ids of the
    repair, and whether the repair is asked as SEARCH/REPLACE edits of that code."""

    code: str
    error: str
    parents: tuple[str, ...]
    edits: bool = False


class Researcher:
    """Builds prompts, calls the backend once per batch, parses the replies."""

    def __init__(self, backend: Backend, settings: LLMSettings, rng: random.Random) -> None:
        self.backend, self.settings, self.rng = backend, settings, rng

    def _request(self, messages: list[dict[str, str]], sample: int) -> Request:
        s = self.settings
        return Request.chat(messages, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                            seed=self.rng.randrange(2**31), sample=sample)

    def directive(self) -> str:
        """A concrete directive from the list, or the free-form one with probability free_form_prob."""
        if self.rng.random() < self.settings.free_form_prob:
            return FREE_FORM_DIRECTIVE
        return self.rng.choice(self.settings.directives)

    def edit_format(self) -> str:
        """'diff' with probability diff_share, else 'full'; the rng is drawn only when 0 < diff_share < 1."""
        share = self.settings.diff_share
        return "diff" if share >= 1.0 or (share > 0.0 and self.rng.random() < share) else "full"

    def build(self, spec: Spec, sample: int) -> tuple[Request, str, str]:
        """The request for one spec, the directive it carries ('crossover: ...' for crossovers) and its edit
        format ('full' or 'diff')."""
        s = self.settings
        examples = [e.example() for e in spec.examples[: s.examples_k]]
        avoid = [e.example() for e in spec.avoid[: s.avoid_k]]
        if len(spec.parents) not in (1, 2):
            raise ValueError(f"a spec needs 1 or 2 parents, got {len(spec.parents)}")
        edits = self.edit_format() == "diff"
        if len(spec.parents) == 1:
            directive = spec.directive or self.directive()
            msgs = prompts.mutation(spec.parents[0].example(), directive, examples, avoid, spec.notes, edits=edits)
        else:
            directive = "crossover: add one idea of B to A"
            msgs = prompts.crossover(spec.parents[0].example(), spec.parents[1].example(), examples, avoid,
                                     spec.notes, edits=edits)
        return self._request(msgs, sample), directive, "diff" if edits else "full"

    def propose(self, specs: Sequence[Spec]) -> list[Proposal]:
        """One proposal per spec, in order, from ONE batched generate call."""
        built = [self.build(spec, i) for i, spec in enumerate(specs)]
        completions = self.backend.generate([r for r, _, _ in built]) if built else []
        return [_proposal(c, r, d, spec.operator, tuple(p.genome.id for p in spec.parents),
                          spec.parents[0].genome.code if f == "diff" else None)
                for spec, (r, d, f), c in zip(specs, built, completions)]

    def repair(self, items: Sequence[RepairItem | tuple]) -> list[Proposal]:
        """Fix failed children (RepairItems, or (code, error, parent ids) tuples); one batched call."""
        items = [RepairItem(*item) for item in items]
        reqs = [self._request(prompts.repair(it.code, it.error, edits=it.edits), i) for i, it in enumerate(items)]
        completions = self.backend.generate(reqs) if reqs else []
        return [_proposal(c, r, "repair", "llm_repair", tuple(it.parents), it.code if it.edits else None)
                for it, r, c in zip(items, reqs, completions)]


def _proposal(c: Completion, r: Request, directive: str, operator: str, parents: tuple[str, ...],
              base: str | None) -> Proposal:
    """Parse one completion into a Proposal: a whole module, or (`base` given: a diff child) SEARCH/REPLACE edits
    of `base` when the reply holds any. A failed, unparsable or inapplicable reply gives code=None and the reason."""
    fmt = {"edit_format": "full"} if base is None else {"edit_format": "diff", "base": base}
    if c.finish_reason in ("error", "deadline") and not c.text:
        return Proposal(None, "", operator, parents, directive, r, c, f"{c.finish_reason}: {c.error}", **fmt)
    cut_off = c.finish_reason in ("length", "deadline")
    try:
        if base is not None and has_edits(c.text):
            code, motivation = apply_reply(base, c.text, cut_off=cut_off)
        else:
            code, motivation = parse_reply(c.text)
    except EditError as e:
        why = f"edit: {e}"
    except ParseError as e:
        why = f"parse: {e}" if base is None else f"parse: no SEARCH/REPLACE block in the reply, and no whole module: {e}"
    else:
        return Proposal(code, motivation, operator, parents, directive, r, c, **fmt)
    if cut_off:
        why += f" (reply cut off: {c.finish_reason})"
    return Proposal(None, "", operator, parents, directive, r, c, why, **fmt)
