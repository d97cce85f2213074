"""Fitness: is a genome allowed to run (policy), does it run safely (sandbox, guard),
is it a valid causal mixer (checks), and how well does it learn (task, backbone, train),
at two fidelities (stage 1 exploration, stage 2 multi-seed verification).

Public entry points: `evaluate`, `LocalExecutor` / `EvalJob`, `check_policy`,
`FitnessSettings` and its parts.
"""
from fitness.evaluate import evaluate, evaluate_in_process
from fitness.executor import EvalJob, LocalExecutor
from fitness.policy import check_policy
from fitness.settings import CheckSettings, FitnessSettings, SandboxSettings, StageSettings

__all__ = [
    "evaluate", "evaluate_in_process", "EvalJob", "LocalExecutor", "check_policy",
    "CheckSettings", "FitnessSettings", "SandboxSettings", "StageSettings",
]
