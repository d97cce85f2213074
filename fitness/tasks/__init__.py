"""Task plugins: synthetic or real data a stage trains and scores the backbone on.

A task answers two questions with one small interface (see `Task`): how to draw a
batch from a seeded generator, and how to score predictions. Add a task by writing a
module here and registering its class in `TASKS` (and in StageSettings.task).
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


def make_task(stage) -> Task:
    """Build the task a StageSettings names."""
    from fitness.tasks.mqar import MQAR

    tasks = {"mqar": MQAR}
    if stage.task not in tasks:
        raise ValueError(f"unknown task {stage.task!r}; known: {sorted(tasks)}")
    return tasks[stage.task].from_stage(stage)
