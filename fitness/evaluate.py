"""Score one genome at one stage with one training seed: the engine's side of an evaluation.

`evaluate` runs the static policy here (a rejected genome never starts anything), then
`evaluate_sandboxed`: start the evaluation's processes (fitness.sandbox: the trusted trainer and
one or two sandboxed Mixer workers), refuse to go on unless every worker reports every required
containment layer (fitness.containment), then, per task of the stage: ask the trainer to train,
send it the test inputs of the engine's held-out set (fitness.testset: drawn from the engine's
secret; labels kept here), the causality twins to be answered by the second worker, check the
arrays that come back and score them here; then time the Mixer's forward passes at several
lengths (complexity). The genome's code runs only in the workers, which see activations and
parameters, never tokens, labels or this process. What a worker says about itself (the
parameter count its structural checks saw) is stored apart, as metrics["reported"].

Statuses: ok | rejected (policy, checks, budget, causality, complexity) | failed (crashed,
diverged, broke the protocol, invalid output) | timeout | killed (memory, CPU, cancel).
Raises SandboxUnavailable when a required layer is missing or the sandbox fails before any
genome code ran: that is the machine's problem, and the run must stop, not blame the genome.
Any other error of the harness ends the evaluation as `failed` with its reason; nothing a
genome does makes this function raise.
"""
from __future__ import annotations

import threading
import time

from fitness import protocol, testset
from fitness.containment import LAYERS, SandboxUnavailable, require
from fitness.forkserver import ForkServer, ForkServerError
from fitness.policy import check_policy
from fitness.sandbox import Cancelled, Channel, Closed, Deadline, signal_reason
from fitness.secret import fingerprint
from fitness.settings import FitnessSettings, StageSettings
from fitness.tasks import fetch, stage_task_names
from fitness.train import training_seeds
from records import Evaluation

REASON_CHARS = 2000
TRAINED = ("train_loss", "train_s", "steps_per_s", "params_total", "params_mixer", "params_mixer_layer", "lr", "val_loss",
           "lr_trials", "val_loss_by_lr")
PROBE_ROWS = 8  # rows of the complexity probe's forward passes


