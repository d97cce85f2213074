"""The search, top to bottom: ask the strategy -> breed -> promote -> tell the strategy -> analyse ->
checkpoint.

Step 0 trains the seed genomes and seeds the strategy. Every later step asks the strategy for
the parents of `search.children` children, breeds them (evo.breed: propose, screen, stage 1,
repair), promotes the best to stage 2 (evo.promote), tells the strategy the step's children,
stores the analyst's analysis of them (evo.analysis: the notes of later prompts) and
checkpoints the strategy's state with what the step spent (evo.budget), until a budget limit is
reached. In the steady-state mode the next step breeds while the last one trains (two steps in
flight): its parents are asked for before the last step is told, and steps are told in order, so
a seeded run does the same whatever the timing. The checkpoint of step s holds the strategy's
state after s and the asks of the step still in flight, so `resume` redoes exactly what the
interrupted run would have done.
"""
from __future__ import annotations

import logging
import random
import statistics
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from archive.normalise import code_hash
from archive.store import Archive
from evo import analysis
from evo.breed import Bred, Breeder
from evo.budget import Spent, exhausted, step_spent
from evo.config import Config, ConfigError
from evo.mainthread import MainThreadLLM
from evo.neighbours import Neighbours
from evo.promote import promote
from evo.score import selection_score, test_loss
from evo.screen import Child, Visible
from evo.seeds import load_seeds
from evo.strategies import Ask, Member, make_strategy
from evo.summary import seed_baseline
from fitness.executor import Executor
from operators.researcher import Scored
from operators.variation import Variation
from records import Genome, genome_id

log = logging.getLogger("evo")


