"""Training and answering with the backbone while the Mixers live elsewhere.

`Trainer` holds the backbone (embedding, norms, short convolutions, MLPs, tied head), the
training data, the optimizer and every Mixer parameter. It reaches the Mixers through a
transport: `RemoteMixers` (fitness.trainer) in the sandboxed evaluation, `LocalMixers` (here) for
trusted code measuring the harness itself (benchmarks, tests). Both give the same numbers for a
Mixer that draws no random numbers in forward. Per layer the trainer computes the Mixer's input
(norm, short convolution), gets the Mixer's output, and goes on; the backward walks down the
layers the same way with the gradient of each Mixer's output. Parameters are counted against
the budget when built, trained by one AdamW over the whole model in Backbone order, clipped
together.

Seeds: `training_seeds(secret, seed, tasks)` derives, from the engine's secret and the public
training seed, the seed of the backbone's initialisation and of each task's training data, so
no Mixer can regenerate the batches it is trained on (and with them the labels); each Mixer is
built from a seed derived from the initialisation seed, which says nothing about the others.
"""
from __future__ import annotations

import math
import random
import time
from typing import Protocol

import numpy as np
import torch
import torch.nn as nn

from fitness.backbone import Backbone, registered_parameters
from fitness.checks import CheckFailed, param_budget
from fitness.secret import derive_seed
from fitness.settings import CheckSettings, StageSettings
from fitness.tasks import make_task


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


def lr_at(step: int, stage: StageSettings) -> float:
    """Linear warm-up to stage.lr, then cosine decay to 10% of it."""
    warm = max(1, int(stage.warmup_frac * stage.steps))
    if step < warm:
        return stage.lr * (step + 1) / warm
    frac = (step - warm) / max(1, stage.steps - warm)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def training_seeds(secret: bytes, seed: int, tasks: list[str]) -> dict:
    """{"init": seed of the backbone's initialisation, "data": {task: seed of its training batches}}."""
    return {"init": derive_seed(secret, "init", seed), "data": {t: derive_seed(secret, "data", t, seed) for t in tasks}}


def derived(seed: int, *parts: object) -> int:
    """A seed for something else, derived from `seed` (it reveals nothing about `seed`)."""
    return derive_seed(seed.to_bytes(8, "big"), *parts)


class Mixers(Protocol):
    """Where the Mixers are: what the trainer needs of them."""

    def check(self, seed: int) -> dict: ...

    def build(self, layer: int, seed: int) -> list[torch.Tensor]: ...

    def start(self, seed: int) -> None: ...

    def mode(self, replica: int, train: bool) -> None: ...

    def forward(self, replica: int, layer: int, x: torch.Tensor, grad: bool,
                params: list[torch.Tensor] | None) -> torch.Tensor: ...

    def backward(self, layer: int, dy: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]: ...


class Slot(nn.Module):
    """Where the Mixer sits in the Backbone: its parameters, registered in their place, trained here."""

    def __init__(self, params: list[torch.Tensor]):
        super().__init__()
        for i, p in enumerate(params):
            self.register_parameter(f"p{i}", nn.Parameter(p))


