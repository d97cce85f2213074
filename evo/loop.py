"""The search loop, top to bottom as in DESIGN.md.

seed generation -> for each generation: select parents (DEAP) -> the LLM proposes
children in one batched call -> screen (parse, exact duplicate, near duplicate) ->
evaluate stage 1 in the sandbox -> repair failures (bounded, batched) -> promote the
best to stage 2 -> select survivors -> checkpoint the population in SQLite.

Every state change goes to the archive as it happens; ids, random choices and LLM
answers (response cache) are deterministic, so `resume` redoes an interrupted
generation without duplicating or losing anything.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
from pathlib import Path

from tqdm import tqdm

from archive.embed import Embedder
from archive.normalise import NormaliseError, code_hash
from archive.novelty import NoveltyIndex
from archive.store import Archive
from evo.config import Config, ConfigError, dump_config, load_config
from records import Evaluation, Genome, genome_id
from evo.seeds import load_seeds
from evo.summary import ARCHIVE_FILE, rank_correlation, seed_baseline, yield_stats
from evo.toolbox import build_toolbox, make_individual
from fitness.executor import EvalJob, make_executor
from fitness.protocol import FITNESS_PROTOCOL
from fitness.secret import SECRET_FILE, load_or_create
from operators.backends import CachedBackend
from operators.researcher import Proposal, Researcher, Scored, Spec

log = logging.getLogger("evo")

CONFIG_FILE = "config.toml"
LOG_FILE = "run.log"
INDEX_FILE = "novelty.faiss"


def start_run(config: Config, name: str, overwrite: bool = False) -> Path:
    """Create runs/<name>/ with the resolved config, then search."""
    run_dir = Path(config.run.runs_dir) / name
    if run_dir.exists():
        if not overwrite:
            raise ConfigError(f"run directory {run_dir} exists: use `evo resume {run_dir}`, "
                              f"another --name, or --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(dump_config(config))
    Search(run_dir, config).run()
    return run_dir


def resume_run(run_dir: Path) -> Path:
    """Continue a run from its last checkpoint, with the config it was started with."""
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    Search(run_dir, load_config(run_dir / CONFIG_FILE)).run()
    return run_dir


@dataclasses.dataclass
class Child:
    """A proposal on its way through screening, evaluation and repair."""

    genome: Genome | None
    error: str = ""  # why it failed, sent back to the LLM for repair
    evaluation: Evaluation | None = None
    proposal: Proposal | None = None


class Search:
    """One run: owns the archive, the novelty index, the executor and the (lazy) LLM."""

    def __init__(self, run_dir: Path, config: Config):
        self.run_dir, self.config = run_dir, config
        _setup_logging(run_dir / LOG_FILE)
        self.archive = Archive(run_dir / ARCHIVE_FILE)
        protocol = self.archive.get_meta("fitness_protocol")
        if protocol is not None and protocol != FITNESS_PROTOCOL:
            raise ConfigError(f"{run_dir} was scored under fitness protocol {protocol}; this evoarch scores under "
                              f"protocol {FITNESS_PROTOCOL}, so its scores would not compare: start a new run")
        self.archive.set_meta("fitness_protocol", FITNESS_PROTOCOL)
        self.toolbox = build_toolbox(config.search)
        self.executor = make_executor(config.fitness, load_or_create(run_dir / SECRET_FILE))
        self.embedder = Embedder()
        self.index: NoveltyIndex | None = None
        self._researcher: Researcher | None = None

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> None:
        cfg = self.config
        self.archive.set_meta("config", dump_config(cfg))
        self.archive.set_meta("status", "running")
        last = self.archive.last_checkpoint()
        if last is None:
            population = self.seed_generation()
            last = 0
        else:
            log.info("resuming after checkpoint of generation %d", last)
            population = self.load_population(last)
        for generation in range(last + 1, cfg.search.generations + 1):
            population = self.generation(generation, population)
        self.archive.set_meta("status", "finished")
        self.log_summary()

    def seed_generation(self) -> list:
        seeds = []
        library = load_seeds()
        log.info("generation 0: evaluating %d seed genomes", len(library))
        for slot, (name, code) in enumerate(library):
            h = code_hash(code)
            genome = Genome(genome_id(h, (), "seed", 0, slot), code, h, operator="seed", motivation=name)
            self.archive.add_genome(genome, origin={"seed": name})
            seeds.append(Child(genome))
        self.evaluate_stage1(seeds, generation=0)
        self.promote(0, seeds)
        population = [c for c in seeds if _scored(c)]
        if not population:
            raise RuntimeError("no seed genome passed stage 1; see run.log and `evo top`")
        return self.checkpoint(0, [make_individual(c.genome, c.evaluation.score) for c in population])

    def generation(self, g: int, population: list) -> list:
        cfg = self.config.search
        rng = random.Random(f"{self.config.run.seed}:{g}")
        random.seed(f"{self.config.run.seed}:{g}:select")  # DEAP selection draws from `random`
        parents = self.toolbox.select(population, cfg.offspring)
        examples = tuple(Scored(p.genome, p.fitness.values[0]) for p in
                         sorted(population, key=lambda p: -p.fitness.values[0])[:self.config.llm.examples_k])
        specs = []
        for parent in parents:
            others = [p for p in population if p.genome.code_hash != parent.genome.code_hash]
            mates = (parent, rng.choice(others)) if others and rng.random() < cfg.crossover_prob else (parent,)
            specs.append(Spec(tuple(Scored(m.genome, m.fitness.values[0]) for m in mates), examples=examples))
        log.info("generation %d: the LLM proposes %d children in one batch", g, len(specs))
        proposals = _check_backend(self.researcher(rng).propose(specs))
        children = latest = self.screen(g, proposals, slot_base=0)
        for attempt in range(1, self.config.llm.repair_attempts + 2):
            self.evaluate_stage1(latest, g)
            broken = [c for c in latest if c.error and (c.genome is not None or _reply_text(c))]
            if not broken or attempt > self.config.llm.repair_attempts:
                break
            log.info("generation %d: repairing %d children (attempt %d)", g, len(broken), attempt)
            repaired = _check_backend(self.researcher(rng).repair([_repair_item(c) for c in broken]))
            latest = self.screen(g, repaired, slot_base=attempt * 1000)
            children = children + latest
        self.promote(g, children)
        offspring = [make_individual(c.genome, c.evaluation.score) for c in children if _scored(c)]
        known = {p.genome.code_hash for p in population}
        offspring = [o for o in offspring if o.genome.code_hash not in known]
        pool = population + offspring
        elite = self.elite(pool)
        survivors = elite + self.toolbox.select(pool, cfg.population - len(elite))
        return self.checkpoint(g, survivors)

    # ---- steps -------------------------------------------------------------------

    def screen(self, g: int, proposals: list[Proposal], slot_base: int) -> list[Child]:
        """Parsed code -> a stored genome; exact duplicates reuse results; near duplicates are rejected."""
        children = []
        for slot, proposal in enumerate(proposals, start=slot_base):
            if proposal.code is None:
                self.archive.log_event("parse_failed", proposal.error, operator=proposal.operator,
                                       parents=list(proposal.parents), generation=g, slot=slot)
                children.append(Child(None, proposal.error, proposal=proposal))
                continue
            try:
                h = code_hash(proposal.code)
            except NormaliseError as exc:
                self.archive.log_event("parse_failed", str(exc), generation=g, slot=slot)
                children.append(Child(None, str(exc), proposal=proposal))
                continue
            genome = Genome(genome_id(h, tuple(proposal.parents), proposal.operator, g, slot), proposal.code, h,
                            parents=tuple(proposal.parents), operator=proposal.operator, generation=g,
                            motivation=proposal.motivation)
            self.archive.add_genome(genome, origin=_origin(proposal))
            child = Child(genome, proposal=proposal)
            if self.archive.evaluations(genome.id, stage=1):  # screened before an interruption
                children.append(child)
                continue
            reused = self.archive.find_evaluated_by_hash(h, stage=1, protocol=FITNESS_PROTOCOL)
            if reused and reused[0].genome_id != genome.id:
                for ev in reused:
                    self.archive.add_evaluation(dataclasses.replace(
                        ev, genome_id=genome.id, metrics={**ev.metrics, "reused_from": ev.genome_id}))
                child.evaluation = self.archive.evaluations(genome.id, stage=1)[0]
                child.error = "" if child.evaluation.ok else child.evaluation.reason
            elif self.config.novelty.enabled:
                near = self.novelty_index().near_duplicate(self.embed(genome), self.config.novelty.threshold)
                if near is not None:
                    ev = Evaluation(genome.id, 1, 0, "rejected",
                                    reason=f"near-duplicate of {near[0]} (cosine {near[1]:.4f} >= "
                                           f"threshold {self.config.novelty.threshold}); make a different change")
                    self.archive.add_evaluation(ev)
                    child.evaluation, child.error = ev, ev.reason
            children.append(child)
        return children

    def evaluate_stage1(self, children: list[Child], generation: int) -> None:
        """Stage 1 for every screened child not evaluated yet (results stored as they arrive)."""
        stage = self.config.fitness.stage1
        todo = []
        for child in children:
            if child.genome is None or child.evaluation is not None:
                continue
            stored = self.archive.evaluations(child.genome.id, stage=1)
            if stored:
                self._settle(child, stored[0])
            else:
                todo.append(child)
        by_id = {c.genome.id: c for c in todo}
        jobs = [EvalJob(c.genome.id, c.genome.code, 1, stage.seeds[0]) for c in todo]
        for ev in tqdm(self.executor.run(jobs), total=len(jobs), desc=f"gen {generation} stage 1", unit="genome",
                       disable=not jobs):
            self.record_containment()
            self.store(ev)
            self._settle(by_id[ev.genome_id], ev)
            log.info("  %s %-14s %s %s", ev.genome_id, by_id[ev.genome_id].genome.operator, ev.status,
                     f"score={ev.score:.4f}" if ev.ok else ev.reason[:200])

    def _settle(self, child: Child, ev: Evaluation) -> None:
        child.evaluation = ev
        child.error = "" if ev.ok else f"{ev.status}: {ev.reason}"
        if ev.ok and self.config.novelty.enabled:
            vector = self.embed(child.genome)
            self.archive.add_embeddings([child.genome.id], vector[None, :])
            self.novelty_index().add([child.genome.id], vector[None, :])

    def promote(self, generation: int, children: list[Child]) -> None:
        """Stage 2 (bigger, longer, several seeds) for the genomes the promotion policy picks."""
        fit = self.config.fitness
        chosen = promoted(fit.promotion, generation, [c for c in children if _scored(c)], self.archive)
        for c in chosen:
            twin = stage1_twin(self.archive, c.evaluation)
            copied = [ev for ev in self.archive.evaluations(twin, stage=2) if ev.seed in fit.stage2.seeds] if twin else []
            for ev in copied:
                if not any(e.seed == ev.seed for e in self.archive.evaluations(c.genome.id, stage=2)):
                    self.archive.add_evaluation(dataclasses.replace(
                        ev, genome_id=c.genome.id, metrics={**ev.metrics, "reused_from": twin, "twin": True}))
            if copied:
                log.info("  %s stage 2: behavioural twin of %s (identical stage-1 training), its results reused",
                         c.genome.id, twin)
        jobs = [EvalJob(c.genome.id, c.genome.code, 2, seed) for c in chosen for seed in fit.stage2.seeds
                if not any(e.seed == seed for e in self.archive.evaluations(c.genome.id, stage=2))]
        for ev in tqdm(self.executor.run(jobs), total=len(jobs), desc=f"gen {generation} stage 2", unit="run",
                       disable=not jobs):
            self.store(ev)
            log.info("  %s stage 2 seed %d %s %s", ev.genome_id, ev.seed, ev.status,
                     f"score={ev.score:.4f}" if ev.ok else ev.reason[:200])
        if generation == 0:
            self.archive.set_meta("seed_baseline", seed_baseline(self.archive))
        self.archive.set_meta("rank_correlation", rank_correlation(self.archive))

    def record_containment(self) -> None:
        """Store the sandbox self-test's report once the executor has run it."""
        report = getattr(self.executor, "containment", None)
        if report is not None and self.archive.get_meta("containment") != report:
            self.archive.set_meta("containment", report)

    def store(self, ev: Evaluation) -> None:
        """Store an evaluation; once the seed baseline is known, with its score relative to it."""
        baseline = (self.archive.get_meta("seed_baseline") or {}).get(f"stage{ev.stage}")
        if ev.ok and baseline is not None:
            ev.metrics["vs_seed_baseline"] = ev.score - baseline
        self.archive.add_evaluation(ev)

    def elite(self, pool: list) -> list:
        hall = self.toolbox.hall_of_fame()
        hall.update(pool)
        return list(hall)

    def checkpoint(self, generation: int, population: list) -> list:
        ids = [ind.genome.id for ind in population]
        self.archive.save_population(generation, ids, state={"best": max(i.fitness.values[0] for i in population)})
        best = max(population, key=lambda i: i.fitness.values[0])
        log.info("generation %d checkpointed: %d genomes, best %s %.4f", generation, len(ids), best.genome.id,
                 best.fitness.values[0])
        return population

    def load_population(self, generation: int) -> list:
        population = []
        for gid in self.archive.population(generation):
            ev = self.archive.evaluations(gid, stage=1, status="ok")
            population.append(make_individual(self.archive.genome(gid), ev[0].score if ev else None))
        return population

    # ---- helpers -----------------------------------------------------------------

    def researcher(self, rng: random.Random) -> Researcher:
        """The LLM researcher; the model loads on the first cache miss, not before."""
        if self._researcher is None:
            backend = CachedBackend(LazyVLLM(self.config.llm), self.archive)
            self._researcher = Researcher(backend, self.config.llm, rng)
        self._researcher.rng = rng
        return self._researcher

    def embed(self, genome: Genome):
        stored = self.archive.embedding(genome.id)
        return stored if stored is not None else self.embedder.embed([genome.code])[0]

    def novelty_index(self) -> NoveltyIndex:
        if self.index is None:
            self.index = NoveltyIndex.open(self.archive, self.run_dir / INDEX_FILE, dim=self.embedder.dim,
                                           kind=self.config.novelty.index)
        return self.index

    def log_summary(self) -> None:
        stats = yield_stats(self.archive)
        log.info("LLM yield: %s", stats)
        if self.index is not None:
            self.index.save(self.run_dir / INDEX_FILE)


