"""Train the backbone with a genome's Mixer on a stage's task (in the sandbox), and answer the
engine's test requests with the trained model."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from fitness.backbone import Backbone, registered_parameters
from fitness.settings import StageSettings
from fitness.tasks import make_task


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


def seed_everything(seed: int) -> None:
    """Seed python's and torch's global generators (model init uses torch's)."""
    import random

    random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, stage: StageSettings) -> float:
    """Linear warm-up to stage.lr, then cosine decay to 10% of it."""
    warm = max(1, int(stage.warmup_frac * stage.steps))
    if step < warm:
        return stage.lr * (step + 1) / warm
    frac = (step - warm) / max(1, stage.steps - warm)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_model(make_mixer: Callable[[], nn.Module], stage: StageSettings, seed: int,
                device: str = "cpu") -> tuple[Backbone, dict]:
    """Train a fresh backbone on stage.task for stage.steps; return it with its training metrics
    (what the worker reports; the engine scores the model itself, see fitness.testset).
    Raises NonFiniteLoss if the loss becomes NaN/inf."""
    seed_everything(seed)
    task = make_task(stage)
    model = Backbone(make_mixer, task.vocab_size, stage.d_model, stage.n_layers,
                     stage.conv_kernel, stage.mlp).to(device)
    params = registered_parameters(model)
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    train_gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(stage.steps):
        batch = task.make_batch(train_gen, stage.batch_size)
        inputs, mask = batch.inputs.to(device), batch.mask.to(device)
        targets = batch.targets.to(device)[mask]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, stage)
        loss = loss_fn(model(inputs, mask), targets)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    tail = losses[-max(1, len(losses) // 10):]
    return model, {
        "train_loss": sum(tail) / len(tail),
        "params_total": sum(p.numel() for p in params),
        "params_mixer": model.mixer_params(),
        "train_s": train_s,
        "steps_per_s": stage.steps / train_s if train_s > 0 else 0.0,
    }


@torch.no_grad()
def predict(model: Backbone, inputs: torch.Tensor, request: torch.Tensor, candidates: torch.Tensor | None,
            device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For each requested position (row-major): log-probabilities of the candidates (all tokens when
    None) and the argmax over the whole vocabulary, as float32 (N, K) and int32 (N,) on the CPU."""
    model.eval()
    logits = model(inputs.to(device), request.to(device)).float()
    logp = torch.log_softmax(logits, dim=-1)
    argmax = logits.argmax(dim=-1).to(torch.int32)
    if candidates is not None:
        logp = logp.gather(1, candidates.to(device).long())
    return logp.cpu().contiguous(), argmax.cpu()
