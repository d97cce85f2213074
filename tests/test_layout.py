"""The shape of the code: who may import whom, the engine loop's length, and no dead config knobs."""
import ast
import inspect
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from evo.config import Config
from evo.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evo", "fitness", "operators", "archive", "records")


def imported(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["fitness", "operators", "archive", "records"])
def test_packages_never_import_the_engine(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        assert "evo" not in imported(path), f"{path.relative_to(ROOT)} imports evo"
        if package == "records":
            assert not imported(path) & set(PACKAGES), f"{path.relative_to(ROOT)}: records must be a leaf"


def test_operators_fitness_and_archive_share_only_records():
    for package in ("fitness", "operators", "archive"):
        others = {"fitness", "operators", "archive"} - {package}
        for path in sorted((ROOT / package).rglob("*.py")):
            assert not imported(path) & others, f"{path.relative_to(ROOT)} imports {imported(path) & others}"


def test_the_engine_loop_is_at_most_80_lines():
    lines = inspect.getsource(Engine.run).splitlines()
    assert len(lines) <= 80, len(lines)


def settings_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, type[BaseModel]]]:
    """(dotted key, field name, owning class) of every config key, through nested tables."""
    out = []
    for name, field in model.model_fields.items():
        out.append((prefix + name, name, model))
        for t in (field.annotation, *typing.get_args(field.annotation)):
            for u in (t, *typing.get_args(t)):
                if isinstance(u, type) and issubclass(u, BaseModel) and u is not model:
                    out += settings_fields(u, f"{prefix}{name}.")
    return out


def attribute_reads() -> set[str]:
    """Every attribute name read (`x.name`) or string key used (`d["name"]`) in the project's code,
    outside the class bodies of settings models."""
    names = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            settings_bodies = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                               and any(ast.unparse(b) in ("Strict", "BaseModel", "_OneTable") for b in c.bases)
                               for n in ast.walk(c) if isinstance(n, ast.Assign | ast.AnnAssign)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                    names.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in settings_bodies:
                    names.add(node.value)
    return names


def test_every_config_key_is_read_somewhere():
    """A static guard against dead knobs: each key of every table is read by the code it configures
    (behaviour tests per key sit with the modules: test_engine, test_neighbours, test_breed...)."""
    reads = attribute_reads()
    dead = [key for key, name, _ in settings_fields(Config) if name not in reads]
    assert not dead, f"config keys never read: {dead}"
