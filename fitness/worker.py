"""The sandboxed evaluation of one genome: a launcher process and the worker it forks.

`launch()` is the launcher (`python -m fitness.worker`, or the child a fork server forks): trusted
code that applies the layers that must exist before the worker does (rlimits, the evaluation's
cgroup, fresh namespaces; fitness.containment), forks the worker, waits for it and exits with
its status. The worker is process 1 of its PID namespace, so when it ends, or the launcher dies
(the worker has PR_SET_PDEATHSIG = SIGKILL), the kernel kills everything left inside.

`serve()` is the worker. It reads the job (fitness.protocol frames on stdin: code, settings,
training seed), loads what training needs (the training split, never held-out data), applies
its own layers (private mounts, an unprivileged user, Landlock, seccomp), arms the in-process
lint (audit hook, harness-integrity snapshot, no Python threads) and reports every layer to the
engine (`armed`) before any genome code exists in the process. Only when the engine answers
does it run the genome, at the engine's request:

- `train` {task}: load the genome (first time), structural checks, train -> `trained` with what
  it measured (untrusted: the engine stores it as reported), or `error` {status, reason};
- `predict` + arrays (inputs, requested positions, candidates) -> `predictions` (log-probabilities
  and argmax; the engine holds the labels and scores them, see fitness.testset);
- `time` {length} -> `timed` (one forward of the trained Mixer, which the engine times);
- `bye` -> exit.

A job with "probe" set is the containment self-test: no lint is armed and no genome loaded; the
worker answers `probe` with what fitness.containment.probe saw, then exits.

Everything it writes goes to the result pipe; the genome's prints go to the capped log. Nothing
the worker says is trusted beyond the `armed` report; the engine checks every array it reads.
"""
from __future__ import annotations

import json
import os
import sys

_MISSING = object()
# Modules that legitimately rebind their own globals at run time (lazy profiler state).
_UNWATCHED = ("fitness.worker", "torch.autograd.profiler")
_UNWATCHED_NAMES = ("__warningregistry__",)  # warnings' per-module registries change when a warning is shown


def _copy(value):
    return dict(value) if type(value) is dict else list(value) if type(value) is list else set(value)


class Tampered(BaseException):
    """The genome changed the harness (raised inside the harness to stop the evaluation)."""


def _watched_namespaces() -> list[tuple[str, object]]:
    """(label, object) whose attribute namespace must not change while the genome runs."""
    import builtins
    import math

    import torch
    import torch.nn as nn

    prefixes = ("fitness", "evo", "torch.nn", "torch.optim", "torch.autograd", "torch.linalg")
    modules = {m.__name__: m for m in (builtins, json, math, os, torch, torch.functional)}
    for name, mod in list(sys.modules.items()):
        if mod is not None and name.startswith(prefixes) and not name.startswith(_UNWATCHED):
            modules[name] = mod
    worker = sys.modules[__name__]  # its globals change, its classes must not
    out: list[tuple[str, object]] = [(name, mod) for name, mod in sorted(modules.items())]
    classes = {id(torch.Tensor): ("torch.Tensor", torch.Tensor),
               id(nn.Parameter): ("torch.nn.Parameter", nn.Parameter)}
    for name, mod in sorted(modules.items()) + [(__name__, worker)]:
        if not name.startswith(prefixes):
            continue
        for attr, value in list(vars(mod).items()):
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                classes.setdefault(id(value), (f"{name}.{attr}", value))
    out += sorted(classes.values(), key=lambda kv: kv[0])
    return out


