"""The trainer process: the trusted side of an evaluation, and the only process that sees tokens.

It runs `fitness.train.Trainer` (backbone, training data, optimizer, every Mixer parameter) and
answers the engine; it never runs genome code. The genome runs in sandboxed workers
(fitness.worker) that serve its Mixer: given the parameters and a layer's input activations they
return the Mixer's output; given the gradient of that output, the gradients of the input and of
the parameters. So a genome sees only what a Mixer sees and changes only what a Mixer changes,
its layer's output: never a token id, a label, the training seed, the engine or this process.

Two workers: replica 0 trains the Mixers and answers the scored test rows; replica 1, a separate
sandbox that never saw them, gets the trained parameters and answers copies and causality twins
of some of those rows (fitness.testset) and the complexity probe. A Mixer whose output depends on
anything but its input and its parameters (a look-ahead, a memory of other rows, state trained
on the side) answers differently in the two.

Engine conversation (fitness.protocol frames on stdin/stdout): `job` -> `armed` {each worker's
containment report, sent before any genome code ran}; `train` {task} -> `trained` {metrics,
reported} or `error`; `predict` {replica} + arrays -> `predictions` or `error`; `probe`
{length, rows} -> `probed` {seconds} or `error`; `bye`. Worker i is on descriptors 3 + 2i (to
it) and 4 + 2i (from it), or the numbers in EVOARCH_PEER_FDS.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from fitness import protocol
from fitness.checks import CheckFailed, param_budget
from fitness.settings import CheckSettings, StageSettings
from fitness.train import NonFiniteLoss, Trainer

REPORTED = ("params_mixer_layer",)  # what a worker may report about itself (its structural checks)


class GenomeError(Exception):
    """The evaluation ends here: the worker reported an error, broke the protocol or is gone."""

    def __init__(self, status: str, reason: str, reported: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.reported = status, reason, reported or {}


class TooLarge(GenomeError):
    """The worker's reply is larger than the message may be (`size` bytes of arrays)."""

    def __init__(self, size: int, reason: str):
        super().__init__("failed", reason)
        self.size = size


def _reported(values: object) -> dict:
    out = {}
    for k in REPORTED:
        try:
            out[k] = protocol.number(values.get(k) if isinstance(values, dict) else None, 0, 1e12)
        except protocol.ProtocolError:
            pass
    return out


class Peer:
    """A sandboxed worker seen from the trainer: frames over two pipes, everything it sends checked."""

    def __init__(self, replica: int, to_fd: int, from_fd: int):
        self.replica, self.to_fd, self.from_fd = replica, to_fd, from_fd

    def send(self, message: dict, arrays: dict | None = None) -> None:
        try:
            protocol.write_frame(self.to_fd, message, arrays)
        except BrokenPipeError:
            raise GenomeError("failed", f"the Mixer's worker (replica {self.replica}) is gone",
                              {"worker_gone": self.replica}) from None

    def receive(self, expect: str, max_payload: int = 0) -> tuple[dict, dict]:
        """The worker's next frame, at most `max_payload` bytes of arrays; GenomeError for an error
        reply, a broken protocol or a worker that ended."""
        try:
            header = protocol.read_exactly(self.from_fd, protocol.HEADER.size)
            n_json, n_payload = protocol.frame_sizes(header, protocol.MAX_JSON_BYTES, max_payload)
            reply, got = protocol.decode(header, protocol.read_exactly(self.from_fd, n_json),
                                         protocol.read_exactly(self.from_fd, n_payload))
        except EOFError:
            raise GenomeError("failed", f"the Mixer's worker (replica {self.replica}) ended without answering",
                              {"worker_gone": self.replica}) from None
        except protocol.PayloadTooLarge as e:
            raise TooLarge(e.size, f"the Mixer's worker broke the protocol: {e}") from None
        except protocol.ProtocolError as e:
            raise GenomeError("failed", f"the Mixer's worker broke the protocol: {e}") from None
        if reply.get("op") == "error":
            status = reply.get("status") if reply.get("status") in ("rejected", "failed", "killed") else "failed"
            raise GenomeError(status, str(reply.get("reason", ""))[:4000], _reported(reply.get("reported")))
        if reply.get("op") != expect:
            raise GenomeError("failed", f"the Mixer's worker broke the protocol: expected `{expect}`, got "
                                        f"{str(reply.get('op'))[:40]!r}")
        return reply, got

    def call(self, message: dict, arrays: dict | None = None, expect: str = "ok",
             max_payload: int = 0) -> tuple[dict, dict]:
        self.send(message, arrays)
        return self.receive(expect, max_payload)


