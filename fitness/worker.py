"""The child process that evaluates one genome: `python -m fitness.worker`.

Protocol: the parent writes one JSON job on stdin (code, settings, seed, a random nonce);
the worker moves its stdout aside (the genome's prints and tracebacks go to the stderr
log), imports torch and the harness, arms its runtime layers, then loads and evaluates
the genome and writes `<nonce> <result JSON>` on the saved stdout descriptor. A result
without the nonce is treated as forged. The worker ends with os._exit so no genome
finaliser or thread can run after the report.

Runtime layers armed before the genome loads (the static policy is the first layer):

- Landlock (fitness.guard.restrict_filesystem): writes only under the scratch dir, no TCP,
  no signals to processes outside the sandbox; kernel-enforced, C code included.
- The audit hook (fitness.guard.install): files, sockets, processes, frames, ctypes.
- No new threads (`_thread.start_new_thread` is replaced), no `_posixsubprocess.fork_exec`
  (loaded by torch, not audited), and the timer/user signals
  are blocked, so nothing of the genome runs "later" behind the harness's back.
- Harness integrity: the namespaces the scoring depends on (torch, torch.nn.functional,
  torch.Tensor, nn.Module and every torch.nn / torch.optim class, builtins, json, the
  fitness package and its classes, sys.modules entries) are snapshotted after the
  harness is imported and before the genome is; they are compared again before and
  after the checks, after every forward of the backbone, before every optimizer step,
  around the held-out scoring and before the report. Any replaced, added or removed
  entry (monkeypatching torch, the backbone, the task, builtins, ...), a Python signal
  handler, an armed interval timer or a surviving thread turns the result into
  `rejected` with a reason naming what was changed.
"""
from __future__ import annotations

import json
import os
import sys

_MISSING = object()
# Modules that legitimately rebind their own globals at run time (lazy profiler state).
_UNWATCHED = ("fitness.worker", "torch.autograd.profiler")


def _copy(value):
    return dict(value) if type(value) is dict else list(value) if type(value) is list else set(value)


class Tampered(BaseException):
    """The genome changed the harness (raised inside the harness to stop the evaluation)."""


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


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
    out: list[tuple[str, object]] = [(name, mod) for name, mod in sorted(modules.items())]
    classes = {id(torch.Tensor): ("torch.Tensor", torch.Tensor),
               id(nn.Parameter): ("torch.nn.Parameter", nn.Parameter)}
    for name, mod in sorted(modules.items()):
        if not name.startswith(prefixes):
            continue
        for attr, value in list(vars(mod).items()):
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                classes.setdefault(id(value), (f"{name}.{attr}", value))
    out += sorted(classes.values(), key=lambda kv: kv[0])
    return out


class Integrity:
    """A snapshot of the harness's namespaces; verify() names the first difference."""

    def __init__(self) -> None:
        watched = _watched_namespaces()
        self.entries = [(label, vars(obj), dict(vars(obj))) for label, obj in watched]
        self.modules = {label: obj for label, obj in watched if type(obj) is type(os)}
        # registries mutated in place, not rebound: torch's global module/optimizer hooks
        self.registries = []
        for label in ("torch.nn.modules.module", "torch.optim.optimizer"):
            mod = sys.modules.get(label)
            for name, value in sorted(vars(mod).items()) if mod is not None else ():
                if name.startswith("_global_") and isinstance(value, dict):
                    self.registries.append((f"{label}.{name}", value, len(value)))
        # the harness's own mutable globals (fitness.tasks._TASKS, ...): compared by value
        self.containers = [(f"{label}.{name}", value, _copy(value)) for label, ns, _ in self.entries
                           if label.startswith(("fitness", "evo")) and type(ns) is dict
                           for name, value in sorted(ns.items())
                           if type(value) in (dict, list, set) and not name.startswith("__")]
        import torch

        self.mode_stacks = [(name, getattr(torch._C, name)) for name in
                            ("_len_torch_function_stack", "_len_torch_dispatch_stack") if hasattr(torch._C, name)]
        self.problems: list[str] = []

    def verify(self, when: str, _type=type, _len=len, _module=type(os), _missing=_MISSING) -> str | None:
        for label, ns, snap in self.entries:
            if _len(ns) != _len(snap) or any(ns.get(k, _missing) is not v for k, v in snap.items()):
                for k, v in snap.items():
                    now = ns.get(k, _missing)
                    if now is _missing:
                        return self._flag(f"`{label}.{k}` was deleted ({when})")
                    if now is not v:
                        return self._flag(f"`{label}.{k}` was replaced ({when})")
                for k in ns.keys() - snap.keys():
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
        return None

    def check(self, when: str) -> None:
        problem = self.verify(when)
        if problem:
            raise Tampered(problem)

    def _flag(self, what: str) -> str:
        self.problems.append(what)
        return what


