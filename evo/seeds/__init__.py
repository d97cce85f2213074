"""The seed genomes: five reference sequence mixers shipped as package data.

They form the initial population and the baseline every score is compared to.
Each file is a complete genome (a module defining `Mixer`), read as text, never imported.
"""
from __future__ import annotations

from importlib import resources

SEED_NAMES = (
    "softmax_attention",
    "linear_attention",
    "gated_linear_attention",
    "delta_rule",
    "short_conv",
)


def load_seeds() -> list[tuple[str, str]]:
    """Return [(name, source code)] for every seed mixer, in a fixed order."""
    root = resources.files(__name__)
    return [(name, (root / f"{name}.py").read_text(encoding="utf-8")) for name in SEED_NAMES]
