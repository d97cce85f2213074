"""Running a bench: every (strategy, seed) run of the matrix, one after another (each run's evaluations
use `fitness.workers` in parallel) or `parallel_runs` at a time in processes of their own (classic
operator only), resumable after kill -9, then the report.

The bench folder holds matrix.json (run name -> config hash), the bench file as run, secrets/ (one
per paired seed), runs/<strategy>-s<k>/ (ordinary runs: `evo top` works on them), evaluations.sqlite
(the shared store) and report/. A second `evo bench` on the same folder needs --resume, and refuses
a changed matrix unless --allow-changed (runs whose config changed then start again).
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from archive.store import Archive
from evo.bench.config import Bench, Cell
from evo.bench.shared import SharedEvaluations
from evo.config import ConfigError, dump_config
from evo.run import CONFIG_FILE, resume_run, start_run
from evo.summary import ARCHIVE_FILE

log = logging.getLogger("evo")
MATRIX_FILE = "matrix.json"


def run_bench(bench: Bench, resume: bool = False, allow_changed: bool = False) -> Path:
    """Run (or finish) every run of the bench, then write its report; returns the report folder."""
    folder = bench.folder
    matrix = bench.matrix()
    check_matrix(folder, matrix, resume, allow_changed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.toml").write_text(bench.path.read_text())
    tmp = folder / (MATRIX_FILE + ".tmp")
    tmp.write_text(json.dumps(describe(bench, matrix), indent=1))
    os.replace(tmp, folder / MATRIX_FILE)
    # wall time as the currency: a reused evaluation would cost its run no wall time, so nothing is shared
    store = None if bench.settings.currency == "wall_s" else folder / "evaluations.sqlite"
    cells = sorted(bench.cells(), key=lambda c: (bench.seeds.index(c.seed), list(bench.strategies).index(c.strategy)))
    if bench.settings.parallel_runs > 1:
        failed = run_parallel(cells, folder, store, bench.settings.parallel_runs)
    else:
        failed = run_sequential(cells, folder, store)
    if failed:
        log.error("bench: %d run(s) did not finish: %s", len(failed), ", ".join(failed))
    from evo.bench.report import write_bench_report

    return write_bench_report(folder)


def run_sequential(cells: list[Cell], folder: Path, store: Path | None) -> list[str]:
    """The runs one after another in this process (one model load for the whole bench); the failed ones."""
    shared = SharedEvaluations(store) if store else None
    backends: dict[str, object] = {}
    failed = []
    try:
        for cell in tqdm(cells, desc=f"bench {folder.name}", unit="run"):
            if not run_logged(cell, folder, shared, backends):
                failed.append(cell.name)
    finally:
        if shared is not None:
            shared.close()
    return failed


def run_parallel(cells: list[Cell], folder: Path, store: Path | None, at_once: int) -> list[str]:
    """`at_once` runs at a time, each in a process of its own (classic operator only); the failed ones."""
    context = multiprocessing.get_context("spawn")
    failed = []
    with ProcessPoolExecutor(max_workers=at_once, mp_context=context) as pool:
        futures = {pool.submit(run_in_process, cell.strategy, cell.seed, dump_config(cell.config), str(folder),
                               str(store) if store else None): cell for cell in cells}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"bench {folder.name}", unit="run"):
            if not future.result():
                failed.append(futures[future].name)
    return failed


def run_in_process(strategy: str, seed: int, config_text: str, folder: str, store: str | None) -> bool:
    """One run in a worker process of `run_parallel`: True when it finished."""
    from evo.bench.events import tomllib
    from evo.config import parse_config

    cell = Cell(strategy, seed, parse_config(tomllib.loads(config_text)))
    shared = SharedEvaluations(Path(store)) if store else None
    try:
        return run_logged(cell, Path(folder), shared, {})
    finally:
        if shared is not None:
            shared.close()


def run_logged(cell: Cell, folder: Path, shared: SharedEvaluations | None, backends: dict) -> bool:
    """`run_cell` with its time logged; False (logged) when the run stopped with an error."""
    started = time.monotonic()
    try:
        if run_cell(cell, folder, shared, backends):
            log.info("bench: %s done in %.0f s (%d evaluations answered from the bench store by this process)",
                     cell.name, time.monotonic() - started, shared.hits if shared else 0)
        return True
    except Exception as exc:  # noqa: BLE001 - one broken run must not stop the others; --resume retries it
        log.error("bench: run %s stopped with %s: %s (its report row is flagged; --resume retries it)",
                  cell.name, type(exc).__name__, exc)
        return False


def describe(bench: Bench, matrix: dict[str, str]) -> dict:
    """What the report needs to know of the bench, stored beside its runs."""
    cells = bench.cells()
    sweep = bench.sweep
    from evo.bench.provenance import provenance

    models = sorted({c.config.llm.model for c in cells if c.config.operators.kind != "classic"})
    started = provenance([dump_config(c.config) for c in cells if c.seed == bench.seeds[0]], bench.seeds, models)
    return {"matrix": matrix, "notes": bench.notes, "provenance_at_start": started, "strategies": list(bench.strategies), "seeds": bench.seeds,
            "currency": bench.settings.currency, "budget": bench.budget_value, "source": str(bench.path),
            "runs": [{"name": c.name, "strategy": c.strategy, "seed": c.seed} for c in cells],
            "configs": {c.strategy: dump_config(c.config) for c in cells if c.seed == bench.seeds[0]},
            "models": models,
            "sweep": None if sweep is None else {"strategy": sweep.strategy, "key": sweep.key,
                                                 "values": [str(v) for v in sweep.values]}}


def check_matrix(folder: Path, matrix: dict[str, str], resume: bool, allow_changed: bool) -> None:
    """Refuse to mix two different benches in one folder (runs with a changed config are removed
    when the change is allowed)."""
    path = folder / MATRIX_FILE
    if not path.exists():
        return
    if not resume:
        raise ConfigError(f"bench folder {folder} exists: `evo bench ... --resume` to finish it, or another --out")
    old = json.loads(path.read_text())["matrix"]
    changed = sorted(n for n in matrix if n in old and old[n] != matrix[n])
    added, removed = sorted(set(matrix) - set(old)), sorted(set(old) - set(matrix))
    if (changed or added or removed) and not allow_changed:
        raise ConfigError(f"{folder}: the bench's matrix changed since it started (changed config: "
                          f"{changed or 'none'}; new runs: {added or 'none'}; dropped runs: {removed or 'none'}); "
                          f"rerun with --allow-changed to restart the changed runs, or use another --out")
    for name in changed:
        shutil.rmtree(folder / "runs" / name, ignore_errors=True)


def run_cell(cell: Cell, folder: Path, shared: SharedEvaluations | None, backends: dict) -> bool:
    """Start, resume or skip one run; True if it searched."""
    run_dir = folder / "runs" / cell.name
    if (run_dir / ARCHIVE_FILE).exists():
        with Archive(run_dir / ARCHIVE_FILE, readonly=True) as archive:
            if archive.get_meta("status") == "finished":
                return False
    backend = llm_backend(cell, backends)
    if (run_dir / CONFIG_FILE).exists():
        resume_run(run_dir, backend, shared)
    else:
        start_run(cell.config, cell.name, overwrite=True, llm_backend=backend, shared=shared)
    return True


def llm_backend(cell: Cell, backends: dict):
    """One in-process model per distinct [llm] setting, loaded once for the whole bench (None: classic)."""
    if cell.config.operators.kind == "classic":
        return None
    from operators.backends import LazyBackend

    key = cell.config.llm.model_dump_json()
    if key not in backends:
        backends[key] = LazyBackend(cell.config.llm)
    return backends[key]
