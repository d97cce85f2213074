"""The run configuration: one TOML file validated into typed objects.

Unknown keys and bad values are errors that name the key, the value and what is
allowed. Each package owns the settings of its own part (fitness, llm, novelty); this
module composes them and adds the run and search sections.
"""
from __future__ import annotations

import inspect
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from archive.novelty import NoveltySettings
from fitness.settings import FitnessSettings
from operators.settings import LLMSettings


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key, which value, what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSettings(Strict):
    seed: int = Field(0, description="seed of every random choice in the run")
    runs_dir: str = Field("runs", description="folder under which runs/<name>/ is created")
    secret_file: str | None = Field(None, description="the secret key every held-out test set derives from "
                                    "(made on first use); runs sharing one are scored on the same test sets. "
                                    "Default: secret.key in the run directory")


STRATEGIES = ("mu_plus_lambda", "mu_comma_lambda", "aging", "random", "nsga2", "islands", "map_elites")
GENERATIONAL = ("mu_comma_lambda", "nsga2")  # need whole generations told at once
Strategy = Literal["mu_plus_lambda", "mu_comma_lambda", "aging", "random", "nsga2", "islands", "map_elites"]
Inner = Literal["mu_plus_lambda", "mu_comma_lambda", "aging", "random", "nsga2", "map_elites"]


class SelectionSettings(Strict):
    operator: str = Field("selTournament", description="name of a deap.tools selection operator")
    args: dict[str, Any] = Field(default_factory=lambda: {"tournsize": 3},
                                 description="keyword arguments of the operator besides individuals and k")

    @model_validator(mode="after")
    def _known_operator(self) -> "SelectionSettings":
        from deap import tools

        allowed = sorted(n for n in dir(tools) if n.startswith("sel") and callable(getattr(tools, n)))
        if self.operator not in allowed:
            raise ValueError(f"unknown selection operator {self.operator!r}; allowed: {', '.join(allowed)}")
        if self.operator in ("selNSGA2", "selNSGA3", "selSPEA2", "selTournamentDCD"):
            raise ValueError(f"{self.operator} selects on several objectives: use strategy = \"nsga2\"")
        params = inspect.signature(getattr(tools, self.operator)).parameters
        takes = [p for p in params if p not in ("individuals", "k")]
        for name in self.args:
            if name not in takes:
                raise ValueError(f"{self.operator} takes no argument {name!r}; it takes: {', '.join(takes) or 'none'}")
        missing = [p for p in takes if params[p].default is inspect.Parameter.empty and p not in self.args]
        if missing:
            raise ValueError(f"{self.operator} needs the argument(s) {', '.join(missing)} in args")
        return self


class MuLambdaSettings(Strict):
    population: int = Field(6, ge=2, le=10_000, description="survivors kept each step (mu)")
    elitism: int = Field(1, ge=0, description="best genomes always kept")
    crossover_prob: float = Field(0.2, ge=0.0, le=1.0, description="share of children made by crossover")
    selection: SelectionSettings = Field(default_factory=SelectionSettings,
                                         description="DEAP selection of parents and survivors")

    @model_validator(mode="after")
    def _elitism_fits(self) -> "MuLambdaSettings":
        if self.elitism >= self.population:
            raise ValueError(f"elitism ({self.elitism}) must be smaller than population ({self.population})")
        return self


class AgingSettings(Strict):
    population: int = Field(10, ge=2, le=100_000, description="P: members kept, oldest replaced first")
    sample: int = Field(3, ge=1, le=100_000, description="S: tournament size among uniformly drawn members")

    @model_validator(mode="after")
    def _sample_fits(self) -> "AgingSettings":
        if self.sample > self.population:
            raise ValueError(f"sample ({self.sample}) must not exceed population ({self.population})")
        return self


class RandomSettings(Strict):
    """Random search has no settings of its own: every child is a variation of a uniformly drawn seed."""


class ObjectiveSettings(Strict):
    name: Literal["score", "params", "complexity", "novelty"] = Field(
        ..., description="score (stage 1), params (Mixer parameters), complexity (cost exponent), novelty")
    direction: Literal["max", "min"] = Field(..., description="maximise or minimise")


