"""A bench config and the matrix of runs it stands for.

```toml
[bench]
base = "../quickstart.toml"     # the run config every strategy starts from (path relative to this file)
seeds = 5                       # paired seeds 0..4, or a list
currency = "evaluations"        # what the equal budget counts: evaluations, llm_tokens or wall_s
budget = 30                     # per run, in that currency
run_deadline_s = 3600           # optional: stop a run after this many wall seconds as well (flagged)
parallel_runs = 1               # optional: runs at once, each its own process (classic operator only)
baselines = ["random", "aging", "classic"]   # added unless already in the matrix; [] for none

[bench.patch]                   # TOML tables merged into every run's config
fitness = { workers = 2 }

[strategies.aging.search]       # one strategy: a patch of the base (tables merged) and/or
strategy = "aging"              # config = "path.toml", a full run config used instead of the base
aging = { population = 10, sample = 3 }

[sweep]                         # optional: one knob of one strategy over values, a strategy per value
strategy = "mu_plus_lambda"
key = "search.mu_plus_lambda.selection.args.tournsize"
values = [2, 3, 5, 8]
```

Seed k gives every strategy run.seed = k and one secret (so the same training draws and test
sets), hence the same seed genomes scored the same way; the budget is the only limit of each run.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evo.config import (
    STRATEGIES,
    Config,
    ConfigError,
    apply_overrides,
    dump_config,
    parse_config,
    read_toml,
)

CURRENCIES = {"evaluations": "max_evaluations", "llm_tokens": "max_llm_tokens", "wall_s": "max_wall_s"}
BASELINES = ("random", "aging", "classic")
_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchSettings(_Strict):
    base: str = Field(description="the run config every strategy patches (relative to the bench file)")
    seeds: int | list[int] = Field(5, description="paired seeds: a count (0..n-1) or a list")
    currency: Literal["evaluations", "llm_tokens", "wall_s"] = Field(
        "evaluations", description="what the equal budget counts (the other costs are recorded)")
    budget: float = Field(gt=0, description="each run's budget in the currency")
    parallel_runs: int = Field(1, ge=1, le=256, description="runs at once, each in its own process with its "
                               "own fitness.workers; above 1 for the classic operator only (one model per process)")
    run_deadline_s: float | None = Field(None, gt=0, description="also stop a run after this many wall seconds "
                                         "(the report flags runs that stopped before their budget)")
    baselines: list[Literal["random", "aging", "classic"]] = Field(
        list(BASELINES), description="baselines added unless the matrix has them: random, aging, classic")
    out: str | None = Field(None, description="the bench folder (default: runs/bench/<file stem>)")
    patch: dict[str, Any] = Field(default_factory=dict, description="tables merged into every run's config")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1 or isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("seeds must be a count >= 1 or a non-empty list of distinct integers")
        return v


class SweepSettings(_Strict):
    strategy: str = Field(description="the strategy (a name under [strategies]) whose knob is swept")
    key: str = Field(description="dotted config key, e.g. search.mu_plus_lambda.selection.args.tournsize")
    values: list[Any] = Field(min_length=2, description="one strategy per value")


class BenchFile(_Strict):
    bench: BenchSettings
    strategies: dict[str, dict[str, Any]] = Field(min_length=1)
    sweep: SweepSettings | None = None


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the bench: a strategy label, a paired seed and the resolved run config."""

    strategy: str
    seed: int
    config: Config

    @property
    def name(self) -> str:
        return f"{self.strategy}-s{self.seed}"


@dataclasses.dataclass
class Bench:
    """A loaded bench: its settings, folder, strategies (label -> raw run config) and the cells."""

    path: Path
    settings: BenchSettings
    folder: Path
    strategies: dict[str, dict]
    notes: list[str]
    sweep: SweepSettings | None

    @property
    def seeds(self) -> list[int]:
        s = self.settings.seeds
        return list(range(s)) if isinstance(s, int) else list(s)

    def cells(self) -> list[Cell]:
        """Every (strategy, seed) run with its config: run.seed, the seed's secret, the budget, runs_dir."""
        out = []
        for label, raw in self.strategies.items():
            for k in self.seeds:
                r = copy.deepcopy(raw)
                r.setdefault("run", {}).update(seed=k, runs_dir=str(self.folder / "runs"),
                                               secret_file=str(self.folder / "secrets" / f"seed-{k}.key"))
                budget = {CURRENCIES[self.settings.currency]: self.budget_value}
                if self.settings.run_deadline_s is not None:
                    budget["max_wall_s"] = min(self.settings.run_deadline_s, budget.get("max_wall_s", float("inf")))
                r.setdefault("search", {})["budget"] = budget
                out.append(Cell(label, k, parse_config(r, f"{self.path} [strategies.{label}] seed {k}")))
        return out

    @property
    def budget_value(self) -> float | int:
        b = self.settings.budget
        return b if self.settings.currency == "wall_s" else int(b)

    def matrix(self) -> dict[str, str]:
        """run name -> sha256 of its resolved config: what `--resume` compares."""
        return {c.name: hashlib.sha256(dump_config(c.config).encode()).hexdigest() for c in self.cells()}


