"""Score one genome at one stage with one training seed: the engine's side of an evaluation.

`evaluate` runs the static policy here (a rejected genome never starts anything), then
`evaluate_sandboxed`: start a sandboxed worker (fitness.sandbox), refuse to go on unless it
reports every required containment layer (fitness.containment), then, per task of the stage:
ask it to train, send it the test inputs of the engine's held-out set (fitness.testset: drawn
from the engine's secret, labels kept here), check the arrays it returns and score them here;
verify that the trained model is causal on real test sequences; time its forward passes at
several lengths (complexity). Every number that decides selection is computed in this process.
What the worker reports about itself (training loss, its own timings, the parameter count its
harness counted) is stored under metrics["reported"], bounded and sanitised.

Statuses: ok | rejected (policy, checks, causality, complexity, tampering) | failed (crashed,
diverged, broke the protocol, invalid predictions) | timeout | killed (memory, CPU, cancel).
Raises SandboxUnavailable when a required layer is missing or the sandbox fails before any
genome code ran: that is the machine's problem, and the run must stop, not blame the genome.
"""
from __future__ import annotations

import math
import threading
import time

from evo.genome import Evaluation
from fitness import protocol, testset
from fitness.containment import SandboxUnavailable, require
from fitness.forkserver import ForkServer, ForkServerError
from fitness.policy import check_policy
from fitness.sandbox import Cancelled, Channel, Closed, Deadline, signal_reason
from fitness.secret import fingerprint
from fitness.settings import FitnessSettings, StageSettings
from fitness.tasks import fetch, stage_task_names

REPORTED_NUMBERS = ("train_loss", "train_s", "steps_per_s", "params_total", "params_mixer", "params_mixer_layer")
REASON_CHARS = 2000


