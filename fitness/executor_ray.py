"""Run evaluations as Ray tasks, for users who outgrow one machine.

Same interface as `LocalExecutor`: `run(jobs)` yields one `Evaluation` per job in completion
order; closing the iterator early cancels what is still queued or running; `close()` cancels
everything and shuts down the Ray cluster if this executor started it.

Each Ray task calls `fitness.evaluate(...)`, the same entry the local executor uses, so the
evaluation still runs in its own sandboxed worker with every containment layer, scored by the
Ray task (engine side, holding the secret) from the worker's predictions; the Ray worker only
drives it, forking the sandbox from a fork server it keeps for its later tasks. The first run
self-tests the sandbox in a Ray task (fitness.selftest) before any genome is sent. Ray schedules on `num_cpus=threads_per_worker` and `num_gpus=gpus_per_eval`; a
task that got GPUs sees them through the CUDA_VISIBLE_DEVICES Ray sets, which the sandbox
passes on to its child; a task without GPUs gets CUDA_VISIBLE_DEVICES="" so it cannot use
a GPU Ray did not give it.

Genomes the static policy rejects are answered on the driver without a Ray round trip
(`evaluate` returns before spawning anything for them), so they never wait for a slot.

Cluster: `ray_address` (or RAY_ADDRESS) joins an existing cluster, on which evoarch must be
installed in the same version on every node; otherwise a private local cluster with
`workers * threads_per_worker` CPUs is started (no dashboard) and shut down on close.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Iterable, Iterator

from fitness.evaluate import evaluate
from fitness.executor import EvalJob, running_server
from fitness.forkserver import ForkServer, ForkServerError
from fitness.policy import check_policy
from fitness.selftest import require_held, self_test
from fitness.settings import FitnessSettings
from records import Evaluation

CANCEL_GRACE_S = 10.0  # how long a cancelled task gets to kill its sandbox before its Ray worker is killed


def _import_ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("executor = \"ray\" needs Ray: pip install 'evoarch[ray]'") from e
    return ray


_SERVERS: dict[tuple, ForkServer] = {}  # per Ray worker process: (threads, env) -> its fork server


def _fork_server(settings: FitnessSettings, env: dict[str, str]) -> ForkServer | None:
    """This Ray worker's fork server for `env` (started on first use, restarted if it died);
    None when sandbox.fork_server is off or the server cannot start (the sandbox spawns then)."""
    if not settings.sandbox.fork_server:
        return None
    key = (settings.threads_per_worker, tuple(sorted(env.items())))
    try:
        _SERVERS[key] = running_server(_SERVERS.get(key), settings, env)
    except (ForkServerError, OSError):
        _SERVERS.pop(key, None)
        return None
    return _SERVERS[key]


def _task_device() -> tuple[str, dict[str, str]]:
    """The device of the running Ray task and the environment that pins its worker to it."""
    import ray

    if ray.get_gpu_ids():
        return "cuda", {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}  # the task's GPUs
    return "cpu", {"CUDA_VISIBLE_DEVICES": ""}


def _self_test_task(settings: FitnessSettings) -> dict:
    """Body of the self-test task: fitness.selftest on a node as its evaluations will run there."""
    device, env = _task_device()
    return self_test(settings, device, env, _fork_server(settings, env))


def _evaluate_task(job: EvalJob, settings: FitnessSettings, secret: bytes) -> Evaluation:
    """Body of one Ray task: the ordinary sandboxed `evaluate` on this node's CPU or Ray-assigned GPU."""
    import ray

    device, env = _task_device()
    ev = evaluate(job.genome_id, job.code, job.stage, None, job.seed, settings, secret, device=device, env=env,
                  server=_fork_server(settings, env))
    ev.metrics["executor"] = "ray"
    ev.metrics["ray_node_ip"] = ray.util.get_node_ip_address()
    return ev