def _tensor(got: dict, name: str, shape: tuple) -> torch.Tensor:
    """A float32 array the worker sent, checked for exactly this shape and for finite values."""
    a = got.get(name)
    if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(np.float32).newbyteorder("<"):
        got_shape = None if a is None else f"{a.shape} {a.dtype}"
        raise GenomeError("failed", f"the Mixer's worker sent {name} as {got_shape}, expected {tuple(shape)} float32")
    if not np.isfinite(a).all():
        raise GenomeError("failed", f"the Mixer produced NaN or infinite values ({name})")
    return torch.from_numpy(np.array(a))


class RemoteMixers:
    """The Mixers in sandboxed workers: the transport `fitness.train.Trainer` uses in an evaluation."""

    def __init__(self, peers: list[Peer], stage: StageSettings, checks: CheckSettings, device: str):
        self.peers, self.stage, self.checks, self.device = peers, stage, checks, device
        self.shapes: dict[int, list[tuple]] = {}

    def check(self, seed: int) -> dict:
        reply, _ = self.peers[0].call({"op": "check", "seed": seed}, expect="checked")
        return _reported(reply.get("reported"))

    def _build(self, replica: int, layer: int, seed: int) -> list[torch.Tensor]:
        budget = param_budget(self.stage.d_model, self.checks)
        try:
            reply, got = self.peers[replica].call({"op": "build", "layer": layer, "seed": seed}, expect="built",
                                                  max_payload=4 * budget + 64 * 1024)
        except TooLarge as e:  # parameters are float32: the reply's size alone puts them over the budget
            raise CheckFailed(f"parameter budget exceeded: about {e.size // 4:,} parameters > {budget:,} "
                              f"allowed at d_model={self.stage.d_model}") from None
        shapes = reply.get("shapes")
        if not (isinstance(shapes, list) and len(shapes) <= 4096 and all(
                isinstance(s, list) and len(s) <= 8 and all(type(d) is int and 0 <= d < 2 ** 31 for d in s)
                for s in shapes)):
            raise GenomeError("failed", "the Mixer's worker sent a bad parameter list")
        return [_tensor(got, f"p{i}", tuple(s)) for i, s in enumerate(shapes)]

    def build(self, layer: int, seed: int) -> list[torch.Tensor]:
        params = self._build(0, layer, seed)
        self.shapes[layer] = [tuple(p.shape) for p in params]
        if len(self.peers) > 1:  # the check replica builds its own, which must take the same parameters
            theirs = [tuple(p.shape) for p in self._build(1, layer, seed)]
            if theirs != self.shapes[layer]:
                raise GenomeError("rejected", f"not reproducible: a second process built the Mixer with parameters "
                                              f"{theirs[:6]}, the first with {self.shapes[layer][:6]}")
        return [p.to(self.device) for p in params]

    def start(self, seed: int) -> None:
        for peer in self.peers:
            peer.call({"op": "start", "seed": seed})

    def mode(self, replica: int, train: bool) -> None:
        self.peers[replica].call({"op": "mode", "train": train})

    def forward(self, replica: int, layer: int, x: torch.Tensor, grad: bool, params) -> torch.Tensor:
        arrays = {"x": x.cpu().numpy()}
        if params is not None:
            arrays.update({f"p{i}": p.cpu().numpy() for i, p in enumerate(params)})
        _, got = self.peers[replica].call({"op": "fwd", "layer": layer, "grad": grad, "params": params is not None},
                                          arrays, "y", x.numel() * 4 + 64)
        return _tensor(got, "y", tuple(x.shape)).to(self.device)

    def backward(self, layer: int, dy: torch.Tensor):
        shapes = self.shapes[layer]
        size = dy.numel() * 4 + sum(4 * int(np.prod(s)) for s in shapes) + 4096
        _, got = self.peers[0].call({"op": "bwd", "layer": layer}, {"dy": dy.cpu().numpy()}, "grads", size)
        grads = [_tensor(got, f"g{i}", s).to(self.device) if f"g{i}" in got else None for i, s in enumerate(shapes)]
        return _tensor(got, "dx", tuple(dy.shape)).to(self.device), grads