class Trainer:
    """One evaluation's backbone, data and optimizer; the Mixers through a transport."""

    def __init__(self, stage: StageSettings, checks: CheckSettings, device: str, seeds: dict, mixers: Mixers):
        self.stage, self.checks, self.device, self.seeds, self.mixers = stage, checks, device, seeds, mixers
        self.model: Backbone | None = None
        self.slots: list[Slot] = []
        self.version = 0  # bumped whenever the parameters change
        self.holds: dict[tuple[int, int], int] = {}  # (replica, layer) -> parameter version it holds
        self.modes: dict[int, bool] = {}  # replica -> train mode
        self.reported: dict | None = None  # what the structural checks reported (once)

    # ---- building -------------------------------------------------------------------------------

    def _build_mixer(self, layer: int) -> Slot:
        params = self.mixers.build(layer, derived(self.seeds["init"], "mixer", layer))
        count, budget = sum(p.numel() for p in params), param_budget(self.stage.d_model, self.checks)
        if count > budget:
            raise CheckFailed(f"parameter budget exceeded: {count:,} parameters > {budget:,} allowed at "
                              f"d_model={self.stage.d_model}")
        return Slot(params)

    def build(self, task_name: str) -> None:
        """A fresh backbone for `task_name` and fresh Mixers."""
        if self.reported is None:  # the structural checks, on a Mixer of their own, before any training
            self.reported = self.mixers.check(derived(self.seeds["init"], "checks"))
        random.seed(self.seeds["init"])
        torch.manual_seed(self.seeds["init"])
        self.stage_task = self.stage.model_copy(update={"task": task_name, "tasks": None})
        self.task = make_task(self.stage_task)
        layers = iter(range(self.stage.n_layers))
        self.model = Backbone(lambda: self._build_mixer(next(layers)), self.task.vocab_size, self.stage.d_model,
                              self.stage.n_layers, self.stage.conv_kernel, self.stage.mlp).to(self.device)
        self.slots = [block.mixer for block in self.model.blocks]
        self.mixers.start(derived(self.seeds["init"], "dropout"))
        self.version += 1
        self.holds.clear()

    # ---- the Mixers -------------------------------------------------------------------------------

    def _mixer(self, replica: int, layer: int, x: torch.Tensor, grad: bool) -> torch.Tensor:
        fresh = self.holds.get((replica, layer)) != self.version
        params = [p.detach() for p in self.slots[layer].parameters()] if fresh else None
        y = self.mixers.forward(replica, layer, x.detach(), grad, params)
        self.holds[(replica, layer)] = self.version
        return y

    def _mixer_backward(self, layer: int, dy: torch.Tensor) -> torch.Tensor:
        dx, grads = self.mixers.backward(layer, dy.detach())
        for p, g in zip(self.slots[layer].parameters(), grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        return dx

    def _mode(self, replica: int, train: bool) -> None:
        if self.modes.get(replica) != train:
            self.mixers.mode(replica, train)
            self.modes[replica] = train

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, replica: int, grad: bool):
        """Logits at the masked positions; with grad also the pieces the backward walks down."""
        x0 = self.model.embed(inputs)
        x = x0.detach().requires_grad_(grad)
        segments = []
        for layer, block in enumerate(self.model.blocks):
            c = block.conv(block.norm(x))
            y = self._mixer(replica, layer, c, grad).requires_grad_(grad)
            z = x + y
            if block.mlp is not None:
                z = z + block.mlp(z)
            segments.append((x, c, y, z))
            x = z.detach().requires_grad_(grad)
        logits = nn.functional.linear(self.model.norm(x[mask]), self.model.embed.weight)
        return logits, (x0, x, segments)

    def backward(self, loss: torch.Tensor, pieces) -> None:
        """Backpropagate layer by layer, through the Mixer of each."""
        x0, top, segments = pieces
        loss.backward()
        g = top.grad
        for layer in reversed(range(len(segments))):
            x, c, y, z = segments[layer]
            z.backward(g)
            c.backward(self._mixer_backward(layer, y.grad))
            g = x.grad
        x0.backward(g)

    # ---- training, answering --------------------------------------------------------------------

    def train(self, task_name: str) -> dict:
        """Train on `task_name` (each rate of the stage's `lr_sweep` in turn, keeping the model with the
        lowest loss on validation batches drawn apart from the training batches; none of the held-out test
        set); the training metrics."""
        if not self.stage.lr_sweep:
            return self._train_once(task_name, self.stage.lr)
        best = None
        losses = {}
        for lr in self.stage.lr_sweep:
            metrics = self._train_once(task_name, lr)
            losses[lr] = metrics["val_loss"]
            if best is None or metrics["val_loss"] < best[0]["val_loss"]:
                best = (metrics, [p.detach().clone() for p in registered_parameters(self.model)])
        metrics, saved = best
        metrics["val_loss"] = metrics["val_loss"] if math.isfinite(metrics["val_loss"]) else None
        params = registered_parameters(self.model)
        if [p.shape for p in params] != [p.shape for p in saved]:
            raise CheckFailed("the Mixer's parameters changed shape between the learning-rate sweep's trainings: "
                              "a Mixer must build the same parameters every time")
        with torch.no_grad():
            for p, q in zip(params, saved):
                p.copy_(q)
        self.version += 1
        return {**metrics, "lr_trials": len(losses),
                "val_loss_by_lr": {str(k): v if math.isfinite(v) else None for k, v in losses.items()}}

    def _train_once(self, task_name: str, lr: float) -> dict:
        """Build and train for the stage's steps at peak rate `lr`; the training metrics."""
        self.build(task_name)
        stage = self.stage_task.model_copy(update={"lr": lr})
        params = registered_parameters(self.model)
        opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        data = torch.Generator().manual_seed(self.seeds["data"][task_name])
        self.model.train()
        self._mode(0, True)
        losses: list[float] = []
        t0 = time.perf_counter()
        for step in range(stage.steps):
            batch = self.task.make_batch(data, stage.batch_size)
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
        tail = losses[-max(1, len(losses) // 10):]
        layer_params = sum(p.numel() for p in self.slots[0].parameters())
        out = {"train_loss": sum(tail) / len(tail), "params_total": sum(p.numel() for p in params),
               "params_mixer": layer_params * len(self.slots), "params_mixer_layer": layer_params,
               "train_s": train_s, "steps_per_s": stage.steps / train_s if train_s > 0 else 0.0, "lr": lr}
        if self.stage.lr_sweep:
            out["val_loss"] = self.validation_loss(task_name)
        return out

    @torch.no_grad()
    def validation_loss(self, task_name: str, batches: int = 4) -> float:
        """Mean loss on training-distribution batches drawn from their own seed (not the training batches,
        not the engine's test set); NaN or infinite counts as infinitely bad."""
        data = torch.Generator().manual_seed(derived(self.seeds["data"][task_name], "validation"))
        self.model.eval()
        self._mode(0, False)
        total, n = 0.0, 0
        for _ in range(batches):
            batch = self.task.make_batch(data, self.stage.batch_size)
            mask = batch.mask.to(self.device)
            logits, _ = self.forward(batch.inputs.to(self.device), mask, 0, grad=False)
            total += nn.functional.cross_entropy(logits, batch.targets.to(self.device)[mask], reduction="sum").item()
            n += int(mask.sum())
        loss = total / max(1, n)
        return loss if math.isfinite(loss) else math.inf

    @torch.no_grad()
    def predict(self, replica: int, inputs: np.ndarray, request: np.ndarray,
                candidates: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Log-probabilities of the candidates (all tokens when None) and the argmax over the whole
        vocabulary, per requested position, as float32 (N, K) and int32 (N,)."""
        self.model.eval()
        self._mode(replica, False)
        mask = torch.from_numpy(request.astype(bool)).to(self.device)
        logits, _ = self.forward(torch.from_numpy(inputs.astype(np.int64)).to(self.device), mask, replica, grad=False)
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        argmax = logits.argmax(dim=-1).to(torch.int32)
        if candidates is not None:
            logp = logp.gather(1, torch.from_numpy(candidates.astype(np.int64)).to(self.device))
        return logp.cpu().contiguous().numpy(), argmax.cpu().numpy()

    @torch.no_grad()
    def probe(self, replica: int, length: int, rows: int) -> float:
        """One forward of `rows` random token rows of `length`, the Mixers served by `replica` as for
        any prediction; the seconds spent waiting for the Mixers."""
        self.model.eval()
        self._mode(replica, False)
        gen = torch.Generator().manual_seed(length)
        x = self.model.embed(torch.randint(self.task.vocab_size, (rows, length), generator=gen).to(self.device))
        seconds = 0.0
        for layer, block in enumerate(self.model.blocks):
            c = block.conv(block.norm(x))
            t0 = time.perf_counter()
            y = self._mixer(replica, layer, c, grad=False)
            seconds += time.perf_counter() - t0
            x = x + y
            if block.mlp is not None:
                x = x + block.mlp(x)
        return seconds


class LocalMixers:
    """The Mixers in this process (trusted code only: measuring the harness itself)."""

    def __init__(self, code: str, d_model: int, n_heads: int, seq_len: int, checks: CheckSettings,
                 device: str = "cpu"):
        from fitness.genome_module import load_genome

        self.module, self.device = load_genome(code), device
        self.d_model, self.n_heads, self.seq_len, self.checks = d_model, n_heads, seq_len, checks
        self.layers: dict[int, nn.Module] = {}
        self.graphs: dict[int, tuple] = {}

    def _make(self) -> nn.Module:
        return self.module.Mixer(self.d_model, self.n_heads)

    def check(self, seed: int) -> dict:
        from fitness.checks import run_checks

        return run_checks(self._make, self.d_model, self.seq_len, self.checks, seed, self.device)

    def build(self, layer: int, seed: int) -> list[torch.Tensor]:
        state = torch.get_rng_state()
        if layer == 0:
            self.layers, self.graphs = {}, {}
            random.seed(seed)
        torch.manual_seed(seed)
        self.layers[layer] = self._make().to(self.device)
        torch.set_rng_state(state)
        return [p.detach().clone() for p in registered_parameters(self.layers[layer])]

    def start(self, seed: int) -> None:
        torch.manual_seed(seed)

    def mode(self, replica: int, train: bool) -> None:
        for m in self.layers.values():
            m.train(train)

    def forward(self, replica: int, layer: int, x: torch.Tensor, grad: bool, params) -> torch.Tensor:
        mixer = self.layers[layer]
        own = registered_parameters(mixer)
        if params is not None:
            with torch.no_grad():
                for p, new in zip(own, params):
                    p.copy_(new)
        if grad:
            x = x.clone().requires_grad_(True)
            with torch.enable_grad():
                y = mixer(x)
            self.graphs[layer] = (x, y, own)
            return y.detach()
        return mixer(x)

    def backward(self, layer: int, dy: torch.Tensor):
        x, y, own = self.graphs.pop(layer)
        grads = torch.autograd.grad(y, [x, *own], grad_outputs=dy, allow_unused=True)
        return (grads[0] if grads[0] is not None else torch.zeros_like(x)), list(grads[1:])
