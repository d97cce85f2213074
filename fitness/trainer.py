"""The trainer: the trusted process of an evaluation, and the only one that sees tokens.

It owns the backbone (embedding, norms, short convolutions, MLPs, tied head), the training data,
the optimizer and every Mixer *parameter*, and it answers the engine (test inputs in,
predictions out). It never runs genome code. The genome runs in sandboxed workers
(fitness.worker) that serve the Mixer: given the parameters and a layer's input activations
they return the Mixer's output; given the gradient of that output, the gradients of the input
and of the parameters. So a genome sees only what a Mixer sees and changes only what a Mixer
changes, its layer's output: never a token id, a label or the engine. Its parameters are
counted, limited and trained here, by the stage's AdamW and schedule.

Two workers: replica 0 trains the Mixers and answers the scored test rows; replica 1, a separate
sandbox that never saw those rows, gets the trained parameters and answers the causality twins
(fitness.testset). A Mixer whose output depends on anything but its input and parameters (a
look-ahead, a memory of other rows, state trained on the side) answers differently in the two.

Initialisation and training are bit for bit those of one process running `Backbone` with the
Mixer inside: the worker builds each layer's Mixer from the torch RNG state this process hands
it and hands back the state after, and the parameters are trained in their places in the
backbone's parameter order by one AdamW and one gradient clipping.

Engine conversation (fitness.protocol frames on stdin/stdout): `job` -> `armed` {each worker's
containment report, sent before any genome code ran}; `train` {task} -> `trained` {metrics} or
`error`; `predict` {replica} + arrays -> `predictions` or `error`; `time` {length, rows,
memory} -> `timed` {seconds, activation_bytes} or `error`; `bye`. Worker i is on descriptors
3 + 2i (to it) and 4 + 2i (from it).
"""
from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn

from fitness import protocol
from fitness.backbone import Backbone, registered_parameters
from fitness.checks import param_budget
from fitness.settings import CheckSettings, StageSettings
from fitness.train import NonFiniteLoss, lr_at

_RNG_BYTES = 1 << 16  # room for a torch RNG state (the CPU generator's is 5,056 bytes)
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


