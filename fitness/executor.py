"""Run many evaluations in parallel and hand back each result as soon as it is ready.

`LocalExecutor` keeps `workers` evaluations in flight. Each runs in its own sandboxed
subprocess (that process is the isolation and the parallelism); a thread per slot only
drives it, so no Python state is shared with genomes. On CUDA each slot is pinned to a
GPU (round-robin via CUDA_VISIBLE_DEVICES). `RayExecutor` (fitness.executor_ray) runs the
same sandboxed evaluation as Ray tasks behind the same interface; `make_executor(settings)`
picks one by `settings.executor`.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Iterable, Iterator, Protocol

from evo.genome import Evaluation
from fitness.device import device_slots, resolve_device
from fitness.evaluate import evaluate
from fitness.settings import FitnessSettings


@dataclasses.dataclass(frozen=True)
class EvalJob:
    """One evaluation to run: a genome's code at a stage (1 or 2) with one training seed."""

    genome_id: str
    code: str
    stage: int
    seed: int


class LocalExecutor:
    """Evaluate jobs in up to `settings.workers` sandboxed subprocesses at once."""

    def __init__(self, settings: FitnessSettings):
        self.settings = settings
        self.device = resolve_device(settings.device)
        self._slots: queue.Queue[dict[str, str]] = queue.Queue()
        for env in device_slots(self.device, settings.workers):
            self._slots.put(env)
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="evoarch-eval")

    def _run_one(self, job: EvalJob) -> Evaluation:
        env = self._slots.get()
        try:
            return evaluate(job.genome_id, job.code, job.stage, None, job.seed, self.settings,
                            device=self.device, env=env, cancel=self._cancel)
        finally:
            self._slots.put(env)

    def run(self, jobs: Iterable[EvalJob]) -> Iterator[Evaluation]:
        """Yield one Evaluation per job, in completion order. Closing the iterator early
        cancels queued jobs and kills the running ones."""
        futures: set[Future] = {self._pool.submit(self._run_one, job) for job in jobs}
        try:
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            if futures:
                for fut in futures:
                    fut.cancel()
                self._cancel.set()
                wait(futures)
                self._cancel.clear()

    def close(self) -> None:
        """Kill evaluations in flight and stop the threads."""
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Executor(Protocol):
    """What the engine needs of an executor: stream results, close (also as a context manager)."""

    def run(self, jobs: Iterable[EvalJob]) -> Iterator[Evaluation]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc) -> None: ...


def make_executor(settings: FitnessSettings) -> Executor:
    """The executor `settings.executor` names: "local" (LocalExecutor) or "ray" (RayExecutor,
    which needs the `ray` extra and starts or joins a Ray cluster here)."""
    if settings.executor == "ray":
        from fitness.executor_ray import RayExecutor

        return RayExecutor(settings)
    return LocalExecutor(settings)
