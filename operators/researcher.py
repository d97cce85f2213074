"""The LLM researcher: turn one generation's variation specs into child modules.

`Researcher.propose(specs)` builds every prompt of the generation (mutation: one parent
+ one concrete directive; crossover: two parents) and sends them in ONE `generate` call,
so the backend batches them. `repair(items)` does the same for failed children. All
randomness (directive choice, sampling seeds) comes from the `random.Random` it is
given, so a seeded run with a response cache replays exactly.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from operators import prompts
from operators.backends import Backend, Completion, Request
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

    @property
    def ok(self) -> bool:
        return self.code is not None


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

    def build(self, spec: Spec, sample: int) -> tuple[Request, str]:
        """The request for one spec and the directive it carries ('crossover' for crossovers)."""
        s = self.settings
        examples = [e.example() for e in spec.examples[: s.examples_k]]
        avoid = [e.example() for e in spec.avoid[: s.avoid_k]]
        if len(spec.parents) == 1:
            directive = spec.directive or self.directive()
            msgs = prompts.mutation(spec.parents[0].example(), directive, examples, avoid, spec.notes)
        elif len(spec.parents) == 2:
            directive = "crossover: add one idea of B to A"
            msgs = prompts.crossover(spec.parents[0].example(), spec.parents[1].example(), examples, avoid,
                                     spec.notes)
        else:
            raise ValueError(f"a spec needs 1 or 2 parents, got {len(spec.parents)}")
        return self._request(msgs, sample), directive

    def propose(self, specs: Sequence[Spec]) -> list[Proposal]:
        """One proposal per spec, in order, from ONE batched generate call."""
        built = [self.build(spec, i) for i, spec in enumerate(specs)]
        completions = self.backend.generate([r for r, _ in built]) if built else []
        return [_proposal(c, r, d, spec.operator, tuple(p.genome.id for p in spec.parents))
                for spec, (r, d), c in zip(specs, built, completions)]

    def repair(self, items: Sequence[tuple[str, str, tuple[str, ...]]]) -> list[Proposal]:
        """Fix failed children: items are (code, error text, parent ids); one batched call."""
        reqs = [self._request(prompts.repair(code, error), i) for i, (code, error, _) in enumerate(items)]
        completions = self.backend.generate(reqs) if reqs else []
        return [_proposal(c, r, "repair", "llm_repair", tuple(parents))
                for (_, _, parents), r, c in zip(items, reqs, completions)]


def _proposal(c: Completion, r: Request, directive: str, operator: str, parents: tuple[str, ...]) -> Proposal:
    """Parse one completion into a Proposal; a failed or unparsable reply gives code=None and the reason."""
    if c.finish_reason in ("error", "deadline") and not c.text:
        return Proposal(None, "", operator, parents, directive, r, c, f"{c.finish_reason}: {c.error}")
    try:
        code, motivation = parse_reply(c.text)
    except ParseError as e:
        why = f"parse: {e}"
        if c.finish_reason in ("length", "deadline"):
            why += f" (reply cut off: {c.finish_reason})"
        return Proposal(None, "", operator, parents, directive, r, c, why)
    return Proposal(code, motivation, operator, parents, directive, r, c)