class Integrity:
    """A snapshot of the harness's namespaces; verify() names the first difference. In-process lint:
    it gives an honest error a clear name ("tampering with the harness"); the score does not
    depend on it, since the engine computes it from predictions on data the genome never had."""

    def __init__(self, ops: list[str]) -> None:
        watched = _watched_namespaces()
        self.entries = [(label, vars(obj), {k: v for k, v in vars(obj).items() if k not in _UNWATCHED_NAMES})
                        for label, obj in watched]
        self.modules = {label: obj for label, obj in watched if type(obj) is type(os)}
        self.registries = []  # torch's global module/optimizer hooks: mutated in place, not rebound
        for label in ("torch.nn.modules.module", "torch.optim.optimizer"):
            mod = sys.modules.get(label)
            for name, value in sorted(vars(mod).items()) if mod is not None else ():
                if name.startswith("_global_") and isinstance(value, dict):
                    self.registries.append((f"{label}.{name}", value, len(value)))
        self.containers = [(f"{label}.{name}", value, _copy(value)) for label, ns, _ in self.entries
                           if label.startswith(("fitness", "evo")) and type(ns) is dict
                           for name, value in sorted(ns.items())
                           if type(value) in (dict, list, set) and not name.startswith("__")]
        import torch

        self.mode_stacks = [(name, getattr(torch._C, name)) for name in
                            ("_len_torch_function_stack", "_len_torch_dispatch_stack") if hasattr(torch._C, name)]
        self.dump = torch._C._dispatch_dump
        self.kernels = {op: self.dump(op) for op in ops}
        self.problems: list[str] = []

    def verify(self, when: str, _type=type, _len=len, _module=type(os), _missing=_MISSING) -> str | None:
        for label, ns, snap in self.entries:
            if any(ns.get(k, _missing) is not v for k, v in snap.items()) or _len(ns) != _len(snap):
                for k, v in snap.items():
                    now = ns.get(k, _missing)
                    if now is _missing:
                        return self._flag(f"`{label}.{k}` was deleted ({when})")
                    if now is not v:
                        return self._flag(f"`{label}.{k}` was replaced ({when})")
                for k in ns.keys() - snap.keys():
                    if k in _UNWATCHED_NAMES:
                        continue
                    if _type(ns[k]) is not _module or label in ("builtins",) or label.startswith(("fitness", "evo")):
                        return self._flag(f"`{label}.{k}` was added ({when})")
                    snap[k] = ns[k]  # a torch submodule imported lazily
        for name, mod in self.modules.items():
            if sys.modules.get(name, mod) is not mod:
                return self._flag(f"sys.modules[{name!r}] was replaced ({when})")
        for label, registry, size in self.registries:
            if _len(registry) != size:
                return self._flag(f"a global hook was registered in `{label}` ({when})")
        for label, value, copy in self.containers:
            if value != copy:
                return self._flag(f"`{label}` was modified ({when})")
        for name, depth in self.mode_stacks:
            if depth():
                return self._flag(f"a torch {name.split('_')[-2]} mode was pushed (it would see every op) ({when})")
        for op, table in self.kernels.items():
            if self.dump(op) != table:
                return self._flag(f"the dispatcher's kernels for `{op}` were changed ({when})")
        return None

    def check(self, when: str) -> None:
        problem = self.verify(when)
        if problem:
            raise Tampered(problem)

    def _flag(self, what: str) -> str:
        self.problems.append(what)
        return what


def harness_ops() -> list[str]:
    """The ATen operators a training step and a prediction of the backbone run (around a plain
    linear layer as the Mixer): a genome that overrides one of them in torch's dispatcher
    (torch.library) could see the tokens or rewrite the logits without touching any Python name."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from fitness.backbone import Backbone
    from fitness.train import predict

    seen: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    model = Backbone(lambda: torch.nn.Linear(8, 8), 16, 8, 1, 3, True)
    opt = torch.optim.AdamW(model.parameters())
    inputs, mask = torch.randint(16, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    with Record():
        loss = torch.nn.functional.cross_entropy(model(inputs, mask), inputs[mask])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        predict(model, inputs, mask, torch.zeros(12, 2, dtype=torch.long), "cpu")
    return sorted(seen)


def _install_checkpoints(trusted) -> Integrity:
    """Verify the harness wherever the genome's code has just run; returns the Integrity,
    snapshotted after these wrappers are in place."""
    import functools

    import torch

    from fitness import backbone, checks, train

    ops = harness_ops()  # before the checkpoints below exist: it runs the backbone

    def around(fn, when):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            integrity.check(f"before {when}")
            out = fn(*args, **kwargs)
            integrity.check(f"after {when}")
            return out
        return wrapper

    checks.run_checks = around(checks.run_checks, "the structural checks")
    train.train_model = around(train.train_model, "training")
    train.predict = around(train.predict, "a prediction")
    forward = backbone.Backbone.forward

    @functools.wraps(forward)
    def checked_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        integrity.check("after a forward pass")
        if type(out) is not torch.Tensor:
            integrity.problems.append(f"the backbone's logits are a {type(out).__name__}, not a plain torch.Tensor")
            raise Tampered(integrity.problems[-1])
        return out

    backbone.Backbone.forward = checked_forward
    step = torch.optim.AdamW.step

    @functools.wraps(step)
    def checked_step(self, *args, **kwargs):
        integrity.check("before an optimizer step")
        return step(self, *args, **kwargs)

    torch.optim.AdamW.step = checked_step
    from fitness import genome_module

    describe = genome_module.describe_exception

    @functools.wraps(describe)
    def trusted_describe(exc):
        with trusted():
            return describe(exc)

    genome_module.describe_exception = trusted_describe
    integrity = Integrity(ops)
    return integrity


def _no_threads(*args, **kwargs):
    raise PermissionError("sandbox denied thread creation: a genome may not start threads")


# ------------------------------------------------------------------------------------ launcher


def launch() -> None:
    """The launcher: containment layers, fork the worker, wait, exit with its status. Its spec is
    the JSON in EVOARCH_LAUNCH; stdin/stdout/stderr are the worker's job, result and log."""
    from fitness import containment
    from fitness.forkserver import set_parent_death_signal

    spec = json.loads(os.environ.pop("EVOARCH_LAUNCH"))
    parent = os.environ.pop("EVOARCH_PARENT_PID", "")
    set_parent_death_signal()
    if parent and os.getppid() != int(parent):  # the engine died before the line above
        os._exit(70)
    layers = containment.enter(spec)
    launcher = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            set_parent_death_signal()
            if os.getppid() not in (launcher, 0):  # 0: the parent is outside this PID namespace
                os._exit(70)
            serve(spec, layers)
        except BaseException as e:  # noqa: BLE001 - the harness failed before or outside the genome
            os.write(2, f"worker failed: {type(e).__name__}: {e}\n".encode())
        os._exit(71)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # die the way the worker died, so the engine sees the signal
        import signal

        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


