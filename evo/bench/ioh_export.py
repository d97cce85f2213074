"""The bench in the IOHprofiler layout (a .json per strategy and .dat files) written by the `ioh` package,
so IOHanalyzer reads it: one problem (the bench's task, maximised), one dimension, instance = paired
seed + 1, one algorithm per strategy. f(x) of evaluation i is the evaluated genome's stage-1 mean so
far (0 for a genome without one: failed, rejected, or a stage-2 run's genome before stage 1 is known).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from evo.bench.events import RunEvents


def write_ioh(runs: list[RunEvents], folder: Path) -> None:
    """Write every run's charged evaluations under `folder` (replaced)."""
    import ioh

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for strategy in dict.fromkeys(r.strategy for r in runs):
        logger = ioh.logger.Analyzer(root=str(folder), folder_name=strategy, algorithm_name=strategy,
                                     algorithm_info="evoarch bench", triggers=[ioh.logger.trigger.ALWAYS])
        for run in (r for r in runs if r.strategy == strategy):
            values = [r["genome_mean"] if r["genome_mean"] is not None else 0.0 for r in run.rows]
            if not values:
                continue
            feed = iter(values)
            problem = ioh.wrap_problem(lambda x, feed=feed: next(feed), name="evoarch_mixer",
                                       problem_class=ioh.ProblemClass.REAL, dimension=1, instance=run.seed + 1,
                                       optimization_type=ioh.OptimizationType.MAX, lb=0, ub=1)
            problem.attach_logger(logger)
            for _ in values:
                problem([0.0])
            problem.reset()
            problem.detach_logger()
        logger.close()
