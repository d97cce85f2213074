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
    """Train for stage.steps and return metrics; "score" is higher-is-better: the held-out
    accuracy (MQAR) or the task's own score (`score_metrics`, e.g. 1 - bits/byte/8 for shakespeare).

    With `stage.tasks` set, a fresh model is trained on each task in turn (same seed and
    settings); the metrics of task NAME are kept as "NAME/<metric>", "score" is the
    weighted mean of the task scores, train_s/eval_s/params_total are summed.
    Raises NonFiniteLoss if the loss becomes NaN/inf.
    """
    if not stage.tasks:
        return _train_one(make_mixer, stage, seed, device)
    out: dict = {}
    total_w = sum(stage.tasks.values())
    score = 0.0
    for name, weight in stage.tasks.items():
        sub = stage.model_copy(update={"task": name, "tasks": None})
        metrics = _train_one(make_mixer, sub, seed, device)
        score += weight / total_w * metrics["score"]
        out.update({f"{name}/{k}": v for k, v in metrics.items()})
        for k in ("train_s", "eval_s"):
            out[k] = out.get(k, 0.0) + metrics[k]
        out["params_total"] = out.get("params_total", 0) + metrics["params_total"]
        out["params_mixer"] = metrics["params_mixer"]  # same mixer width in every task
    out["score"] = score
    return out


def _train_one(make_mixer: Callable[[], nn.Module], stage: StageSettings, seed: int, device: str) -> dict:
    """Train on stage.task alone and return its metrics."""
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
    task_metrics = task.score_metrics(test) if hasattr(task, "score_metrics") else {}
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
        **task_metrics,  # a task's own "score" (and e.g. test_bpb) replaces the accuracy
    }


@torch.no_grad()
def evaluate_model(model: Backbone, task, stage: StageSettings, device: str) -> dict:
    """Accuracy and loss on stage.eval_batches held-out batches drawn from stage.test_seed
    (from the task's held-out split when it has `make_eval_batch`)."""
    model.eval()
    gen = torch.Generator().manual_seed(stage.test_seed)
    draw = getattr(task, "make_eval_batch", task.make_batch)
    correct = total = 0
    loss_sum = 0.0
    t0 = time.perf_counter()
    for _ in range(stage.eval_batches):
        batch = draw(gen, stage.batch_size)
        mask = batch.mask.to(device)
        targets = batch.targets.to(device)[mask]
        logits = model(batch.inputs.to(device), mask)
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        c, n = task.score(logits, targets)
        correct, total = correct + c, total + n
    return {"accuracy": correct / total, "loss": loss_sum / total, "seconds": time.perf_counter() - t0}