def _tensor(got: dict, name: str, shape: tuple, dtype=np.float32) -> torch.Tensor:
    """An array the worker sent, checked for exactly this shape and dtype and for finite values."""
    a = got.get(name)
    if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype).newbyteorder("<"):
        got_shape = None if a is None else f"{a.shape} {a.dtype}"
        raise GenomeError("failed", f"the Mixer's worker sent {name} as {got_shape}, expected {tuple(shape)} "
                                    f"{np.dtype(dtype).name}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise GenomeError("failed", f"the Mixer produced NaN or infinite values ({name})")
    return torch.from_numpy(np.array(a))


class Slot(nn.Module):
    """Where the Mixer sits in the Backbone: its parameters, registered in their place, trained here."""

    def __init__(self, params: list[nn.Parameter]):
        super().__init__()
        for i, p in enumerate(params):
            self.register_parameter(f"p{i}", p)


class Trainer:
    """One evaluation's backbone, data and optimizer; the Mixers through the workers."""

    def __init__(self, job: dict, peers: list[Peer]):
        self.stage = StageSettings.model_validate(job["stage"])
        self.checks = CheckSettings.model_validate(job["checks"])
        self.device, self.seed, self.peers = job["device"], int(job["seed"]), peers
        self.model: Backbone | None = None
        self.slots: list[Slot] = []
        self.version = 0  # bumped whenever the parameters change
        self.holds: dict[tuple[int, int], int] = {}  # (replica, layer) -> parameter version it holds
        self.modes: dict[int, bool] = {}  # replica -> train mode
        self.checked = False
        self.reported: dict = {}

    # ---- building -------------------------------------------------------------------------------

    def _build_mixer(self, layer: int, replica: int = 0) -> Slot:
        """Where Backbone.__init__ builds the Mixer: the worker builds it from this RNG state and
        sends its parameters and the RNG state after; they are counted against the budget here."""
        state = torch.get_rng_state().numpy()
        budget = param_budget(self.stage.d_model, self.checks)
        try:
            reply, got = self.peers[replica].call({"op": "build", "layer": layer}, {"rng": state}, "built",
                                                  _RNG_BYTES + 4 * budget + 64 * 1024)
        except TooLarge as e:  # parameters are float32: the reply alone says they are over the budget
            raise GenomeError("rejected", f"check failed: parameter budget exceeded: about {e.size // 4:,} "
                                          f"parameters > {budget:,} allowed at d_model={self.stage.d_model}") from None
        shapes = reply.get("shapes")
        if not (isinstance(shapes, list) and len(shapes) <= 4096 and all(
                isinstance(s, list) and all(type(d) is int and 0 <= d < 2 ** 31 for d in s) for s in shapes)):
            raise GenomeError("failed", "the Mixer's worker sent a bad parameter list")
        params = [nn.Parameter(_tensor(got, f"p{i}", tuple(s))) for i, s in enumerate(shapes)]
        count = sum(p.numel() for p in params)
        if count > budget:
            raise GenomeError("rejected", f"check failed: parameter budget exceeded: {count:,} parameters > "
                                          f"{budget:,} allowed at d_model={self.stage.d_model}")
        torch.set_rng_state(_tensor(got, "rng", state.shape, np.uint8))
        return Slot(params)

    def build(self, task_name: str) -> None:
        """A fresh backbone for `task_name`; the worker builds fresh Mixers."""
        from fitness.tasks import make_task

        random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.stage_task = self.stage.model_copy(update={"task": task_name, "tasks": None})
        self.task = make_task(self.stage_task)
        layers = iter(range(self.stage.n_layers))
        self.model = Backbone(lambda: self._build_mixer(next(layers)), self.task.vocab_size, self.stage.d_model,
                              self.stage.n_layers, self.stage.conv_kernel, self.stage.mlp).to(self.device)
        self.slots = [block.mixer for block in self.model.blocks]
        self.peers[0].call({"op": "rng"}, {"rng": torch.get_rng_state().numpy()})  # dropout goes on from here
        self.version += 1

    def adopt(self) -> None:
        """The check replica builds its own Mixers; they must have the trained ones' parameter shapes."""
        for layer, slot in enumerate(self.slots):
            built = self._build_mixer(layer, replica=1)
            mine = [tuple(p.shape) for p in slot.parameters()]
            theirs = [tuple(p.shape) for p in built.parameters()]
            if mine != theirs:
                raise GenomeError("rejected", f"not reproducible: a second process built the Mixer with parameters "
                                              f"{theirs[:6]}, the first with {mine[:6]}")

    # ---- the Mixer, remotely --------------------------------------------------------------------

    def mixer_forward(self, replica: int, layer: int, x: torch.Tensor, grad: bool) -> torch.Tensor:
        """Layer `layer`'s Mixer applied to x by worker `replica` (parameters sent when they changed)."""
        arrays = {"x": x.detach().cpu().numpy()}
        fresh = self.holds.get((replica, layer)) != self.version
        if fresh:
            arrays.update({f"p{i}": p.detach().cpu().numpy() for i, p in enumerate(self.slots[layer].parameters())})
        _, got = self.peers[replica].call({"op": "fwd", "layer": layer, "grad": grad, "params": fresh}, arrays,
                                          "y", x.numel() * 4 + 64)
        self.holds[(replica, layer)] = self.version
        return _tensor(got, "y", tuple(x.shape)).to(self.device)

    def mixer_backward(self, layer: int, dy: torch.Tensor) -> torch.Tensor:
        """Gradient of the input of `layer`'s Mixer (worker 0, its last forward); the parameters'
        gradients are added to theirs here."""
        params = list(self.slots[layer].parameters())
        size = dy.numel() * 4 + sum(p.numel() * 4 for p in params) + 4096
        _, got = self.peers[0].call({"op": "bwd", "layer": layer}, {"dy": dy.detach().cpu().numpy()}, "grads", size)
        for i, p in enumerate(params):
            if f"g{i}" in got:
                g = _tensor(got, f"g{i}", tuple(p.shape)).to(self.device)
                p.grad = g if p.grad is None else p.grad + g
        return _tensor(got, "dx", tuple(dy.shape)).to(self.device)

    def set_mode(self, replica: int, train: bool) -> None:
        if self.modes.get(replica) != train:
            self.peers[replica].call({"op": "mode", "train": train})
            self.modes[replica] = train

    # ---- forward and backward with the Mixers remote ----------------------------------------------

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, replica: int, grad: bool):
        """Logits at the masked positions; with grad also the pieces the backward walks down."""
        x0 = self.model.embed(inputs)
        x = x0.detach().requires_grad_(grad)
        segments = []
        for layer, block in enumerate(self.model.blocks):
            c = block.conv(block.norm(x))
            y = self.mixer_forward(replica, layer, c, grad).requires_grad_(grad)
            z = x + y
            if block.mlp is not None:
                z = z + block.mlp(z)
            segments.append((x, c, y, z))
            x = z.detach().requires_grad_(grad)
        logits = nn.functional.linear(self.model.norm(x[mask]), self.model.embed.weight)
        return logits, (x0, x, segments)

    def backward(self, loss: torch.Tensor, pieces) -> None:
        """Backpropagate layer by layer, through the worker at each Mixer."""
        x0, top, segments = pieces
        loss.backward()
        g = top.grad
        for layer in reversed(range(len(segments))):
            x, c, y, z = segments[layer]
            z.backward(g)
            c.backward(self.mixer_backward(layer, y.grad))
            g = x.grad
        x0.backward(g)

    # ---- what the engine asks ---------------------------------------------------------------------

    def train(self, task_name: str) -> dict:
        """Build and train for the stage's steps on `task_name`; the training metrics."""
        if not self.checked:  # the structural checks, in the worker, before any training
            reply, _ = self.peers[0].call({"op": "check"}, expect="checked")
            self.reported = _reported(reply.get("reported"))
            self.checked = True
        self.build(task_name)
        stage = self.stage_task
        params = registered_parameters(self.model)
        opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        train_gen = torch.Generator().manual_seed(self.seed)
        self.model.train()
        self.set_mode(0, True)
        losses: list[float] = []
        t0 = time.perf_counter()
        for step in range(stage.steps):
            batch = self.task.make_batch(train_gen, stage.batch_size)
            inputs, mask = batch.inputs.to(self.device), batch.mask.to(self.device)
            targets = batch.targets.to(self.device)[mask]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, stage)
            logits, pieces = self.forward(inputs, mask, 0, grad=True)
            loss = loss_fn(logits, targets)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"training loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            self.backward(loss, pieces)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            self.version += 1
            losses.append(loss.item())
        train_s = time.perf_counter() - t0
        if len(self.peers) > 1:
            self.adopt()
        tail = losses[-max(1, len(losses) // 10):]
        layer_params = sum(p.numel() for p in self.slots[0].parameters())
        return {"train_loss": sum(tail) / len(tail), "params_total": sum(p.numel() for p in params),
                "params_mixer": layer_params * len(self.slots), "params_mixer_layer": layer_params,
                "train_s": train_s, "steps_per_s": stage.steps / train_s if train_s > 0 else 0.0}

    @torch.no_grad()
    def predict(self, replica: int, inputs: np.ndarray, request: np.ndarray,
                candidates: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Log-probabilities of the candidates (all tokens when None) and the argmax over the whole
        vocabulary, per requested position, as float32 (N, K) and int32 (N,)."""
        if not 0 <= replica < len(self.peers):
            raise ValueError(f"no worker for replica {replica}")
        self.model.eval()
        self.set_mode(replica, False)
        mask = torch.from_numpy(request.astype(bool)).to(self.device)
        logits, _ = self.forward(torch.from_numpy(inputs.astype(np.int64)).to(self.device), mask, replica, grad=False)
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        argmax = logits.argmax(dim=-1).to(torch.int32)
        if candidates is not None:
            logp = logp.gather(1, torch.from_numpy(candidates.astype(np.int64)).to(self.device))
        return logp.cpu().contiguous().numpy(), argmax.cpu().numpy()

    @torch.no_grad()
    def time_forward(self, length: int, rows: int, memory: bool) -> dict:
        """Seconds replica 0's Mixers take in one forward of `rows` random token rows of `length`,
        timed here around each worker call, and (memory) the activation bytes the worker says layer
        0's Mixer saves for backward at that length."""
        self.set_mode(0, False)
        gen = torch.Generator().manual_seed(length)
        x = self.model.embed(torch.randint(self.task.vocab_size, (rows, length), generator=gen).to(self.device))
        seconds, saved = 0.0, 0
        for layer, block in enumerate(self.model.blocks):
            c = block.conv(block.norm(x))
            if memory and layer == 0:
                reply, _ = self.peers[0].call({"op": "memory", "layer": 0}, {"x": c.cpu().numpy()}, "memory")
                saved = int(protocol.number(reply.get("bytes"), 0, 1e15))
            t0 = time.perf_counter()
            y = self.mixer_forward(0, layer, c, grad=False)
            seconds += time.perf_counter() - t0
            x = x + y
            if block.mlp is not None:
                x = x + block.mlp(x)
        return {"seconds": seconds, "activation_bytes": saved}


def serve(job: dict, peers: list[Peer]) -> None:
    """Answer the engine until `bye`."""
    trainer = Trainer(job, peers)
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
                logp, argmax = trainer.predict(int(message.get("replica", 0)), arrays["inputs"], arrays["request"],
                                               arrays.get("candidates"))
                protocol.write_frame(1, {"op": "predictions"}, {"logp": logp, "argmax": argmax})
            elif op == "time":
                timed = trainer.time_forward(int(message["length"]), int(message["rows"]), bool(message.get("memory")))
                protocol.write_frame(1, {"op": "timed", **timed})
            else:
                raise ValueError(f"unknown op {op!r}")
        except GenomeError as e:
            protocol.write_frame(1, {"op": "error", "status": e.status, "reason": e.reason, "reported": e.reported})
        except protocol.ProtocolError as e:  # a number out of bounds in a worker's reply
            protocol.write_frame(1, {"op": "error", "status": "failed",
                                     "reason": f"the Mixer's worker broke the protocol: {e}"})
        except NonFiniteLoss as e:
            protocol.write_frame(1, {"op": "error", "status": "failed", "reason": f"training diverged: {e}"})
        except (MemoryError, torch.OutOfMemoryError) as e:
            protocol.write_frame(1, {"op": "error", "status": "killed", "reason": f"out of memory: {e}"})


def main() -> None:
    """The trainer: descriptors 0/1 to the engine, 2 its log, then (to, from) per worker: 3, 4, 5, 6
    (or the numbers in EVOARCH_PEER_FDS); it joins the evaluation's cgroup (EVOARCH_JOIN)."""
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

    prepare_training(StageSettings.model_validate(job["stage"]))
    worker_job = {k: job[k] for k in ("code", "checks", "seed", "device", "threads", "gpu_memory_mb")}
    worker_job.update(d_model=job["stage"]["d_model"], n_heads=job["stage"]["n_heads"],
                      seq_len=job["stage"]["seq_len"])
    layers = []
    for peer in peers:
        try:
            armed, _ = peer.call({"op": "job", **worker_job, "replica": peer.replica}, expect="armed")
            layers.append(armed.get("layers") if isinstance(armed.get("layers"), dict) else {})
        except GenomeError as e:
            layers.append({"worker": {"active": False, "detail": e.reason[:300]}})
    protocol.write_frame(1, {"op": "armed", "layers": layers})
    serve(job, peers)


if __name__ == "__main__":
    main()
