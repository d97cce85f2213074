"""Train the backbone with a genome's Mixer on a stage's task and score it on held-out data."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from fitness.backbone import Backbone
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


def train_and_score(make_mixer: Callable[[], nn.Module], stage: StageSettings, seed: int,
                    device: str = "cpu") -> dict:
    """Train for stage.steps and return metrics; "score" is the held-out task accuracy.

    Raises NonFiniteLoss if the loss becomes NaN/inf.
    """
    seed_everything(seed)
    task = make_task(stage)
    model = Backbone(make_mixer, task.vocab_size, stage.d_model, stage.n_layers,
                     stage.conv_kernel, stage.mlp).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    test = evaluate_model(model, task, stage, device)
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "score": test["accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "train_loss": sum(tail) / len(tail),
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_mixer": model.mixer_params(),
        "train_s": train_s,
        "steps_per_s": stage.steps / train_s if train_s > 0 else float("inf"),
        "eval_s": test["seconds"],
    }


@torch.no_grad()
def evaluate_model(model: Backbone, task, stage: StageSettings, device: str) -> dict:
    """Accuracy and loss on stage.eval_batches held-out batches drawn from stage.test_seed."""
    model.eval()
    gen = torch.Generator().manual_seed(stage.test_seed)
    correct = total = 0
    loss_sum = 0.0
    t0 = time.perf_counter()
    for _ in range(stage.eval_batches):
        batch = task.make_batch(gen, stage.batch_size)
        mask = batch.mask.to(device)
        targets = batch.targets.to(device)[mask]
        logits = model(batch.inputs.to(device), mask)
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        c, n = task.score(logits, targets)
        correct, total = correct + c, total + n
    return {"accuracy": correct / total, "loss": loss_sum / total, "seconds": time.perf_counter() - t0}