def promoted(rule, generation: int, scored: list[Child], archive: Archive) -> list[Child]:
    """The scored children of a generation that go on to stage 2, by the promotion policy."""
    ranked = sorted(scored, key=lambda c: -c.evaluation.score)
    if generation == 0 or rule.policy == "top_k":
        return ranked[:rule.top_k]
    if rule.policy == "quantile":
        every = sorted(ev.score for ev in archive.evaluations(stage=1, status="ok"))
        bar = every[min(len(every) - 1, int(rule.quantile * len(every)))]
    else:
        bar = (archive.get_meta("seed_baseline") or {}).get("stage1", float("-inf")) + rule.margin
    return [c for c in ranked if c.evaluation.score >= bar][:rule.top_k]


def stage1_twin(archive: Archive, ev: Evaluation) -> str | None:
    """An earlier genome whose stage-1 run was bit-identical to `ev` (same training seed and the same
    predictions, bit for bit, on the engine's secret test set: the same function trained the same
    way, e.g. an LLM rewrite that only renamed things) and that already has stage-2 results; None if
    there is none."""
    key = _fingerprint(ev)
    if key is None:
        return None
    for other in archive.evaluations(stage=1, status="ok"):
        if other.genome_id != ev.genome_id and _fingerprint(other) == key and archive.evaluations(other.genome_id, stage=2):
            return other.genome_id
    return None