class _Verdict(Exception):
    """The evaluation ends here with this status and reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def clean_text(text: object, limit: int = REASON_CHARS) -> str:
    """Untrusted text made safe to store and to show an LLM: printable, bounded."""
    text = str(text)[: limit * 2]
    text = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + " ..."


def evaluate(genome_id: str, code: str, stage: int, stage_settings: StageSettings | None, seed: int,
             fitness_settings: FitnessSettings, secret: bytes, *, device: str | None = None,
             env: dict[str, str] | None = None, cancel: threading.Event | None = None,
             server: ForkServer | None = None) -> Evaluation:
    """Evaluate one genome at `stage` with training `seed` on the test set `secret` derives.
    Never raises for anything the genome does (SandboxUnavailable: see the module docstring).

    stage_settings: None uses fitness_settings.stage(stage). device: a resolved "cpu"/"cuda"
    (default: resolve fitness_settings.device). env: extra environment for the processes (e.g.
    CUDA_VISIBLE_DEVICES of an executor slot). cancel: set it to kill the run early.
    server: a started fitness.forkserver.ForkServer to fork the processes from (None: spawn them)."""
    t0 = time.perf_counter()
    reason = check_policy(code)
    if reason is not None:
        return Evaluation(genome_id, stage, seed, "rejected", reason=f"policy: {reason}",
                          metrics={"protocol": protocol.FITNESS_PROTOCOL}, wall_s=time.perf_counter() - t0)
    return evaluate_sandboxed(genome_id, code, stage, stage_settings, seed, fitness_settings, secret,
                              device=device, env=env, cancel=cancel, server=server)


def evaluate_sandboxed(genome_id: str, code: str, stage: int, stage_settings: StageSettings | None, seed: int,
                       fitness_settings: FitnessSettings, secret: bytes, *, device: str | None = None,
                       env: dict[str, str] | None = None, cancel: threading.Event | None = None,
                       server: ForkServer | None = None) -> Evaluation:
    """`evaluate` without the static policy: what the containment alone must hold."""
    from fitness.device import resolve_device
    from fitness.tasks import data_env

    t0 = time.perf_counter()
    st = stage_settings or fitness_settings.stage(stage)
    device = device or resolve_device(fitness_settings.device)
    fetch(st)  # downloads happen here, once, in the engine
    tests = {name: testset.build(st, name, secret, twins=fitness_settings.checks.causality)
             for name in stage_task_names(st)}
    job = {"code": code, "stage": st.model_dump(), "checks": fitness_settings.checks.model_dump(),
           "seeds": training_seeds(secret, seed, list(tests)), "device": device,
           "threads": fitness_settings.threads_per_worker, "gpu_memory_mb": fitness_settings.sandbox.gpu_memory_mb}
    env = {**data_env(), **(env or {})}
    run = _Run(fitness_settings, st, job, tests, device, env, cancel)
    try:
        run.go(server)
    except ForkServerError:  # the slot's server is gone (the executor restarts it): spawn this one again
        server = None
        run = _Run(fitness_settings, st, job, tests, device, env, cancel)
        run.go(None)
    metrics = {**run.metrics, "device": device, "threads": fitness_settings.threads_per_worker,
               "launch": "fork" if server is not None else "spawn", "protocol": protocol.FITNESS_PROTOCOL,
               "test_set": fingerprint(secret)}
    return Evaluation(genome_id=genome_id, stage=stage, seed=seed, status=run.status,
                      score=run.score if run.status == "ok" else None, reason=run.reason,
                      params=run.params, metrics=metrics, wall_s=time.perf_counter() - t0)


class _Run:
    """One conversation with one evaluation's trainer, and its verdict."""

    def __init__(self, settings: FitnessSettings, stage: StageSettings, job: dict, tests: dict, device: str,
                 env: dict, cancel):
        self.settings, self.stage, self.job, self.tests = settings, stage, job, tests
        self.device, self.env, self.cancel = device, env, cancel
        self.status, self.reason, self.score, self.params = "failed", "", None, None
        self.metrics: dict = {}
        self.gone: int | None = None  # the worker the trainer says ended without answering

    def go(self, server: ForkServer | None) -> None:
        sb = self.settings.sandbox
        workers = 2 if self.settings.checks.causality else 1
        channel = Channel(sb, self.stage.timeout_s or sb.timeout_s, workers=workers,
                          threads=self.settings.threads_per_worker, device=self.device, env=self.env, server=server,
                          cancel=self.cancel)
        grace = 0.0
        try:
            self._open(channel)
            self._converse(channel)
            grace = 2.0
            try:
                channel.send({"op": "bye"})
            except Closed:
                pass
        except _Verdict as v:
            self.status, self.reason = v.status, clean_text(v.reason)
            grace = 2.0 if self.gone is not None else 0.0
        except Deadline:
            self.status, self.reason = "timeout", f"timeout after {channel.timeout_s:g} s (wall); all its processes killed"
        except Cancelled:
            self.status, self.reason = "killed", "cancelled by the executor; all its processes killed"
        except Closed:
            grace = 2.0
            self.status, self.reason = "failed", ""  # from the exit statuses below
        except protocol.ProtocolError as e:
            self.status, self.reason = "failed", f"the trainer broke the protocol: {e}"
        except SandboxUnavailable:
            channel.close()
            raise
        except Exception as e:  # noqa: BLE001 - a harness error: this evaluation fails, the run goes on
            self.status, self.reason = "failed", clean_text(f"harness error: {type(e).__name__}: {e}")
        finally:
            ended = channel.close(grace)
        self._account(ended)

    def _account(self, ended) -> None:
        """Kernel-measured costs, and the verdict where a process ended without answering."""
        sb = self.settings.sandbox
        if ended.trainer is None and self.status == "failed" and not self.reason:
            raise ForkServerError("the fork server died during the evaluation (its processes were killed with it)")
        self.metrics.update({"wall_s": round(ended.wall_s, 3), **ended.usage})
        codes = ([ended.workers[self.gone]] if self.gone is not None and self.gone < len(ended.workers) else []) \
            + ended.workers + [ended.trainer]
        killed = next((c for c in codes if c is not None and c < 0), None)
        if self.status == "failed" and (self.gone is not None or not self.reason) and killed is not None:
            self.status, self.reason = signal_reason(-killed, sb)
        elif self.gone is not None and codes[0] is not None:
            self.reason += f" (exit code {codes[0]})"
        elif self.status == "failed" and not self.reason:
            self.reason = f"the evaluation ended without answering (trainer exit code {ended.trainer})"
            last = ended.trainer_log.strip().splitlines()[-1:]
            if last:
                self.reason += f"; trainer's last log line: {clean_text(last[0], 300)}"
        if ended.log_tail and self.status != "ok":
            self.metrics["log_tail"] = clean_text(ended.log_tail, sb.log_tail_chars)

    def _open(self, channel: Channel) -> None:
        """Send the job; read every worker's containment report (no genome code has run); require it."""
        try:
            channel.send(self.job)
            armed, _ = channel.receive()
        except (Closed, protocol.ProtocolError) as e:
            ended = channel.close(2.0)
            if ended.trainer is None:
                raise ForkServerError("the fork server died while starting an evaluation") from None
            raise SandboxUnavailable(f"the sandbox failed before any genome code ran ({type(e).__name__}: {e}); "
                                     f"logs: {clean_text(ended.log_tail + ended.trainer_log, 800)}") from None
        reports = armed.get("layers") if armed.get("op") == "armed" else None
        if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports) or not reports:
            raise SandboxUnavailable(f"the trainer sent {str(armed)[:200]} instead of the containment reports")
        for report in reports:
            require(report, self.settings.sandbox.allow_missing)
        self.metrics["containment"] = {name: all(bool(r.get(name, {}).get("active")) for r in reports)
                                       for name in LAYERS}

    def _reply(self, channel: Channel, expect: str, max_payload: int = 0) -> tuple[dict, dict]:
        reply, arrays = channel.receive(max_payload)
        if reply.get("op") == "error":
            reported = reply.get("reported") if isinstance(reply.get("reported"), dict) else {}
            if isinstance(reported.get("worker_gone"), int):
                self.gone = reported["worker_gone"]
            status = reply.get("status") if reply.get("status") in ("rejected", "failed", "killed") else "failed"
            raise _Verdict(status, str(reply.get("reason", "")))
        if reply.get("op") != expect:
            raise protocol.ProtocolError(f"expected `{expect}`, got {str(reply.get('op'))[:40]!r}")
        return reply, arrays

    def _converse(self, channel: Channel) -> None:
        scores, weights = {}, self.stage.tasks or {self.stage.task: 1.0}
        several = len(self.tests) > 1
        for name, tests in self.tests.items():
            t0 = time.monotonic()
            channel.send({"op": "train", "task": name})
            reply, _ = self._reply(channel, "trained")
            self.metrics["train_wall_s"] = round(self.metrics.get("train_wall_s", 0) + time.monotonic() - t0, 3)
            trained = reply.get("metrics") if isinstance(reply.get("metrics"), dict) else {}
            self.metrics.update({f"{name}/{k}" if several else k: trained[k] for k in TRAINED if k in trained})
            self.metrics["reported"] = reply.get("reported") if isinstance(reply.get("reported"), dict) else {}
            self.params = trained.get("params_mixer_layer")
            t0 = time.monotonic()
            metrics = self._test(channel, tests)
            self.metrics["test_wall_s"] = round(self.metrics.get("test_wall_s", 0) + time.monotonic() - t0, 3)
            scores[name] = metrics["score"]
            self.metrics.update({f"{name}/{k}" if several else k: v for k, v in metrics.items()})
            if not metrics["reproducible"]:
                raise _Verdict("rejected", (
                    f"not reproducible: on {name}, a second process with the same trained parameters answered "
                    f"copies of scored test sequences differently (log-probabilities differ by up to "
                    f"{metrics['reproduce_max_diff']:.3g}, tolerance {self.settings.checks.trained_tolerance:g}); the "
                    f"Mixer's output may depend only on its input and its parameters"))
            if not metrics["causal_after_training"]:
                raise _Verdict("rejected", (
                    f"not causal after training: on {name}, a test sequence and its copy that differs only after a "
                    f"secret position t, answered by two separate processes from the same trained parameters, got "
                    f"log-probabilities differing by {metrics['causal_max_diff']:.3g} at positions <= t (tolerance "
                    f"{self.settings.checks.trained_tolerance:g}); outputs at t may only depend on inputs at <= t and "
                    f"the parameters"))
        total = sum(weights.values())
        self.score = sum(weights[n] / total * s for n, s in scores.items())
        self.metrics["score"] = self.score
        checks = self.settings.checks
        if checks.complexity_probe or checks.max_complexity_exponent is not None:
            t0 = time.monotonic()
            self._complexity(channel)
            self.metrics["complexity_wall_s"] = round(time.monotonic() - t0, 3)
        self.status = "ok"

    def _test(self, channel: Channel, tests: testset.TestSet) -> dict:
        outputs = []
        for i, req in enumerate(tests.requests):
            arrays = {"inputs": req.inputs, "request": req.request}
            if req.candidates is not None:
                arrays["candidates"] = req.candidates
            channel.send({"op": "predict", "replica": req.replica}, arrays)
            n, k = req.n, req.k(tests.vocab_size)
            _, got = self._reply(channel, "predictions", 4 * n * k + 4 * n)
            if set(got) != {"logp", "argmax"}:
                raise protocol.ProtocolError("expected the arrays logp and argmax")
            problem = tests.check_outputs(i, got["logp"], got["argmax"])
            if problem:
                raise _Verdict("failed", f"invalid predictions: {problem}")
            outputs.append((got["logp"], got["argmax"]))
        return tests.score(outputs, self.settings.checks.trained_tolerance)

    def _complexity(self, channel: Channel) -> None:
        """Forward passes at the stage's length and the probe's, served by the worker that answered
        the copies and twins; each costed by the CPU time the kernel counts for that worker (the
        trainer's wait for it where the kernel does not say)."""
        from fitness.checks import complexity_verdict

        checks = self.settings.checks
        lengths = sorted({self.stage.seq_len, *checks.complexity_lengths})
        replica = 1 if checks.causality else 0
        times: dict[int, list[float]] = {t: [] for t in lengths}
        for round_ in range(checks.complexity_repeats + 1):  # the first round warms up
            for length in lengths:
                before = channel.worker_cpu_s(replica)
                channel.send({"op": "probe", "length": length, "rows": PROBE_ROWS})
                reply, _ = self._reply(channel, "probed")
                after = channel.worker_cpu_s(replica)
                waited = protocol.number(reply.get("seconds"), 0, 1e6)
                if round_:
                    times[length].append(after - before if before is not None and after is not None else waited)
        metrics, reason = complexity_verdict(lengths, times, checks)
        self.metrics["complexity"] = metrics
        if reason:
            raise _Verdict("rejected", reason)
