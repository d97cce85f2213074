"""Score one genome at one stage with one seed.

`evaluate` is the public entry the engine calls: static policy in this process (a
rejected genome never spawns anything), then the sandboxed worker. `evaluate_in_process`
is what the worker runs: load the module, structural checks, train, score.
"""
from __future__ import annotations

import functools
import linecache
import secrets
import threading
import time
import traceback
import types

from evo.genome import Evaluation
from fitness.forkserver import ForkServerError
from fitness.policy import check_policy
from fitness.settings import CheckSettings, FitnessSettings, StageSettings

GENOME_FILENAME = "<genome>"


def load_genome(code: str) -> types.ModuleType:
    """Execute the genome's source as a fresh module named `genome` (tracebacks show its lines)."""
    linecache.cache[GENOME_FILENAME] = (len(code), None, code.splitlines(True), GENOME_FILENAME)
    module = types.ModuleType("genome")
    module.__file__ = GENOME_FILENAME
    exec(compile(code, GENOME_FILENAME, "exec"), module.__dict__)
    if not isinstance(getattr(module, "Mixer", None), type):
        raise TypeError("the genome does not define a class `Mixer`")
    return module


def describe_exception(exc: BaseException) -> str:
    """`Type: message (genome line N: <source>)`, pointing at the deepest genome frame if any."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    if len(msg) > 600:
        msg = msg[:600] + " ..."
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == GENOME_FILENAME]
    if frames:
        f = frames[-1]
        msg += f" (genome line {f.lineno}: `{(f.line or '').strip()}`)"
    return msg


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()


def evaluate_in_process(code: str, stage: dict | StageSettings, checks: dict | CheckSettings, seed: int,
                        device: str = "cpu", memory_mb: int | None = None) -> dict:
    """Load, check and train one genome here; return a JSON-able dict
    {status, score, reason, params, metrics} (status ok | rejected | failed | killed)."""
    from fitness.checks import CheckFailed, run_checks
    from fitness.train import NonFiniteLoss, train_and_score

    stage = stage if isinstance(stage, StageSettings) else StageSettings.model_validate(stage)
    checks = checks if isinstance(checks, CheckSettings) else CheckSettings.model_validate(checks)
    out: dict = {"status": "failed", "score": None, "reason": "", "params": None, "metrics": {}}
    phase = "loading the module"
    try:
        t0 = time.perf_counter()
        module = load_genome(code)

        def make_mixer():
            return module.Mixer(stage.d_model, stage.n_heads)

        phase = "structural checks"
        out["metrics"].update(run_checks(make_mixer, stage.d_model, stage.seq_len, checks, seed, device))
        out["metrics"]["check_s"] = round(time.perf_counter() - t0, 3)
        out["params"] = out["metrics"]["params_mixer_layer"]
        phase = "training"
        metrics = train_and_score(make_mixer, stage, seed, device)
        out["metrics"].update(metrics)
        out.update(status="ok", score=metrics["score"])
    except CheckFailed as e:
        out.update(status="rejected", reason=f"check failed: {e}")
    except NonFiniteLoss as e:
        out.update(status="failed", reason=f"training diverged: {e}")
    except BaseException as e:  # noqa: BLE001 - everything a genome raises is its failure
        if _is_out_of_memory(e):
            limit = f"memory limit {memory_mb} MB" if memory_mb else "device memory"
            out.update(status="killed", reason=f"{limit} exceeded during {phase}: {describe_exception(e)}")
        else:
            out.update(status="failed", reason=f"error during {phase}: {describe_exception(e)}")
    out["metrics"]["phase"] = phase
    return out


def evaluate(genome_id: str, code: str, stage: int, stage_settings: StageSettings | None, seed: int,
             fitness_settings: FitnessSettings, *, device: str | None = None, env: dict[str, str] | None = None,
             cancel: threading.Event | None = None, server=None) -> Evaluation:
    """Evaluate one genome at `stage` with training `seed`; never raises for a bad genome.

    stage_settings: None uses fitness_settings.stage(stage). device: a resolved "cpu"/"cuda"
    (default: resolve fitness_settings.device). env: extra environment for the worker
    (e.g. CUDA_VISIBLE_DEVICES of an executor slot). cancel: set it to kill the run early.
    server: a started fitness.forkserver.ForkServer to fork the worker from (None: spawn one).
    """
    from fitness import sandbox
    from fitness.device import resolve_device

    t0 = time.perf_counter()
    st = stage_settings or fitness_settings.stage(stage)
    reason = check_policy(code)
    if reason is not None:
        return Evaluation(genome_id, stage, seed, "rejected", reason=f"policy: {reason}",
                          wall_s=time.perf_counter() - t0)
    device = device or resolve_device(fitness_settings.device)
    from fitness.tasks import data_env, prepare

    prepare(st)  # a data download happens here, in the parent, once
    env = {**data_env(), **(env or {})}
    sb = fitness_settings.sandbox
    job = {
        "nonce": secrets.token_hex(16), "code": code, "stage": st.model_dump(),
        "checks": fitness_settings.checks.model_dump(), "seed": seed, "device": device,
        "threads": fitness_settings.threads_per_worker, "max_procs": sb.max_procs,
        "memory_mb": None if device.startswith("cuda") else sb.memory_mb,
    }
    run = functools.partial(sandbox.run_job, job, sb, timeout_s=st.timeout_s or sb.timeout_s,
                            limit_memory=not device.startswith("cuda"), env=env, cancel=cancel)
    try:
        outcome = run(server=server)
    except ForkServerError:  # the slot's server is gone (the executor restarts it): spawn this one again
        server = None
        outcome = run(server=None)
    res = outcome.result or {}
    metrics = dict(res.get("metrics") or {})
    metrics.update(device=device, threads=fitness_settings.threads_per_worker,
                   launch="fork" if server is not None else "spawn")
    if outcome.log_tail and outcome.status != "ok":
        metrics["log_tail"] = outcome.log_tail
    return Evaluation(
        genome_id=genome_id, stage=stage, seed=seed, status=outcome.status,
        score=res.get("score") if outcome.status == "ok" else None,
        reason=outcome.reason, params=res.get("params"), metrics=metrics,
        wall_s=time.perf_counter() - t0,
    )