def _fingerprint(ev: Evaluation) -> tuple | None:
    digest = (ev.metrics or {}).get("predictions_sha256")
    return None if ev.score is None or not digest else (ev.seed, digest)


class LazyVLLM:
    """The in-process vLLM backend, loaded on first use (a fully cached resume never loads it)."""

    def __init__(self, settings):
        from operators.model_store import spec

        self.settings, self._backend = settings, None
        self.model_id = f"{settings.model}@{spec(settings.model).sha256[:12]}"

    def generate(self, requests):
        if self._backend is None:
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the run log says what matters
            from operators.backends import VLLMBackend

            log.info("loading %s into vLLM", self.settings.model)
            self._backend = VLLMBackend.from_settings(self.settings)
        return self._backend.generate(requests)


def _origin(proposal: Proposal) -> dict:
    """How a child was made: the directive, and the LLM reply's accounting."""
    c = proposal.completion
    return {"directive": proposal.directive, "finish_reason": c.finish_reason if c else None,
            "completion_tokens": c.completion_tokens if c else 0, "cached": c.cached if c else False}


def _check_backend(proposals: list[Proposal]) -> list[Proposal]:
    """Stop the run (resumable) when the LLM backend failed every request of a batch."""
    failed = [p for p in proposals if p.completion is None or p.completion.finish_reason == "error"]
    if proposals and len(failed) == len(proposals):
        raise RuntimeError(f"the LLM backend failed all {len(proposals)} requests ({failed[0].error}); "
                           f"fix it, then `evo resume` the run")
    return proposals


def _reply_text(child: Child) -> str:
    completion = child.proposal.completion if child.proposal else None
    return completion.text if completion else ""


def _repair_item(child: Child) -> tuple[str, str, tuple[str, ...]]:
    """(code or raw reply, error, parent ids) for the engineer's repair prompt."""
    if child.genome is not None:
        return child.genome.code, child.error, (child.genome.id,)
    return _reply_text(child), child.error, tuple(child.proposal.parents)


def _scored(child: Child) -> bool:
    return child.genome is not None and child.evaluation is not None and child.evaluation.ok


def _setup_logging(path: Path) -> None:
    logger = logging.getLogger("evo")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