# ------------------------------------------------------------------------------------ worker


def _prepare(job: dict) -> None:
    """Everything the worker needs before its sandbox closes: threads, imports, training data, CUDA."""
    threads = int(job["threads"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import torch.optim  # noqa: F401
    from fitness import checks, genome_module, guard, train  # noqa: F401
    from fitness.settings import StageSettings
    from fitness.tasks import prepare_training

    prepare_training(StageSettings.model_validate(job["stage"]))  # imports every task module of the stage too
    try:  # the one optional module a genome may import: its torch backend loads on first use
        import einops

        einops.rearrange(torch.zeros(1, 2), "a b -> b a")
    except ImportError:
        pass
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # AdamW patches its class's step on first use
    try:
        import pyseccomp  # noqa: F401  - it looks for libseccomp with a subprocess: before seccomp and Landlock
    except Exception:  # noqa: BLE001 - no libseccomp: the seccomp layer reports itself missing
        pass
    if job["device"].startswith("cuda"):  # the driver opens its devices and libraries now, not under Landlock
        torch.cuda.init()
        x = torch.randn(64, 64, device=job["device"])
        (x @ x).sum().item()
        torch.nn.functional.conv1d(x[None], torch.randn(64, 1, 3, device=job["device"]), groups=64).sum().item()
        if job.get("gpu_memory_mb"):
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, job["gpu_memory_mb"] * 2 ** 20 / total))