def _install_checkpoints(trusted) -> Integrity:
    """Verify the harness at every point where the genome's code has just run; returns the
    Integrity, snapshotted after these wrappers are in place."""
    import functools

    import torch

    from fitness import backbone, checks, train

    evaluate = sys.modules["fitness.evaluate"]  # `fitness.evaluate` the attribute is the function

    def around(fn, when):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            integrity.check(f"before {when}")
            out = fn(*args, **kwargs)
            integrity.check(f"after {when}")
            return out
        return wrapper

    checks.run_checks = around(checks.run_checks, "the structural checks")
    train.train_and_score = around(train.train_and_score, "training")
    train.evaluate_model = around(train.evaluate_model, "the held-out scoring")

    forward = backbone.Backbone.forward

    @functools.wraps(forward)
    def checked_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        integrity.check("after a forward pass")
        if type(out) is not torch.Tensor:  # a tensor subclass could lie to the scoring (argmax, ...)
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

    describe = evaluate.describe_exception

    @functools.wraps(describe)
    def trusted_describe(exc):
        with trusted():
            return describe(exc)

    evaluate.describe_exception = trusted_describe
    integrity = Integrity()
    return integrity


def _no_processes(*args, **kwargs):
    raise PermissionError("sandbox denied process creation: _posixsubprocess.fork_exec")


def _no_threads(*args, **kwargs):
    raise PermissionError("sandbox denied thread creation: a genome may not start threads")


def main() -> None:
    """Run one job from stdin; report on the original stdout; exit. Dies with the process
    that started it (PR_SET_PDEATHSIG), so an evaluation never outlives a killed engine."""
    parent = os.environ.pop("EVOARCH_PARENT_PID", "")
    if parent:  # spawned by the engine (a forked worker got this from its fork server)
        from fitness.forkserver import set_parent_death_signal

        set_parent_death_signal()
        if os.getppid() != int(parent):  # the engine died before the line above
            os._exit(70)
    result_fd = os.dup(1)  # the only channel the parent reads; not inheritable
    os.dup2(2, 1)  # print() now lands in the capped log
    job = json.loads(sys.stdin.buffer.read())
    os.close(0)
    nonce = job.pop("nonce")
    threads = int(job["threads"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import _thread
    import signal
    import threading

    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import torch.optim  # noqa: F401  - import everything the harness needs before arming the guard
    from fitness import checks, guard, train  # noqa: F401
    from fitness.evaluate import evaluate_in_process
    from fitness.tasks import mqar, task_class  # noqa: F401

    try:  # import every task module of the stage and load its data (reads the data cache,
        # which the guard forbids later) before the snapshot
        from fitness.settings import StageSettings
        from fitness.tasks import prepare

        prepare(StageSettings.model_validate(job["stage"]))
    except Exception:  # noqa: BLE001 - reported by the evaluation itself
        pass

    try:  # the one optional module a genome may import: importing it later would run under the guard
        import einops  # noqa: F401
    except ImportError:
        pass
    # AdamW patches its class's step on first use: let it happen before the snapshot.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    blocked = {signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGUSR1, signal.SIGUSR2,
               signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals()}
    _thread.start_new_thread = _thread.start_new = threading._start_new_thread = _no_threads
    import _posixsubprocess  # loaded by torch; its fork_exec raises no audit event (Landlock forbids exec anyway)

    _posixsubprocess.fork_exec = _no_processes
    n_threads = _thread._count()

    sandbox = guard.restrict_filesystem(job["scratch"])
    hook = guard.install(job["scratch"], max_procs=int(job["max_procs"]))
    integrity = _install_checkpoints(hook.trusted)

    result = evaluate_in_process(job["code"], job["stage"], job["checks"], int(job["seed"]),
                                 job["device"], memory_mb=job.get("memory_mb"))

    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # nothing of the genome runs now
    problems = list(integrity.problems)
    changed = [s for s in handlers if signal.getsignal(s) is not handlers[s]]
    if changed:
        problems.append("signal handler installed for " + ", ".join(signal.Signals(s).name for s in changed[:5]))
    if any(signal.getitimer(t) != (0.0, 0.0) for t in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)):
        problems.append("an interval timer (signal.setitimer / alarm) was armed")
    if _thread._count() > n_threads:
        problems.append(f"{_thread._count() - n_threads} thread(s) started by the genome outlived forward")
    final = integrity.verify("before the report")
    if final and final.split(" (")[0] not in [p.split(" (")[0] for p in problems]:
        problems.append(final)
    if problems:
        metrics = dict(result.get("metrics") or {}, genome_reason=result.get("reason", ""))
        result = {"status": "rejected", "score": None, "params": result.get("params"), "metrics": metrics,
                  "reason": "tampering with the evaluation harness: " + "; ".join(problems[:3])}
    if result.get("status") != "ok" and "ermission denied" in result.get("reason", "") and sandbox.startswith("landlock"):
        result["reason"] += " (Landlock: the sandbox may write only in its scratch dir)"
    result.setdefault("metrics", {})["sandbox_kernel"] = sandbox
    _write_all(result_fd, (nonce + " " + json.dumps(result) + "\n").encode())
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