class Engine:
    """One run's search over an archive, with the executor, operator and LLM it is given."""

    def __init__(self, config: Config, archive: Archive, executor: Executor, variation: Variation,
                 neighbours: Neighbours | None, llm: MainThreadLLM | None = None):
        self.config, self.archive, self.executor, self.neighbours, self.llm = config, archive, executor, neighbours, llm
        self.lag = 1 if config.search.mode == "steady_state" else 0
        self.breeder = Breeder(config, archive, executor, variation, neighbours, self.lag)
        self.strategy = make_strategy(config.search, config.novelty.weight)
        self.total, self.best, self.mark = Spent(), None, time.monotonic()

    def run(self) -> str:
        """Search until a budget limit is reached; returns which one."""
        budget, depth = self.config.search.budget, 1 + self.lag
        last = self.archive.last_checkpoint()
        pending = self.seed() if last is None else self.restore(last)
        step = max([self.archive.last_checkpoint()] + [s for s, _, _ in pending])
        pool = ThreadPoolExecutor(depth, thread_name_prefix="evoarch-breed")
        inflight = deque((*p, pool.submit(self.breeder.breed, *p)) for p in pending)
        try:
            while True:
                while len(inflight) < depth and exhausted(budget, self.total + Spent(steps=len(inflight)),
                                                          self.best) is None:
                    step += 1
                    asks, examples = self.ask(step)
                    inflight.append((step, asks, examples, pool.submit(self.breeder.breed, step, asks, examples)))
                if not inflight:
                    return exhausted(budget, self.total, self.best)
                s, asks, examples, work = inflight.popleft()
                if self.llm is not None:
                    self.llm.serve_until(work)
                bred = work.result()
                promote(s, bred.children, self.archive, self.executor, self.config.fitness, Visible(s, self.lag),
                        self.breeder.store)
                self.tell(s, bred.children)
                analysis.record(bred, self.archive, self.breeder.stage1_score)
                self.checkpoint(s, bred, [p[:3] for p in inflight])
        except BaseException:
            self.breeder.stop.set()  # results arriving from now on are not stored
            self.executor.close()  # ends the evaluations in flight
            raise
        finally:
            if self.llm is not None:
                self.llm.close()
            pool.shutdown(wait=True, cancel_futures=True)

    def seed(self) -> list:
        """Step 0: train the seed genomes, promote the best, seed the strategy."""
        children = []
        for slot, (name, code) in enumerate(load_seeds()):
            h = code_hash(code)
            genome = Genome(genome_id(h, (), "seed", 0, slot), code, h, operator="seed", motivation=name)
            self.archive.add_genome(genome, origin={"seed": name})
            children.append(Child(genome, evaluations=self.archive.evaluations(genome.id, stage=1)))
        baseline = self.config.fitness.stage1_seeds()[:self.config.fitness.racing.baseline_seeds]
        log.info("step 0: training %d seed genomes with %d training seeds each", len(children), len(baseline))
        self.breeder.evaluate(0, children, seeds=lambda c: baseline)
        promote(0, children, self.archive, self.executor, self.config.fitness, Visible(0, 0), self.breeder.store)
        self.archive.set_meta("seed_baseline", seed_baseline(self.archive))
        members = [self.member(c, 0) for c in children]
        if all(m.score is None for m in members):
            raise RuntimeError("no seed genome passed stage 1; see run.log and `evo top`")
        self.strategy.seed(members)
        self.best = max(m.score for m in members if m.score is not None)
        self.checkpoint(0, Bred(0, children, []), [])
        return []

    def ask(self, step: int) -> tuple[list[Ask], tuple[Scored, ...]]:
        """The parents of the step's children, and the population's best shown to the LLM as examples."""
        asks = self.strategy.ask(self.config.search.children, random.Random(f"{self.config.run.seed}:{step}:ask"))
        best = sorted((m for m in self.strategy.population() if m.score is not None), key=lambda m: -m.score)
        return asks, tuple(Scored(m.genome, m.score) for m in best[:self.config.llm.examples_k])

    def tell(self, step: int, children: list[Child]) -> None:
        """Tell the strategy the step's children (scored or not), in the order they were asked for."""
        members = [self.member(c, step) for c in children if c.genome is not None]
        self.strategy.tell(members, random.Random(f"{self.config.run.seed}:{step}:tell"))
        scores = [m.score for m in members if m.score is not None]
        self.best = max([self.best] + scores) if scores else self.best

    def member(self, child: Child, step: int) -> Member:
        """A child as strategies see it: its selection score (evo.score), the mean test loss (ties)
        and its objectives (novelty among earlier steps); no score after a failed run at either stage."""
        stage2 = [e.score if e.ok else None for e in self.archive.evaluations(child.genome.id, stage=2)]
        score = None if child.score is None else selection_score(
            [e.score for e in child.evaluations], stage2, self.archive.get_meta("seed_baseline") or {})
        if score is None:
            return Member(child.genome, None, {}, child.genome.island)
        first = child.evaluations[0]
        objectives = {"params": float(first.params or 0)}
        exponent = (first.metrics.get("complexity") or {}).get("scaling_exponent")
        if exponent is not None:
            objectives["complexity"] = float(exponent)
        if self.neighbours is not None:
            objectives["novelty"] = self.neighbours.novelty(child.genome, before=step)
        loss = statistics.fmean(test_loss(e.metrics) for e in child.evaluations)
        return Member(child.genome, score, objectives, child.genome.island, loss)

    def checkpoint(self, step: int, bred: Bred, pending: list) -> None:
        """Store the strategy's state after `step`, the asks in flight and what the step spent."""
        evaluations = [ev for g in self.archive.genomes(generation=step) for ev in self.archive.evaluations(g.id)]
        now = time.monotonic()
        spent = step_spent(bred.proposals, evaluations, now - self.mark, bred.llm_s)
        spent.steps = 1 if step else 0
        self.total, self.mark = self.total + spent, now
        members = self.strategy.members() + [m for _, asks, _ in pending for a in asks for m in a.parents]
        state = {"strategy": self.strategy.state(), "best": self.best, "spent": spent.as_dict(),
                 "total": self.total.as_dict(),
                 "members": {m.id: {"score": m.score, "objectives": m.objectives, "island": m.island, "loss": m.loss}
                             for m in members},
                 "pending": [{"step": s, "asks": [{"parents": [m.id for m in a.parents], "island": a.island}
                                                  for a in asks], "examples": [e.genome.id for e in examples]}
                             for s, asks, examples in pending]}
        self.archive.save_population(step, [m.id for m in self.strategy.population()], state)
        log.info("step %d checkpointed: %d members, best %.4f; spent %s", step, len(self.strategy.population()),
                 self.best, spent.as_dict())

    def restore(self, step: int) -> list:
        """The strategy's state at checkpoint `step`; returns the steps that were in flight."""
        state = self.archive.checkpoint_state(step)
        if "strategy" not in state:
            raise ConfigError(f"{self.archive.path}: checkpointed by an older evoarch engine; start a new run")
        members = {gid: Member(self.archive.genome(gid), d["score"], d["objectives"], d["island"], d.get("loss", 0.0))
                   for gid, d in state["members"].items()}
        self.strategy.restore(state["strategy"], members)
        self.total, self.best = Spent.from_dict(state["total"]), state["best"]
        log.info("resuming after the checkpoint of step %d", step)
        return [(p["step"], [Ask(tuple(members[i] for i in a["parents"]), a["island"]) for a in p["asks"]],
                 tuple(Scored(self.archive.genome(i), self.breeder.stage1_score(i)) for i in p["examples"]))
                for p in state["pending"]]