def serve(spec: dict, layers: dict) -> None:
    """The worker: read the job, close the sandbox, report the layers, then answer the engine."""
    from fitness import protocol

    result_fd = os.dup(1)  # the channel to the engine
    os.dup2(2, 1)  # print() now lands in the capped log
    sys.stdout.reconfigure(line_buffering=True)
    job, _ = protocol.read_frame(0)
    _prepare(job)
    import _thread
    import signal
    import threading

    from fitness import containment, guard

    containment.isolate(spec, job["device"], layers)
    if job.get("probe"):  # the self-test tries the OS layers alone: no in-process lint may answer for them
        protocol.write_frame(result_fd, {"op": "armed", "layers": layers})
        message, _ = protocol.read_frame(0)
        results = containment.probe(spec, message["canary"]) if message.get("op") == "probe" else {}
        protocol.write_frame(result_fd, {"op": "probed", "results": results})
        os._exit(0)
    blocked = {signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGUSR1, signal.SIGUSR2,
               signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    _thread.start_new_thread = _thread.start_new = threading._start_new_thread = _no_threads
    hook = guard.install(spec["scratch"])
    integrity = _install_checkpoints(hook.trusted)
    protocol.write_frame(result_fd, {"op": "armed", "layers": layers})
    Session(job, spec, integrity, result_fd).run()


class Session:
    """The worker's side of the conversation, after the sandbox is armed."""

    def __init__(self, job: dict, spec: dict, integrity: Integrity, out: int):
        from fitness.settings import CheckSettings, StageSettings

        self.job, self.spec, self.integrity, self.out = job, spec, integrity, out
        self.stage = StageSettings.model_validate(job["stage"])
        self.checks = CheckSettings.model_validate(job["checks"])
        self.device = job["device"]
        self.module = None
        self.model = None

    def run(self) -> None:
        """Answer the engine until `bye`. Everything called after genome code has run is bound
        here, before any has: a genome that replaces a method or function later changes
        nothing this loop calls, and the harness is verified before every reply."""
        from fitness import protocol

        read, write, verify = protocol.read_frame, protocol.write_frame, self.integrity.verify
        handlers = {"train": self.train, "predict": self.predict, "time": self.time}
        error, failure, problems, out, exit_ = self._error, self._failure, self.integrity.problems, self.out, os._exit
        while True:
            message, arrays = read(0)
            op = message.get("op")
            if op == "bye":
                exit_(0)
            try:
                reply, out_arrays = handlers[op](message, arrays)
            except Tampered as e:
                reply, out_arrays = error("rejected", f"tampering with the evaluation harness: {e}"), None
            except BaseException as e:  # noqa: BLE001 - everything a genome raises is its failure
                reply, out_arrays = failure(e), None
            verify("before a reply")
            if problems and reply.get("op") != "error":
                reply, out_arrays = error("rejected", "tampering with the evaluation harness: " + "; ".join(problems[:3])), None
            write(out, reply, out_arrays)

    def _error(self, status: str, reason: str, **reported) -> dict:
        return {"op": "error", "status": status, "reason": reason, "reported": reported}

    def _failure(self, e: BaseException) -> dict:
        from fitness.checks import CheckFailed
        from fitness.genome_module import describe_exception, is_out_of_memory
        from fitness.train import NonFiniteLoss

        if isinstance(e, CheckFailed):
            return self._error("rejected", f"check failed: {e}")
        if isinstance(e, NonFiniteLoss):
            return self._error("failed", f"training diverged: {e}")
        if is_out_of_memory(e):
            limit = self.spec.get("address_space_mb")
            what = f"memory limit {limit} MB exceeded" if limit else "out of memory"
            return self._error("killed", f"{what}: {describe_exception(e)}")
        return self._error("failed", f"error: {describe_exception(e)}")

    def train(self, message: dict, arrays: dict) -> tuple[dict, None]:
        from fitness import checks, train
        from fitness.genome_module import load_genome

        reported = {}
        if self.module is None:
            self.module = load_genome(self.job["code"])
            reported.update(checks.run_checks(self._make_mixer, self.stage.d_model, self.stage.seq_len, self.checks,
                                              int(self.job["seed"]), self.device))
        stage = self.stage.model_copy(update={"task": message["task"], "tasks": None})
        self.model, metrics = train.train_model(self._make_mixer, stage, int(self.job["seed"]), self.device)
        return {"op": "trained", "reported": {**reported, **metrics}}, None

    def _make_mixer(self):
        return self.module.Mixer(self.stage.d_model, self.stage.n_heads)

    def predict(self, message: dict, arrays: dict) -> tuple[dict, dict]:
        import torch

        from fitness import train

        inputs = torch.from_numpy(arrays["inputs"].astype("int64"))
        request = torch.from_numpy(arrays["request"].astype(bool))
        candidates = torch.from_numpy(arrays["candidates"].astype("int64")) if "candidates" in arrays else None
        logp, argmax = train.predict(self.model, inputs, request, candidates, self.device)
        return {"op": "predictions"}, {"logp": logp.numpy(), "argmax": argmax.numpy()}

    def time(self, message: dict, arrays: dict) -> tuple[dict, None]:
        import torch

        from fitness.checks import saved_activation_bytes

        mixer = self.model.blocks[0].mixer
        x = torch.randn(1, int(message["length"]), self.stage.d_model, device=self.device)
        reply = {"op": "timed"}
        if message.get("memory"):
            reply["activation_bytes"] = saved_activation_bytes(mixer, x)
        with torch.no_grad():
            mixer(x)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return reply, None


if __name__ == "__main__":
    launch()
