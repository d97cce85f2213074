"""Which device an evaluation runs on, and the device slots an executor hands out."""
from __future__ import annotations


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cpu"/"cuda" pass through (cuda is checked)."""
    if device == "cpu":
        return "cpu"
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False")
    return "cuda" if has_cuda else "cpu"


def device_slots(device: str, workers: int) -> list[dict[str, str]]:
    """Environment overrides for each of `workers` slots: one GPU per slot, round-robin on CUDA."""
    if device != "cuda":
        return [{} for _ in range(workers)]
    import torch

    n = max(1, torch.cuda.device_count())
    return [{"CUDA_VISIBLE_DEVICES": str(i % n)} for i in range(workers)]