def serve(trainer: Trainer, peers: list[Peer]) -> None:
    """Answer the engine until `bye`."""
    while True:
        message, arrays = protocol.read_frame(0)
        op = message.get("op")
        if op == "bye":
            for peer in peers:
                try:
                    protocol.write_frame(peer.to_fd, {"op": "bye"})
                except OSError:
                    pass
            os._exit(0)
        try:
            if op == "train":
                metrics = trainer.train(message["task"])
                protocol.write_frame(1, {"op": "trained", "metrics": metrics, "reported": trainer.reported})
            elif op == "predict":
                replica = int(message.get("replica", 0))
                if not 0 <= replica < len(peers):
                    raise ValueError(f"no worker for replica {replica}")
                logp, argmax = trainer.predict(replica, arrays["inputs"], arrays["request"], arrays.get("candidates"))
                protocol.write_frame(1, {"op": "predictions"}, {"logp": logp, "argmax": argmax})
            elif op == "probe":
                seconds = trainer.probe(len(peers) - 1, int(message["length"]), int(message["rows"]))
                protocol.write_frame(1, {"op": "probed", "seconds": seconds})
            else:
                raise ValueError(f"unknown op {op!r}")
        except GenomeError as e:
            protocol.write_frame(1, {"op": "error", "status": e.status, "reason": e.reason, "reported": e.reported})
        except CheckFailed as e:
            protocol.write_frame(1, {"op": "error", "status": "rejected", "reason": f"check failed: {e}"})
        except NonFiniteLoss as e:
            protocol.write_frame(1, {"op": "error", "status": "failed", "reason": f"training diverged: {e}"})
        except (MemoryError, torch.OutOfMemoryError) as e:
            protocol.write_frame(1, {"op": "error", "status": "killed", "reason": f"out of memory: {e}"})


def main() -> None:
    """The trainer process: descriptors 0/1 to the engine, 2 its log, then (to, from) per worker; it
    joins the evaluation's cgroup (EVOARCH_JOIN) and dies with its parent."""
    from fitness.cgroup import join
    from fitness.forkserver import set_parent_death_signal

    set_parent_death_signal()
    parent = os.environ.pop("EVOARCH_PARENT_PID", "")
    if parent and os.getppid() != int(parent):  # the engine died before the line above
        os._exit(70)
    join(json.loads(os.environ.pop("EVOARCH_JOIN", "[]")))
    n = int(os.environ.pop("EVOARCH_WORKERS"))
    fds = [int(f) for f in os.environ.pop("EVOARCH_PEER_FDS", "").split(",") if f] or list(range(3, 3 + 2 * n))
    peers = [Peer(i, fds[2 * i], fds[2 * i + 1]) for i in range(n)]
    job, _ = protocol.read_frame(0)
    torch.set_num_threads(int(job["threads"]))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    from fitness.tasks import prepare_training

    stage, checks = StageSettings.model_validate(job["stage"]), CheckSettings.model_validate(job["checks"])
    prepare_training(stage)
    worker_job = {k: job[k] for k in ("code", "checks", "device", "threads", "gpu_memory_mb")}
    worker_job.update(d_model=stage.d_model, n_heads=stage.n_heads, seq_len=stage.seq_len)
    layers = []
    for peer in peers:
        try:
            armed, _ = peer.call({"op": "job", **worker_job, "replica": peer.replica}, expect="armed")
            layers.append(armed.get("layers") if isinstance(armed.get("layers"), dict) else {})
        except GenomeError as e:
            layers.append({"worker": {"active": False, "detail": e.reason[:300]}})
    protocol.write_frame(1, {"op": "armed", "layers": layers})
    mixers = RemoteMixers(peers, stage, checks, job["device"])
    serve(Trainer(stage, checks, job["device"], job["seeds"], mixers), peers)


if __name__ == "__main__":
    main()
