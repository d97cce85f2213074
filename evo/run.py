"""A run on disk: runs/<name>/ with its config, secret, log and archive, and the parts the engine
is given (executor, operator, LLM, novelty index), built from the config and closed at the end."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from archive.store import Archive
from evo.bench.shared import SharedEvaluations
from evo.config import Config, ConfigError, dump_config, load_config
from evo.engine import Engine
from evo.mainthread import MainThreadLLM
from evo.neighbours import Neighbours
from evo.summary import ARCHIVE_FILE, yield_stats
from fitness.executor import make_executor
from fitness.protocol import FITNESS_PROTOCOL
from fitness.secret import SECRET_FILE, load_or_create
from operators.backends import Backend, CachedBackend, LazyBackend
from operators.variation import Variation

log = logging.getLogger("evo")

CONFIG_FILE = "config.toml"
LOG_FILE = "run.log"


def start_run(config: Config, name: str, overwrite: bool = False, llm_backend: Backend | None = None,
              shared: SharedEvaluations | None = None) -> Path:
    """Create runs/<name>/ with the resolved config, then search (see `search` for llm_backend and shared)."""
    run_dir = Path(config.run.runs_dir) / name
    if run_dir.exists():
        if not overwrite:
            raise ConfigError(f"run directory {run_dir} exists: use `evo resume {run_dir}`, "
                              f"another --name, or --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(dump_config(config))
    search(run_dir, config, llm_backend, shared)
    return run_dir


def resume_run(run_dir: Path, llm_backend: Backend | None = None, shared: SharedEvaluations | None = None) -> Path:
    """Continue a run from its last checkpoint, with the config it was started with."""
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    search(run_dir, load_config(run_dir / CONFIG_FILE), llm_backend, shared)
    return run_dir


def search(run_dir: Path, config: Config, llm_backend: Backend | None = None,
           shared: SharedEvaluations | None = None) -> str:
    """Wire the parts of a run and search until the budget is spent; returns why it stopped.
    llm_backend: the model to use (default: the in-process vLLM of `[llm]`, loaded on first use);
    callers that search several runs pass one to load the model once. shared: a bench's store of
    evaluations, answered from before the sandbox is asked (evo.bench.shared)."""
    setup_logging(run_dir / LOG_FILE)
    archive = Archive(run_dir / ARCHIVE_FILE)
    protocol = archive.get_meta("fitness_protocol")
    if protocol is not None and protocol != FITNESS_PROTOCOL:
        raise ConfigError(f"{run_dir} was scored under fitness protocol {protocol}; this evoarch scores under "
                          f"protocol {FITNESS_PROTOCOL}, so its scores would not compare: start a new run")
    archive.set_meta("fitness_protocol", FITNESS_PROTOCOL)
    archive.set_meta("config", dump_config(config))
    archive.set_meta("status", "running")
    ops = config.operators
    llm = MainThreadLLM(CachedBackend(llm_backend or LazyBackend(config.llm), archive)) if ops.kind != "classic" else None
    neighbours = Neighbours(archive, run_dir, config.novelty) if config.novelty.enabled else None
    secret = load_or_create(Path(config.run.secret_file) if config.run.secret_file else run_dir / SECRET_FILE)
    executor = make_executor(config.fitness, secret)
    if shared is not None:
        executor = shared.wrap(executor, config.fitness, secret, run_dir.name)
    try:
        engine = Engine(config, archive, executor, Variation(ops.kind, ops.classic_share, llm, config.llm),
                        neighbours, llm)
        reason = engine.run()
    finally:
        executor.close()
        if neighbours is not None:
            neighbours.save()
    archive.set_meta("status", "finished")
    archive.set_meta("stop_reason", reason)
    log.info("stopped: %s; spent %s", reason, engine.total.as_dict())
    log.info("LLM yield: %s", yield_stats(archive))
    return reason


def setup_logging(path: Path) -> None:
    """Log to the run's log file and, shorter, to the console."""
    logger = logging.getLogger("evo")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