class NSGA2Settings(Strict):
    population: int = Field(8, ge=2, le=10_000, description="survivors kept each generation")
    crossover_prob: float = Field(0.2, ge=0.0, le=1.0, description="share of children made by crossover")
    objectives: list[ObjectiveSettings] = Field(
        default_factory=lambda: [ObjectiveSettings(name="score", direction="max"),
                                 ObjectiveSettings(name="params", direction="min")],
        min_length=2, max_length=4, description="objectives with their directions")

    @model_validator(mode="after")
    def _distinct(self) -> "NSGA2Settings":
        names = [o.name for o in self.objectives]
        if len(set(names)) < len(names) or "score" not in names:
            raise ValueError(f"objectives must be distinct and include score, got {names}")
        return self


class DescriptorSettings(Strict):
    name: Literal["log_params", "complexity", "novelty", "score"] = Field(
        ..., description="log_params (log10 of Mixer parameters), complexity (cost exponent), novelty or score")
    low: float = Field(..., description="lower edge of the first bin")
    high: float = Field(..., description="upper edge of the last bin (values outside clamp)")
    bins: int = Field(..., ge=1, le=1000, description="number of bins")

    @model_validator(mode="after")
    def _range(self) -> "DescriptorSettings":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class MapElitesSettings(Strict):
    crossover_prob: float = Field(0.2, ge=0.0, le=1.0, description="share of children made by crossover")
    descriptors: list[DescriptorSettings] = Field(
        default_factory=lambda: [DescriptorSettings(name="log_params", low=3.0, high=6.0, bins=6),
                                 DescriptorSettings(name="complexity", low=0.5, high=2.5, bins=4)],
        min_length=2, max_length=2, description="the two axes of the grid")


class _OneTable(Strict):
    """A choice among strategies, with the table of the chosen one only."""

    mu_plus_lambda: MuLambdaSettings | None = Field(None, description="settings of mu_plus_lambda")
    mu_comma_lambda: MuLambdaSettings | None = Field(None, description="settings of mu_comma_lambda")
    aging: AgingSettings | None = Field(None, description="settings of aging")
    random: RandomSettings | None = Field(None, description="settings of random (none)")
    nsga2: NSGA2Settings | None = Field(None, description="settings of nsga2")
    map_elites: MapElitesSettings | None = Field(None, description="settings of map_elites")

    def _one_table(self, chosen: str, names: tuple[str, ...]) -> None:
        extra = [n for n in names if n != chosen and getattr(self, n, None) is not None]
        if extra:
            raise ValueError(f"table(s) {', '.join(extra)} given, but the strategy is {chosen!r}: give only [{chosen}]")
        if getattr(self, chosen) is None:
            default = {"mu_plus_lambda": MuLambdaSettings, "mu_comma_lambda": MuLambdaSettings,
                       "aging": AgingSettings, "random": RandomSettings, "nsga2": NSGA2Settings,
                       "map_elites": MapElitesSettings, "islands": IslandsSettings}[chosen]
            object.__setattr__(self, chosen, default())

    def table(self, name: str):
        """The settings of strategy `name`."""
        return getattr(self, name)


class IslandsSettings(_OneTable):
    islands: int = Field(3, ge=2, le=1000, description="number of islands")
    migrants: int = Field(1, ge=1, le=1000, description="k: the best of each island sent to the next")
    every: int = Field(2, ge=1, le=100_000, description="M: steps between migrations")
    strategy: Inner = Field("aging", description="the strategy each island runs")

    @model_validator(mode="after")
    def _inner(self) -> "IslandsSettings":
        self._one_table(self.strategy, STRATEGIES[:-2] + ("map_elites",))
        return self


class BudgetSettings(Strict):
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="steps (generations, or batches in "
                                  "steady state) after the seeds")
    max_evaluations: int | None = Field(None, ge=1, description="sandboxed evaluations, every stage and seed")
    max_llm_tokens: int | None = Field(None, ge=1, description="prompt + completion tokens of the LLM")
    max_wall_s: float | None = Field(None, gt=0, description="wall seconds of search, over every sitting")
    target_score: float | None = Field(None, description="stop once a genome reaches this selection score")

    @model_validator(mode="after")
    def _ends(self) -> "BudgetSettings":
        if all(v is None for v in (self.max_steps, self.max_evaluations, self.max_llm_tokens, self.max_wall_s)):
            raise ValueError("a budget needs at least one of max_steps, max_evaluations, max_llm_tokens, max_wall_s")
        return self


