"""The sandboxed side of an evaluation: a launcher process and the worker it forks, which serves
the genome's Mixer to the trainer (fitness.trainer) and nothing else.

`launch()` is the launcher (`python -m fitness.worker`, or a child the fork server forks):
trusted code that applies the layers that must exist before the worker does (rlimits, the
evaluation's cgroup, fresh namespaces; fitness.containment), forks the worker, waits for it and
exits with its status. The worker is process 1 of its PID namespace, so when it ends, or the
launcher dies (the worker has PR_SET_PDEATHSIG = SIGKILL), the kernel kills everything inside.

`serve()` is the worker. It reads the job (fitness.protocol frames on stdin from the trainer:
the code, the Mixer's width and heads, the training seed), initialises CUDA if asked, applies its
own layers (private mounts, an unprivileged user, Landlock, seccomp), arms the audit hook (lint
with clear messages) and reports every layer (`armed`) before any genome code exists in the
process. Then it answers the trainer:

- `check` {seed} -> `checked`: the structural checks on a fresh Mixer (fitness.checks), with
  the parameter count they saw (reported: the trainer counts the parameters it trains itself);
- `build` {layer, seed} -> `built` {shapes} + parameters: the layer's Mixer built from the seed
  (layer 0 starts a fresh model);
- `start` {seed}: the seed of the random numbers a Mixer draws in training (dropout);
- `mode` {train}; `fwd` {layer, grad, params} + x (+ parameters when they changed) -> `y`;
  `bwd` {layer} + dy -> `grads` (dx, and the parameters' gradients);
- `bye` -> exit.

The worker never sees a token id, a label, a training seed or the engine: only activations,
gradients, parameters and seeds derived for it. Everything it sends is checked by the trainer.
"""
from __future__ import annotations

import json
import os
import sys

from fitness import protocol

# ------------------------------------------------------------------------------------ launcher


