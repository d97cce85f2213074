"""Task plugins: the data a stage trains on (in the sandbox) and is scored on (in the engine).

A task is one class with two sides that never meet:

- training side, run inside the sandboxed worker: `make_batch(generator, batch_size)` draws
  public training data from the training seed; `prepare_training(stage)` (optional
  classmethod) loads what training needs before the sandbox closes (it must not load held-out
  data: the worker's memory is the genome's).
- test side, run only in the engine (fitness.testset): `test_batches(generator, rows_per_batch,
  n_batches)` draws held-out batches from a seed derived from the engine's secret, with
  `mask` marking the scored positions, where each target must be absent from the inputs;
  `candidates(inputs, mask)` the token ids whose log-probabilities the worker returns for each
  scored position (None: the whole vocabulary); `continue_after(row, scored, t, generator)` a
  copy of one input row (`scored`: its mask row) with the same tokens up to t and new, equally plausible ones after (the
  trained-model causality probe); `metrics(loss_nats, accuracy)` the score (higher is better)
  and the task's own metrics from the engine-computed mean loss and accuracy.

Tasks: "mqar" (fitness.tasks.mqar, synthetic) and "shakespeare" (fitness.tasks.shakespeare,
byte-level language modelling on a registry-installed corpus). Add one by writing a module
here and registering it in `_TASKS` (and in settings.TaskName).
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
    """What a stage needs from a task (see the module docstring for both sides)."""

    vocab_size: int
    seq_len: int

    def make_batch(self, generator: torch.Generator, batch_size: int) -> Batch: ...

    def test_batches(self, generator: torch.Generator, rows: int, n_batches: int) -> list[Batch]: ...

    def candidates(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None: ...

    def continue_after(self, row: torch.Tensor, scored: torch.Tensor, t: int,
                       generator: torch.Generator) -> torch.Tensor: ...

    def metrics(self, loss_nats: float, accuracy: float) -> dict: ...


_TASKS = {"mqar": ("fitness.tasks.mqar", "MQAR"), "shakespeare": ("fitness.tasks.shakespeare", "ShakespeareLM")}


def task_class(name: str) -> type:
    """The class of task `name`, importing only its module."""
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


def prepare_training(stage) -> None:
    """Load the training data of every task of a stage into this process: in the worker before
    its sandbox closes. A no-op for generated tasks such as MQAR."""
    for name in stage_task_names(stage):
        hook = getattr(task_class(name), "prepare_training", None)
        if hook is not None:
            hook(stage)


def fetch(stage) -> None:
    """Download and cache the data of every task of a stage (in the engine, once, before any worker
    starts: the sandbox has no network)."""
    for name in stage_task_names(stage):
        hook = getattr(task_class(name), "fetch", None)
        if hook is not None:
            hook()


def data_env() -> dict[str, str]:
    """Environment a sandboxed worker needs to find the training-data cache: the sandbox sets
    HOME to a scratch dir, so pass the resolved EVOARCH_CACHE root explicitly."""
    from fitness.tasks.shakespeare import cache_dir

    return {"EVOARCH_CACHE": str(cache_dir().parent)}