class RayExecutor:
    """Evaluate jobs as Ray tasks (one sandboxed subprocess each), on a local or remote Ray cluster."""

    def __init__(self, settings: FitnessSettings, secret: bytes):
        ray = _import_ray()
        self.settings = settings
        self.containment: dict | None = None  # the self-test's report, once it ran
        self._ray = ray
        self._owns_cluster = False
        self._inflight: dict = {}  # ObjectRef -> EvalJob, over all open run() iterators
        address = settings.ray_address or os.environ.get("RAY_ADDRESS")
        if ray.is_initialized():
            pass  # the caller already connected this process to a cluster: use it, leave it running
        elif address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            init_kwargs = dict(address="local", num_cpus=settings.workers * settings.threads_per_worker,
                               include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if settings.device == "cpu":
                init_kwargs["num_gpus"] = 0
            ray.init(**init_kwargs)
            self._owns_cluster = True
        try:
            self.gpus_per_eval = self._resolve_gpus()
            self._task = ray.remote(_evaluate_task).options(
                num_cpus=settings.threads_per_worker, num_gpus=self.gpus_per_eval,
                max_retries=1,  # once more if the Ray worker or node died; never for what the genome did
            )
            self._self_test = ray.remote(_self_test_task).options(num_cpus=settings.threads_per_worker,
                                                                 num_gpus=self.gpus_per_eval, max_retries=1)
            self._settings_ref = ray.put(settings)  # shipped once, not with every task
            self._secret_ref = ray.put(secret)
        except BaseException:
            self.close()
            raise

    def _resolve_gpus(self) -> float:
        s = self.settings
        if s.device == "cpu":
            return 0.0
        cluster_gpus = float(self._ray.cluster_resources().get("GPU", 0))
        gpus = s.gpus_per_eval if s.gpus_per_eval is not None else (1.0 if cluster_gpus > 0 else 0.0)
        if s.device == "cuda" and gpus == 0:
            raise ValueError("device = \"cuda\" with executor = \"ray\" needs GPUs: the Ray cluster reports none "
                             "and gpus_per_eval is 0 or unset")
        if gpus > 0 and cluster_gpus < gpus:
            warnings.warn(f"gpus_per_eval = {gpus:g} but the Ray cluster has {cluster_gpus:g} GPUs now; "
                          "tasks wait until an autoscaler adds GPU nodes", RuntimeWarning, stacklevel=3)
        return gpus

    def _collect(self, ref, job: EvalJob) -> Evaluation:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError:
            raise  # evaluate() itself raised: a harness bug, surfaced as LocalExecutor would
        except ray.exceptions.RayError as e:  # the Ray worker or node died, Ray's memory monitor killed it...
            status = "killed" if isinstance(e, ray.exceptions.OutOfMemoryError) else "failed"
            reason = f"ray: {type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"
            return Evaluation(job.genome_id, job.stage, job.seed, status, reason=reason,
                              metrics={"executor": "ray"})

    def run(self, jobs: Iterable[EvalJob]) -> Iterator[Evaluation]:
        """Yield one Evaluation per job, in completion order. Closing the iterator early
        cancels queued tasks and kills the running ones (and so their sandboxes)."""
        pending: dict = {}
        rejected: list[Evaluation] = []
        try:
            for job in jobs:
                if check_policy(job.code) is not None:  # evaluate() answers these without spawning
                    rejected.append(evaluate(job.genome_id, job.code, job.stage, None, job.seed, self.settings,
                                             b"", device="cpu"))
                    continue
                if self.containment is None:
                    report = self._ray.get(self._self_test.remote(self._settings_ref))
                    require_held(report, self.settings.sandbox.allow_missing)
                    self.containment = report
                ref = self._task.remote(job, self._settings_ref, self._secret_ref)
                pending[ref] = job
                self._inflight[ref] = job
            while rejected:
                yield rejected.pop(0)
            while pending:
                done, _ = self._ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    self._inflight.pop(ref, None)
                    yield self._collect(ref, job)
        finally:
            if pending:
                self._cancel(list(pending))
                for ref in pending:
                    self._inflight.pop(ref, None)

    def _cancel(self, refs: list) -> None:
        """Cancel tasks and wait until each has ended (a running one gets KeyboardInterrupt, on
        which the sandbox kills its process group); after CANCEL_GRACE_S kill their Ray workers."""
        ray = self._ray
        if not refs or not ray.is_initialized():
            return
        for ref in refs:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001 - already finished or lost: nothing to cancel
                pass
        deadline = time.monotonic() + CANCEL_GRACE_S
        left = refs
        while left and time.monotonic() < deadline:
            _, left = ray.wait(left, num_returns=len(left), timeout=max(0.0, deadline - time.monotonic()))
        for ref in left:
            warnings.warn("a cancelled Ray task did not stop in time; killing its Ray worker", RuntimeWarning,
                          stacklevel=2)
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        """Cancel evaluations in flight and shut down the Ray cluster if this executor started it."""
        ray = self._ray
        if self._inflight:
            self._cancel(list(self._inflight))
            self._inflight.clear()
        if self._owns_cluster and ray.is_initialized():
            ray.shutdown()
        self._owns_cluster = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