def load_bench(path: str | Path, out: str | None = None) -> Bench:
    """Read and validate a bench file; raise ConfigError naming every problem."""
    path = Path(path)
    raw = read_toml(path, "bench file")
    try:
        spec = BenchFile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: {len(lines)} error(s)\n  " + "\n  ".join(lines)) from None
    s = spec.bench
    base = read_toml(path.parent / s.base, f"config file (bench.base of {path})")
    base = merge(base, s.patch)
    strategies: dict[str, dict] = {}
    for label, entry in spec.strategies.items():
        entry = dict(entry)
        if "budget" in entry.get("search", {}):
            raise ConfigError(f"{path}: strategies.{label} sets search.budget: the bench gives every run the same "
                              f"budget (bench.currency, bench.budget, bench.run_deadline_s)")
        start = merge(read_toml(path.parent / entry.pop("config"), f"config file (strategies.{label}.config of {path})"),
                      s.patch) \
            if "config" in entry else base
        strategies[_label(label, path)] = merge(start, entry)
    if spec.sweep is not None:
        sw = spec.sweep
        if sw.strategy not in strategies:
            raise ConfigError(f"{path}: sweep.strategy = {sw.strategy!r} is not under [strategies] "
                              f"(there: {', '.join(strategies)})")
        swept = strategies.pop(sw.strategy)
        if len({str(v) for v in sw.values}) != len(sw.values):
            raise ConfigError(f"{path}: sweep.values {sw.values} repeat a value (they name the strategies)")
        for v in sw.values:
            strategies[_label(f"{sw.strategy}.{sw.key.rsplit('.', 1)[-1]}={v}", path)] = \
                apply_overrides(copy.deepcopy(swept), [f"{sw.key}={_toml_value(v)}"])
    notes = _add_baselines(strategies, base, s.baselines)
    folder = Path(out or s.out or Path("runs") / "bench" / path.stem)
    bench = Bench(path, s, folder, strategies, notes, spec.sweep)
    cells = bench.cells()  # every run config validates now, not an hour in
    if s.parallel_runs > 1:
        llm = sorted({c.strategy for c in cells if c.config.operators.kind != "classic"})
        if llm:
            raise ConfigError(f"{path}: bench.parallel_runs = {s.parallel_runs} needs the classic operator (each run "
                              f"process would load its own model); the LLM runs {', '.join(llm)}: use 1")
    if s.currency == "llm_tokens" and s.run_deadline_s is None:
        classic = sorted({c.strategy for c in cells if c.config.operators.kind == "classic"})
        if classic:
            raise ConfigError(f"{path}: currency llm_tokens never ends the runs of {', '.join(classic)} (the "
                              f"classic operator spends no tokens): set bench.run_deadline_s, or baselines without "
                              f"classic")
    return bench


def merge(base: dict, patch: dict) -> dict:
    """`patch`'s tables merged into a copy of `base`. When the patch names another search strategy, the
    base's tables of other strategies are dropped (a run config holds the table of its strategy only);
    when it names an operator kind other than mix, the base's classic_share is dropped."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    search = out.get("search", {})
    new = patch.get("search", {}).get("strategy")
    if new is not None:
        for name in STRATEGIES:
            if name != new and name in search and name not in patch.get("search", {}):
                del search[name]
    ops = patch.get("operators", {})
    if ops.get("kind", "mix") != "mix" and "classic_share" not in ops:
        out.get("operators", {}).pop("classic_share", None)
    return out


def _add_baselines(strategies: dict[str, dict], base: dict, wanted: list[str]) -> list[str]:
    """Add the baselines the matrix lacks; returns notes on the ones already there."""
    ga = next((r for r in strategies.values() if r.get("search", {}).get("strategy") == "mu_plus_lambda"), base)
    candidates = {  # classic: the matrix's first mu+lambda (else the base) with the classic operator
        "random": (base, {"search": {"strategy": "random", "random": {}}}),
        "aging": (base, {"search": {"strategy": "aging", "aging": {"population": 10, "sample": 3}}}),
        "classic": (ga, {"search": {"strategy": "mu_plus_lambda"}, "operators": {"kind": "classic"}}),
    }
    notes = []
    for name in wanted:
        raw = merge(*candidates[name])
        same = [label for label, r in strategies.items() if _same(r, raw)]
        if same:
            notes.append(f"baseline {name}: strategy {same[0]!r} is the same run config")
        elif name in strategies:
            notes.append(f"baseline {name}: the matrix's own {name!r} is used")
        else:
            strategies[name] = raw
    return notes


def _same(a: dict, b: dict) -> bool:
    try:
        return dump_config(parse_config(copy.deepcopy(a))) == dump_config(parse_config(copy.deepcopy(b)))
    except ConfigError:
        return False


def _label(label: str, path: Path) -> str:
    if not _LABEL.match(label):
        raise ConfigError(f"{path}: strategy label {label!r}: use letters, digits and _ . = + - (it names run folders)")
    return label


def _toml_value(v: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()