class SearchSettings(_OneTable):
    strategy: Strategy = Field("mu_plus_lambda", description=f"search strategy: {', '.join(STRATEGIES)}")
    mode: Literal["generational", "steady_state"] = Field(
        "generational", description="generational: each step asks, breeds and tells one batch; steady_state: the "
        "LLM proposes the next batch while the last one trains")
    children: int = Field(6, ge=1, le=10_000, description="children proposed per step")
    budget: BudgetSettings = Field(default_factory=lambda: BudgetSettings(max_steps=3),
                                   description="when the search stops: at the first limit reached")
    islands: IslandsSettings | None = Field(None, description="settings of islands")

    @model_validator(mode="after")
    def _strategy(self) -> "SearchSettings":
        self._one_table(self.strategy, STRATEGIES)
        inner = self.islands.strategy if self.strategy == "islands" else self.strategy
        if self.mode == "steady_state" and inner in GENERATIONAL:
            raise ValueError(f"{self.strategy}{' of ' + inner if inner != self.strategy else ''} needs whole "
                             f"generations: use mode = \"generational\"")
        return self


class OperatorSettings(Strict):
    kind: Literal["llm", "classic", "mix"] = Field(
        "llm", description="who makes children: the LLM, the classic AST edits (operators.classic), or a mix")
    classic_share: float | None = Field(None, ge=0.0, le=1.0, description="with kind = mix (and only then): "
                                        "share of children made by the classic edits, default 0.5")

    @model_validator(mode="after")
    def _share_only_for_mix(self) -> "OperatorSettings":
        if self.classic_share is not None and self.kind != "mix":
            raise ValueError(f"classic_share applies to kind = \"mix\" only (kind is {self.kind!r})")
        if self.kind == "mix" and self.classic_share is None:
            self.classic_share = 0.5
        return self


class Config(Strict):
    run: RunSettings = Field(default_factory=RunSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    operators: OperatorSettings = Field(default_factory=OperatorSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    novelty: NoveltySettings = Field(default_factory=NoveltySettings)
    fitness: FitnessSettings = Field(default_factory=FitnessSettings)

    @model_validator(mode="after")
    def _objectives_measured(self) -> "Config":
        s = self.search
        inner = s.islands.strategy if s.strategy == "islands" else s.strategy
        table = (s.islands if s.strategy == "islands" else s).table(inner)
        wanted = set()
        if isinstance(table, NSGA2Settings):
            wanted = {o.name for o in table.objectives}
        if isinstance(table, MapElitesSettings):
            wanted = {d.name for d in table.descriptors}
        if "complexity" in wanted and not self.fitness.checks.complexity_probe:
            raise ValueError("an objective or descriptor `complexity` needs fitness.checks.complexity_probe = true")
        if ("novelty" in wanted or self.novelty.weight > 0) and not self.novelty.enabled:
            raise ValueError("novelty as an objective, descriptor or selection weight needs novelty.enabled = true")
        if self.novelty.weight > 0 and inner in ("nsga2", "random"):
            raise ValueError(f"novelty.weight does nothing with {inner!r}" + (
                ": make novelty an objective instead" if inner == "nsga2" else " (no selection)"))
        return self


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        parent = _model_at(Config, error["loc"][:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        section = ".".join(str(p) for p in error["loc"][:-1]) or "top level"
        return f"unknown key {key!r} (value {value!r}); allowed keys in [{section}]: {allowed}"
    if error["type"] == "missing":
        return f"{key}: missing (required)"
    if isinstance(value, dict):  # a rule over a whole table: the message names the keys
        return f"[{key or 'top level'}]: {error['msg'].removeprefix('Value error, ')}"
    return f"{key or 'config'} = {value!r}: {error['msg']}"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The settings class at a location of the config (through optional tables and lists)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        found = [t for t in (field.annotation, *typing.get_args(field.annotation))
                 for t in (t, *typing.get_args(t)) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def parse_config(raw: dict, source: str = "config") -> Config:
    """Validate a raw TOML dict; raise ConfigError listing every bad key and value."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: {len(lines)} error(s)\n  " + "\n  ".join(lines)) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `--set a.b.c=value` overrides; value is parsed as TOML, else taken as a string."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. search.generations=5")
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        node[parts[-1]] = value
    return raw


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """The TOML file as a dict; ConfigError naming the file when it is missing or not TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override and validate a TOML config file."""
    return parse_config(apply_overrides(read_toml(path), list(overrides)), str(path))


def dump_config(config: Config) -> str:
    """The resolved config as TOML text (every default made explicit)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