class _Verdict(Exception):
    """The evaluation ends here with this status and reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def clean_text(text: object, limit: int = REASON_CHARS) -> str:
    """Untrusted text made safe to store and to show an LLM: printable, one paragraph, bounded."""
    text = str(text)[: limit * 2]
    text = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + " ..."


def _reported(values: object) -> dict:
    """The worker's own numbers, kept only where they are finite numbers under known names."""
    if not isinstance(values, dict):
        return {}
    return {k: float(v) if isinstance(v, float) else v for k, v in values.items()
            if k in REPORTED_NUMBERS and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def evaluate(genome_id: str, code: str, stage: int, stage_settings: StageSettings | None, seed: int,
             fitness_settings: FitnessSettings, secret: bytes, *, device: str | None = None,
             env: dict[str, str] | None = None, cancel: threading.Event | None = None,
             server: ForkServer | None = None) -> Evaluation:
    """Evaluate one genome at `stage` with training `seed` on the test set `secret` derives.
    Never raises for anything the genome does (SandboxUnavailable: see the module docstring).

    stage_settings: None uses fitness_settings.stage(stage). device: a resolved "cpu"/"cuda"
    (default: resolve fitness_settings.device). env: extra environment for the worker (e.g.
    CUDA_VISIBLE_DEVICES of an executor slot). cancel: set it to kill the run early.
    server: a started fitness.forkserver.ForkServer to fork the worker from (None: spawn one)."""
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
    tests = {name: testset.build(st, name, secret) for name in stage_task_names(st)}
    job = {"code": code, "stage": st.model_dump(), "checks": fitness_settings.checks.model_dump(), "seed": seed,
           "device": device, "threads": fitness_settings.threads_per_worker,
           "gpu_memory_mb": fitness_settings.sandbox.gpu_memory_mb}
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
    """One conversation with one worker, and its verdict."""

    def __init__(self, settings: FitnessSettings, stage: StageSettings, job: dict, tests: dict, device: str,
                 env: dict, cancel):
        self.settings, self.stage, self.job, self.tests = settings, stage, job, tests
        self.device, self.env, self.cancel = device, env, cancel
        self.status, self.reason, self.score, self.params = "failed", "", None, None
        self.metrics: dict = {}

    def go(self, server: ForkServer | None) -> None:
        sb = self.settings.sandbox
        channel = Channel(sb, self.stage.timeout_s or sb.timeout_s, threads=self.settings.threads_per_worker,
                          device=self.device, env=self.env, server=server, cancel=self.cancel)
        grace = 0.0
        try:
            layers = self._open(channel)
            self.metrics["containment"] = {name: bool(layer.get("active")) for name, layer in layers.items()}
            self._converse(channel)
            grace = 2.0
            try:
                channel.send({"op": "bye"})
            except Closed:
                pass
        except _Verdict as v:
            self.status, self.reason = v.status, clean_text(v.reason)
            grace = 0.0
        except Deadline:
            self.status, self.reason = "timeout", f"timeout after {channel.timeout_s:g} s (wall); all its processes killed"
        except Cancelled:
            self.status, self.reason = "killed", "cancelled by the executor; all its processes killed"
        except Closed:
            grace = 2.0
            self.status, self.reason = "failed", ""  # from the exit status below
        except protocol.ProtocolError as e:
            self.status, self.reason = "failed", f"broke the result protocol: {e}"
        finally:
            ended = channel.close(grace)
        if ended.returncode is None and self.status == "failed" and not self.reason:
            raise ForkServerError("the fork server died during the evaluation (the worker was killed with it)")
        self.metrics.update({"wall_s": round(ended.wall_s, 3), **ended.usage})
        if self.status == "failed" and not self.reason:  # the worker ended without answering
            if ended.returncode is not None and ended.returncode < 0:
                self.status, self.reason = signal_reason(-ended.returncode, sb)
            else:
                self.reason = f"the worker exited (code {ended.returncode}) without answering"
                last = ended.log_tail.strip().splitlines()[-1:]
                if last:
                    self.reason += f"; last log line: {clean_text(last[0], 300)}"
        if ended.log_tail and self.status != "ok":
            self.metrics["log_tail"] = clean_text(ended.log_tail, sb.log_tail_chars)

    def _open(self, channel: Channel) -> dict:
        """Send the job, read the containment report (no genome code has run yet), require it."""
        try:
            channel.send(self.job)
            armed, _ = channel.receive()
        except (Closed, protocol.ProtocolError) as e:
            ended = channel.close(2.0)
            if ended.returncode is None:
                raise ForkServerError("the fork server died while starting a worker") from None
            raise SandboxUnavailable(f"the sandbox failed before any genome code ran ({type(e).__name__}: {e}); "
                                     f"worker log: {clean_text(ended.log_tail, 800)}") from None
        layers = armed.get("layers") if armed.get("op") == "armed" else None
        if not isinstance(layers, dict):
            raise SandboxUnavailable(f"the sandbox sent {str(armed)[:200]} instead of its containment report")
        require(layers, self.settings.sandbox.allow_missing)
        return layers

    def _converse(self, channel: Channel) -> None:
        scores, weights = {}, self.stage.tasks or {self.stage.task: 1.0}
        several = len(self.tests) > 1
        for name, tests in self.tests.items():
            t0 = time.monotonic()
            channel.send({"op": "train", "task": name})
            reply, _ = channel.receive()
            self.metrics["train_wall_s"] = round(self.metrics.get("train_wall_s", 0) + time.monotonic() - t0, 3)
            reported = _reported(reply.get("reported"))
            self.metrics.setdefault("reported", {}).update({f"{name}/{k}" if several else k: v
                                                            for k, v in reported.items()})
            if self.params is None and isinstance(reported.get("params_mixer_layer"), int):
                self.params = reported["params_mixer_layer"]
            if reply.get("op") == "error":
                status = reply.get("status") if reply.get("status") in ("rejected", "failed", "killed") else "failed"
                raise _Verdict(status, str(reply.get("reason", "")))
            if reply.get("op") != "trained":
                raise protocol.ProtocolError(f"expected `trained`, got {str(reply.get('op'))[:40]!r}")
            t0 = time.monotonic()
            metrics = self._test(channel, tests)
            self.metrics["test_wall_s"] = round(self.metrics.get("test_wall_s", 0) + time.monotonic() - t0, 3)
            scores[name] = metrics["score"]
            self.metrics.update({f"{name}/{k}" if several else k: v for k, v in metrics.items()})
            if not metrics["causal_after_training"] and self.settings.checks.causality:
                raise _Verdict("rejected", (
                    f"not causal after training: on {name}, a test sequence and its copy that differs only after a "
                    f"secret position t got log-probabilities differing by {metrics['causal_max_diff']:.3g} at "
                    f"positions <= t (tolerance {self.settings.checks.trained_tolerance:g}); outputs at t may only "
                    f"depend on inputs at <= t"))
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
            channel.send({"op": "predict"}, arrays)
            n, k = req.n, req.k(tests.vocab_size)
            reply, got = channel.receive(max_payload=4 * n * k + 4 * n)
            if reply.get("op") == "error":
                raise _Verdict(reply.get("status") if reply.get("status") in ("rejected", "failed", "killed")
                               else "failed", str(reply.get("reason", "")))
            if reply.get("op") != "predictions" or set(got) != {"logp", "argmax"}:
                raise protocol.ProtocolError("expected `predictions` with the arrays logp and argmax")
            problem = tests.check_outputs(i, got["logp"], got["argmax"])
            if problem:
                raise _Verdict("failed", f"invalid predictions: {problem}")
            outputs.append((got["logp"], got["argmax"]))
        return tests.score(outputs, self.settings.checks.trained_tolerance)

    def _complexity(self, channel: Channel) -> None:
        from fitness.checks import complexity_verdict

        checks = self.settings.checks
        lengths = sorted({self.stage.seq_len, *checks.complexity_lengths})
        memory: dict[int, int] = {}
        times: dict[int, list[float]] = {t: [] for t in lengths}
        for round_ in range(checks.complexity_repeats + 1):  # the first round warms up and measures memory
            for length in lengths:
                t0 = time.perf_counter()
                channel.send({"op": "time", "length": length, "memory": round_ == 0})
                reply, _ = channel.receive()
                elapsed = time.perf_counter() - t0
                if reply.get("op") == "error":
                    raise _Verdict("failed", f"during the complexity probe: {reply.get('reason', '')}")
                if reply.get("op") != "timed":
                    raise protocol.ProtocolError("expected `timed`")
                if round_ == 0:
                    value = reply.get("activation_bytes")
                    memory[length] = int(value) if isinstance(value, int) and value >= 0 else 0
                else:
                    times[length].append(elapsed)
        metrics, reason = complexity_verdict(lengths, times, memory, checks)
        self.metrics["complexity"] = metrics
        if reason:
            raise _Verdict("rejected", reason)
