"""Run many evaluations in parallel and hand back each result as soon as it is ready.

`LocalExecutor` keeps `workers` evaluations in flight. Each runs in its own sandboxed
subprocess (that process is the isolation and the parallelism); a thread per slot only
drives it, so no Python state is shared with genomes. Each slot owns a fork server
(fitness.forkserver, started on first use, restarted if it dies) that forks the fresh
process of every evaluation, so torch is imported once per slot rather than once per
genome; `sandbox.fork_server = false` spawns a new interpreter each time instead. On
CUDA each slot is pinned to a GPU (round-robin via CUDA_VISIBLE_DEVICES). `RayExecutor`
(fitness.executor_ray) runs the same sandboxed evaluation as Ray tasks behind the same
interface; `make_executor(settings, secret)` picks one by `settings.executor`.

Before its first evaluation an executor runs the sandbox self-test (fitness.selftest) and
raises SandboxUnavailable if a required layer does not hold; `containment` keeps the report.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Iterable, Iterator, Protocol

from fitness.device import device_slots, resolve_device
from fitness.evaluate import evaluate
from fitness.forkserver import ForkServer, ForkServerError
from fitness.policy import check_policy
from fitness.sandbox import worker_env
from fitness.selftest import describe, require_held, self_test
from fitness.settings import FitnessSettings
from records import Evaluation

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalJob:
    """One evaluation to run: a genome's code at a stage (1 or 2) with one training seed."""

    genome_id: str
    code: str
    stage: int
    seed: int


@dataclasses.dataclass
class Slot:
    """One CPU or GPU slot: its environment overrides and its fork server (started on first use)."""

    env: dict[str, str]
    server: ForkServer | None = None
    fork_failed: bool = False  # the server would not start: this slot spawns from now on


class LocalExecutor:
    """Evaluate jobs in up to `settings.workers` sandboxed subprocesses at once."""

    def __init__(self, settings: FitnessSettings, secret: bytes):
        self.settings, self.secret = settings, secret
        self.device = resolve_device(settings.device)
        self.containment: dict | None = None  # the self-test's report, once it ran
        self._tested = threading.Lock()
        self._slots: queue.Queue[Slot] = queue.Queue()
        self._all_slots = [Slot(env) for env in device_slots(self.device, settings.workers)]
        for slot in self._all_slots:
            self._slots.put(slot)
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="evoarch-eval")

    def _server(self, slot: "Slot") -> ForkServer | None:
        """The slot's running fork server, started (or restarted) here; None to spawn instead."""
        if not self.settings.sandbox.fork_server or slot.fork_failed:
            return None
        try:
            slot.server = running_server(slot.server, self.settings, slot.env)
        except (ForkServerError, OSError) as e:
            log.warning("fork server failed to start (%s); spawning a fresh interpreter per evaluation", e)
            slot.server, slot.fork_failed = None, True
        return slot.server

    def _run_one(self, job: EvalJob) -> Evaluation:
        if check_policy(job.code) is not None:  # answered here, without waiting for a slot or its server
            return evaluate(job.genome_id, job.code, job.stage, None, job.seed, self.settings, self.secret,
                            device=self.device)
        slot = self._slots.get()
        try:
            server = self._server(slot)
            with self._tested:
                if self.containment is None:
                    report = self_test(self.settings, self.device, slot.env, server)
                    require_held(report, self.settings.sandbox.allow_missing)
                    self.containment = report
                    log.info("sandbox self-test:\n%s", describe(report))
            return evaluate(job.genome_id, job.code, job.stage, None, job.seed, self.settings, self.secret,
                            device=self.device, env=slot.env, cancel=self._cancel, server=server)
        finally:
            self._slots.put(slot)

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
        for slot in self._all_slots:
            if slot.server is not None:
                slot.server.close()
                slot.server = None

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def running_server(server: ForkServer | None, settings: FitnessSettings, env: dict[str, str]) -> ForkServer:
    """`server` if it still runs, else a new fork server for workers with `env` (the old one
    closed). Raises ForkServerError or OSError if the new one cannot start."""
    if server is not None and server.alive():
        return server
    if server is not None:
        server.close()
    from fitness.tasks import data_env

    return ForkServer().start(worker_env(settings.threads_per_worker, {**data_env(), **env}))


class Executor(Protocol):
    """What the engine needs of an executor: stream results, close (also as a context manager)."""

    def run(self, jobs: Iterable[EvalJob]) -> Iterator[Evaluation]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc) -> None: ...


def make_executor(settings: FitnessSettings, secret: bytes) -> Executor:
    """The executor `settings.executor` names: "local" (LocalExecutor) or "ray" (RayExecutor,
    which needs the `ray` extra and starts or joins a Ray cluster here). `secret`: the key the
    held-out test sets derive from (fitness.secret)."""
    if settings.executor == "ray":
        from fitness.executor_ray import RayExecutor

        return RayExecutor(settings, secret)
    return LocalExecutor(settings, secret)
