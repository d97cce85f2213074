"""Evaluations shared by the runs of a bench: a genome evaluated with the same source, stage settings,
training seed, test data (secret) and fitness protocol is trained once for the whole bench.

A reused result is charged to the run that asked for it as if it had been evaluated there (it keeps
its `launch` record, so the run's evaluation budget counts it); `bench_reused` in its metrics names
the run that paid the wall time. The store is one SQLite file in the bench folder (WAL: runs in parallel processes share it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from fitness.executor import EvalJob, Executor
from fitness.protocol import FITNESS_PROTOCOL
from fitness.secret import fingerprint
from fitness.settings import FitnessSettings
from records import Evaluation

# settings that change where or how many evaluations run, never what one evaluation computes
_NOT_IN_KEY = {"workers", "executor", "ray_address", "gpus_per_eval", "promotion", "racing"}


def evaluation_key(job: EvalJob, fitness: FitnessSettings, secret: bytes) -> str:
    """What makes two evaluations the same: source bytes, stage, its settings, training seed, secret, protocol."""
    settings = fitness.model_dump(mode="json", exclude=_NOT_IN_KEY | {"stage1", "stage2"})
    settings["stage"] = fitness.stage(job.stage).model_dump(mode="json")
    parts = [FITNESS_PROTOCOL, fingerprint(secret), hashlib.sha256(job.code.encode()).hexdigest(), job.stage,
             job.seed, settings]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class SharedEvaluations:
    """The bench's store of evaluation results, by `evaluation_key`."""

    def __init__(self, path: Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, run TEXT NOT NULL, "
                         "evaluation TEXT NOT NULL)")
        self.hits = 0

    def get(self, key: str) -> tuple[str, dict] | None:
        with self._lock:
            row = self._db.execute("SELECT run, evaluation FROM results WHERE key = ?", (key,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def put(self, key: str, run: str, ev: Evaluation) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO results VALUES (?, ?, ?)",
                             (key, run, json.dumps(dataclasses.asdict(ev), default=float)))

    def wrap(self, executor: Executor, fitness: FitnessSettings, secret: bytes, run: str) -> SharingExecutor:
        """`executor` for run `run`, answering from this store where it can."""
        return SharingExecutor(executor, self, fitness, secret, run)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SharingExecutor:
    """An executor that looks each job up in the bench's store before running it, and stores what it ran."""

    def __init__(self, inner: Executor, store: SharedEvaluations, fitness: FitnessSettings, secret: bytes, run: str):
        self.inner, self.store, self.fitness, self.secret, self.run_name = inner, store, fitness, secret, run

    def run(self, jobs: Iterable[EvalJob]) -> Iterator[Evaluation]:
        """Stored results first (under this job's genome id), then the rest as the inner executor yields them."""
        todo, keys = [], {}
        for job in jobs:
            key = evaluation_key(job, self.fitness, self.secret)
            found = self.store.get(key)
            if found is None:
                todo.append(job)
                keys[(job.genome_id, job.stage, job.seed)] = key
                continue
            run, stored = found
            mine = run == self.run_name  # stored by this run before an interruption
            self.store.hits += not mine
            yield Evaluation(**{**stored, "genome_id": job.genome_id,
                                "metrics": {**stored["metrics"], **({} if mine else {"bench_reused": run})}})
        for ev in self.inner.run(todo):
            key = keys.get((ev.genome_id, ev.stage, ev.seed))
            if key is not None and ev.status in ("ok", "rejected", "failed"):  # not the ones cut short by a stop
                self.store.put(key, self.run_name, ev)
            yield ev

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
