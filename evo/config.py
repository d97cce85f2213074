"""The run configuration: one TOML file validated into typed objects.

Unknown keys and bad values are errors that name the key, the value and what is
allowed. Each package owns the settings of its own part (fitness, llm, novelty); this
module composes them and adds the run and search sections.
"""
from __future__ import annotations

import inspect
import sys
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
        params = inspect.signature(getattr(tools, self.operator)).parameters
        takes = [p for p in params if p not in ("individuals", "k")]
        for name in self.args:
            if name not in takes:
                raise ValueError(f"{self.operator} takes no argument {name!r}; it takes: {', '.join(takes) or 'none'}")
        return self


class SearchSettings(Strict):
    strategy: Literal["mu_plus_lambda"] = Field("mu_plus_lambda", description="search strategy")
    generations: int = Field(3, ge=1, le=100_000, description="generations after the seed generation")
    population: int = Field(6, ge=2, le=10_000, description="survivors kept each generation (mu)")
    offspring: int = Field(6, ge=1, le=10_000, description="children proposed each generation (lambda)")
    crossover_prob: float = Field(0.2, ge=0.0, le=1.0, description="share of children made by crossover")
    elitism: int = Field(1, ge=0, description="best genomes always kept (hall of fame)")
    selection: SelectionSettings = Field(default_factory=SelectionSettings)

    @model_validator(mode="after")
    def _elitism_fits(self) -> "SearchSettings":
        if self.elitism >= self.population:
            raise ValueError(f"elitism ({self.elitism}) must be smaller than population ({self.population})")
        return self


class Config(Strict):
    run: RunSettings = Field(default_factory=RunSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    novelty: NoveltySettings = Field(default_factory=NoveltySettings)
    fitness: FitnessSettings = Field(default_factory=FitnessSettings)


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        parent = _model_at(Config, error["loc"][:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        section = ".".join(str(p) for p in error["loc"][:-1]) or "top level"
        return f"unknown key {key!r} (value {value!r}); allowed keys in [{section}]: {allowed}"
    return f"{key or 'config'} = {value!r}: {error['msg']}"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
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


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override and validate a TOML config file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(apply_overrides(raw, list(overrides)), str(path))


def dump_config(config: Config) -> str:
    """The resolved config as TOML text (every default made explicit)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