def launch() -> None:
    """The launcher: containment layers, fork the worker, wait, exit with its status. Its spec is
    the JSON in EVOARCH_LAUNCH; descriptors 0/1/2 are the worker's requests, replies and log."""
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
    """What the worker needs before its sandbox closes: threads, imports, CUDA."""
    threads = int(job["threads"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    from fitness import checks, genome_module, guard  # noqa: F401

    try:  # the one optional module a genome may import: its torch backend loads on first use
        import einops

        einops.rearrange(torch.zeros(1, 2), "a b -> b a")
    except ImportError:
        pass
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
    """The worker: read the job, close the sandbox, report the layers, then serve the Mixer."""
    out = os.dup(1)  # the channel to the trainer
    os.dup2(2, 1)  # print() now lands in the capped log
    sys.stdout.reconfigure(line_buffering=True)
    job, _ = protocol.read_frame(0)
    _prepare(job)
    from fitness import containment, guard

    containment.isolate(spec, job["device"], layers)
    if job.get("probe"):  # the self-test tries the OS layers alone: no in-process lint may answer for them
        protocol.write_frame(out, {"op": "armed", "layers": layers})
        message, _ = protocol.read_frame(0)
        results = containment.probe(spec, message["canary"]) if message.get("op") == "probe" else {}
        protocol.write_frame(out, {"op": "probed", "results": results})
        os._exit(0)
    hook = guard.install(spec["scratch"])
    protocol.write_frame(out, {"op": "armed", "layers": layers})
    MixerServer(job, hook, out).run()


class MixerServer:
    """The worker's side of the conversation with the trainer, after the sandbox is armed."""

    def __init__(self, job: dict, hook, out: int):
        import torch

        from fitness.settings import CheckSettings

        self.torch, self.job, self.hook, self.out = torch, job, hook, out
        self.checks = CheckSettings.model_validate(job["checks"])
        self.device = job["device"]
        self.module = None
        self.mixers: dict[int, object] = {}
        self.graphs: dict[int, tuple] = {}  # layer -> (input, output, parameters) of its last forward with grad

    def run(self) -> None:
        """Answer until `bye`: every reply is written by this loop, bound before any genome code ran."""
        read, write, out, exit_ = protocol.read_frame, protocol.write_frame, self.out, os._exit
        handlers = {"check": self.check, "build": self.build, "start": self.start, "mode": self.mode,
                    "fwd": self.fwd, "bwd": self.bwd}
        failure = self._failure
        while True:
            message, arrays = read(0)
            op = message.get("op")
            if op == "bye" or op not in handlers:
                exit_(0)
            try:
                reply, out_arrays = handlers[op](message, arrays)
            except BaseException as e:  # noqa: BLE001 - everything a genome raises is its failure
                reply, out_arrays = failure(e), None
            write(out, reply, out_arrays)

    def _failure(self, e: BaseException) -> dict:
        from fitness.checks import CheckFailed
        from fitness.genome_module import describe_exception, is_out_of_memory

        with self.hook.trusted():
            text = describe_exception(e)
        if isinstance(e, CheckFailed):
            return {"op": "error", "status": "rejected", "reason": f"check failed: {e}"}
        if is_out_of_memory(e):
            return {"op": "error", "status": "killed", "reason": f"out of memory: {text}"}
        return {"op": "error", "status": "failed", "reason": f"error: {text}"}

    def _genome(self):
        if self.module is None:
            from fitness.genome_module import load_genome

            self.module = load_genome(self.job["code"])
        return self.module

    def _make_mixer(self):
        return self._genome().Mixer(self.job["d_model"], self.job["n_heads"])

    def check(self, message: dict, arrays: dict) -> tuple[dict, None]:
        from fitness.checks import run_checks

        metrics = run_checks(self._make_mixer, self.job["d_model"], self.job["seq_len"], self.checks,
                             int(message["seed"]), self.device)
        return {"op": "checked", "reported": metrics}, None

    def _parameters(self, mixer) -> list:
        from fitness.backbone import registered_parameters

        params = registered_parameters(mixer)
        lazy = [p for p in params if isinstance(p, self.torch.nn.parameter.UninitializedParameter)]
        if lazy:
            raise TypeError("the Mixer has lazy (uninitialized) parameters: give every layer its size in __init__")
        return params

    def build(self, message: dict, arrays: dict) -> tuple[dict, dict]:
        import random

        torch = self.torch
        layer, seed = int(message["layer"]), int(message["seed"])
        if layer == 0:
            self.mixers, self.graphs = {}, {}
            random.seed(seed)
        torch.manual_seed(seed)
        mixer = self._make_mixer()
        if not isinstance(mixer, torch.nn.Module):
            raise TypeError(f"Mixer(d_model, n_heads) must build an nn.Module, got {type(mixer).__name__}")
        self.mixers[layer] = mixer.to(self.device)
        params = self._parameters(mixer)
        out = {f"p{i}": p.detach().float().cpu().numpy() for i, p in enumerate(params)}
        return {"op": "built", "shapes": [list(p.shape) for p in params]}, out

    def start(self, message: dict, arrays: dict) -> tuple[dict, None]:
        self.torch.manual_seed(int(message["seed"]))
        return {"op": "ok"}, None

    def mode(self, message: dict, arrays: dict) -> tuple[dict, None]:
        for mixer in self.mixers.values():
            mixer.train(bool(message["train"]))
        return {"op": "ok"}, None

    def fwd(self, message: dict, arrays: dict) -> tuple[dict, dict]:
        torch = self.torch
        layer = int(message["layer"])
        mixer = self.mixers[layer]
        params = self._parameters(mixer)
        if message.get("params"):
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.copy_(torch.from_numpy(arrays[f"p{i}"].copy()))
        x = torch.from_numpy(arrays["x"].copy()).to(self.device)
        if message.get("grad"):
            x.requires_grad_(True)
            y = mixer(x)
            self.graphs[layer] = (x, y, params)
        else:
            with torch.no_grad():
                y = mixer(x)
        self._check_output(y, x)
        return {"op": "y"}, {"y": y.detach().float().cpu().numpy()}

    def _check_output(self, y, x) -> None:
        from fitness.checks import CheckFailed

        if type(y) is not self.torch.Tensor:
            raise CheckFailed(f"forward must return a plain torch.Tensor, got {type(y).__name__}")
        if y.shape != x.shape or y.dtype != x.dtype:
            raise CheckFailed(f"output {tuple(y.shape)} {y.dtype} != input {tuple(x.shape)} {x.dtype} (batch, seq, d_model)")

    def bwd(self, message: dict, arrays: dict) -> tuple[dict, dict]:
        torch = self.torch
        x, y, params = self.graphs.pop(int(message["layer"]))
        dy = torch.from_numpy(arrays["dy"].copy()).to(self.device)
        grads = torch.autograd.grad(y, [x, *params], grad_outputs=dy, allow_unused=True)
        out = {"dx": (grads[0] if grads[0] is not None else torch.zeros_like(x)).detach().float().cpu().numpy()}
        out.update({f"g{i}": g.detach().float().cpu().numpy() for i, g in enumerate(grads[1:]) if g is not None})
        return {"op": "grads"}, out


if __name__ == "__main__":
    launch()
