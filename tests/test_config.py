"""Config: TOML -> validated settings; bad keys and values are named; `evo validate` exits non-zero."""
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from evo.config import ConfigError, apply_overrides, dump_config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_shipped_configs_validate(name):
    config = load_config(ROOT / "configs" / name)
    assert config.search.population >= 2


def test_misspelled_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"populaton": 6}})
    text = str(err.value)
    assert "search.populaton" in text and "6" in text and "population" in text


def test_out_of_range_value_is_named_with_bound():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"crossover_prob": 1.5}})
    text = str(err.value)
    assert "search.crossover_prob" in text and "1.5" in text and "less than or equal to 1" in text


def test_unknown_selection_operator_lists_deap_operators():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"selection": {"operator": "selTournamnet"}}})
    assert "selTournament" in str(err.value) and "selTournamnet" in str(err.value)


def test_selection_argument_must_exist():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"selection": {"operator": "selTournament", "args": {"size": 3}}}})
    assert "tournsize" in str(err.value)


def test_overrides_parse_toml_values():
    raw = apply_overrides({}, ["search.generations=5", "llm.model=qwen2.5-coder-1.5b", "novelty.enabled=false"])
    config = parse_config(raw)
    assert config.search.generations == 5 and config.llm.model == "qwen2.5-coder-1.5b"
    assert config.novelty.enabled is False


def test_resolved_config_round_trips():
    config = load_config(ROOT / "configs" / "quickstart.toml")
    again = parse_config(tomllib.loads(dump_config(config)))
    assert again == config


def test_evo_validate_exits_nonzero_naming_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[search]\ngeneratoins = 3\n[fitness.stage1]\nsteps = -5\n")
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "search.generatoins" in proc.stderr and "fitness.stage1.steps" in proc.stderr and "-5" in proc.stderr
    good = subprocess.run([sys.executable, "-m", "evo.cli", "validate", str(ROOT / "configs" / "quickstart.toml")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
