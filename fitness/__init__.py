"""Fitness: is a genome allowed to run (policy), is it contained (sandbox, containment layers),
is it a valid causal mixer (checks), how well does it learn (task, backbone, train), scored by
the engine on held-out data the genome never sees (testset), at two fidelities (stage 1
exploration, stage 2 multi-seed verification).

Public entry points: `evaluate`, `LocalExecutor` / `EvalJob`, `check_policy`, `self_test`,
`FitnessSettings` and its parts.
"""
from fitness.containment import SandboxUnavailable
from fitness.evaluate import evaluate
from fitness.executor import EvalJob, LocalExecutor
from fitness.policy import check_policy
from fitness.selftest import self_test
from fitness.settings import (
    CheckSettings,
    FitnessSettings,
    SandboxSettings,
    StageSettings,
)

__all__ = [
    "evaluate", "EvalJob", "LocalExecutor", "check_policy", "self_test", "SandboxUnavailable",
    "CheckSettings", "FitnessSettings", "SandboxSettings", "StageSettings",
]
