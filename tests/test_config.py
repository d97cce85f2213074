"""Config: TOML -> validated settings; bad keys and values are named; `evo validate` exits non-zero."""
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from evo.config import STRATEGIES, ConfigError, apply_overrides, dump_config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.toml")))
def test_shipped_configs_validate(name):
    if name.startswith("bench/"):  # bench files: every run config of the matrix validates
        from evo.bench.config import load_bench

        assert load_bench(ROOT / "configs" / name).cells()
        return
    config = load_config(ROOT / "configs" / name)
    if name.startswith("strategies/"):
        assert config.search.strategy == Path(name).stem


def test_misspelled_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"childrn": 6}})
    text = str(err.value)
    assert "search.childrn" in text and "6" in text and "children" in text


def test_out_of_range_value_is_named_with_bound():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"mu_plus_lambda": {"crossover_prob": 1.5}}})
    text = str(err.value)
    assert "search.mu_plus_lambda.crossover_prob" in text and "1.5" in text and "less than or equal to 1" in text


def test_unknown_selection_operator_lists_deap_operators():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"mu_plus_lambda": {"selection": {"operator": "selTournamnet"}}}})
    assert "selTournament" in str(err.value) and "selTournamnet" in str(err.value)


def test_selection_argument_must_exist():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"mu_plus_lambda": {"selection": {"operator": "selTournament", "args": {"size": 3}}}}})
    assert "tournsize" in str(err.value)


def test_missing_required_selection_argument_is_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"mu_plus_lambda": {"selection": {"operator": "selTournament", "args": {}}}}})
    assert "selTournament needs the argument(s) tournsize" in str(err.value)
    parse_config({"search": {"mu_plus_lambda": {"selection": {"operator": "selBest", "args": {}}}}})


def test_unknown_strategy_and_unknown_strategy_key_are_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"strategy": "hillclimb"}})
    assert "search.strategy" in str(err.value) and "'hillclimb'" in str(err.value) and "mu_plus_lambda" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"strategy": "aging", "aging": {"populaton": 10}}})
    assert "search.aging.populaton" in str(err.value) and "sample" in str(err.value)


def test_a_table_of_another_strategy_is_refused():
    with pytest.raises(ConfigError, match=r"table\(s\) aging given, but the strategy is 'mu_plus_lambda'"):
        parse_config({"search": {"aging": {"population": 4}}})


def test_strategies_that_need_generations_refuse_steady_state():
    for name in ("mu_comma_lambda", "nsga2"):
        with pytest.raises(ConfigError, match=f"{name} needs whole generations"):
            parse_config({"search": {"strategy": name, "mode": "steady_state"}})
    with pytest.raises(ConfigError, match="islands of nsga2 needs whole generations"):
        parse_config({"search": {"strategy": "islands", "mode": "steady_state", "islands": {"strategy": "nsga2"}}})
    parse_config({"search": {"strategy": "aging", "mode": "steady_state"}})


def test_out_of_range_strategy_values_are_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"search": {"strategy": "aging", "aging": {"population": 4, "sample": 9}}})
    assert "sample (9) must not exceed population (4)" in str(err.value)
    with pytest.raises(ConfigError, match="elitism .6. must be smaller than population .6."):
        parse_config({"search": {"mu_plus_lambda": {"population": 6, "elitism": 6}}})
    with pytest.raises(ConfigError, match="selNSGA2 selects on several objectives"):
        parse_config({"search": {"mu_plus_lambda": {"selection": {"operator": "selNSGA2", "args": {}}}}})


def test_objectives_need_what_measures_them():
    with pytest.raises(ConfigError, match="complexity_probe = true"):
        parse_config({"search": {"strategy": "nsga2", "nsga2": {"objectives": [
            {"name": "score", "direction": "max"}, {"name": "complexity", "direction": "min"}]}},
            "fitness": {"checks": {"complexity_probe": False}}})
    with pytest.raises(ConfigError, match="novelty.enabled = true"):
        parse_config({"novelty": {"enabled": False, "weight": 0.5}})
    with pytest.raises(ConfigError, match="novelty.weight does nothing with 'random'"):
        parse_config({"search": {"strategy": "random"}, "novelty": {"weight": 0.5}})


def test_budget_needs_a_limit_and_classic_share_needs_mix():
    with pytest.raises(ConfigError, match="at least one of max_steps"):
        parse_config({"search": {"budget": {"target_score": 0.9}}})
    assert parse_config({"search": {"budget": {"max_evaluations": 50}}}).search.budget.max_steps is None
    with pytest.raises(ConfigError, match="classic_share applies to kind = \"mix\" only"):
        parse_config({"operators": {"kind": "classic", "classic_share": 0.3}})
    assert parse_config({"operators": {"kind": "mix"}}).operators.classic_share == 0.5


def test_overrides_parse_toml_values():
    raw = apply_overrides({}, ["search.budget.max_steps=5", "llm.model=qwen2.5-coder-1.5b", "novelty.enabled=false"])
    config = parse_config(raw)
    assert config.search.budget.max_steps == 5 and config.llm.model == "qwen2.5-coder-1.5b"
    assert config.novelty.enabled is False


@pytest.mark.parametrize("name", ["quickstart.toml"] + [f"strategies/{s}.toml" for s in STRATEGIES])
def test_resolved_config_round_trips(name):
    config = load_config(ROOT / "configs" / name)
    again = parse_config(tomllib.loads(dump_config(config)))
    assert again == config


def test_evo_validate_exits_nonzero_naming_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[search]\nstrategy = \"hill\"\n[search.budget]\nmax_stepz = 3\n[fitness.stage1]\nsteps = -5\n")
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    for named in ("search.strategy", "'hill'", "search.budget.max_stepz", "fitness.stage1.steps", "-5"):
        assert named in proc.stderr, named
    good = subprocess.run([sys.executable, "-m", "evo.cli", "validate", str(ROOT / "configs" / "quickstart.toml")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr


def test_a_stage_table_overrides_its_preset_key_by_key():
    config = parse_config({"fitness": {"stage2": {"d_model": 128}}})
    assert config.fitness.stage2.d_model == 128 and config.fitness.stage2.n_heads == 2  # the preset's, kept
    assert config.fitness.stage2.timeout_s > config.fitness.sandbox.timeout_s  # stage 2 trains longer
    gpu = parse_config({"fitness": {"preset": "gpu", "stage1": {"steps": 10}}}).fitness
    assert gpu.stage1.steps == 10 and gpu.stage1.d_model == 128 and "shakespeare" in gpu.stage2.tasks
    with pytest.raises(ConfigError, match="fitness.preset"):
        parse_config({"fitness": {"preset": "tpu"}})


def test_a_stage_that_names_its_task_takes_no_task_from_the_preset():
    gpu = parse_config({"fitness": {"preset": "gpu", "stage2": {"task": "shakespeare"}}}).fitness
    assert gpu.stage2.task == "shakespeare" and gpu.stage2.tasks is None and gpu.stage2.d_model == 256
    lm = parse_config({"fitness": {"stage1": {"tasks": {"shakespeare": 1.0}, "seq_len": 33}}}).fitness
    assert lm.stage1.tasks == {"shakespeare": 1.0}  # no MQAR, so no MQAR constraint (an even seq_len)


def test_racing_needs_enough_distinct_seeds():
    with pytest.raises(ConfigError, match="racing needs 5 training seeds but stage1.seeds and racing.seeds give 3"):
        parse_config({"fitness": {"racing": {"seeds": [1, 2], "baseline_seeds": 5, "min_seeds": 3}}})
    with pytest.raises(ConfigError, match="must all differ"):
        parse_config({"fitness": {"racing": {"seeds": [0, 1, 2]}}})
    with pytest.raises(ConfigError, match="min_seeds .4. must not exceed baseline_seeds .3."):
        parse_config({"fitness": {"racing": {"min_seeds": 4}}})


def test_llm_backend_keys_are_checked_per_backend():
    with pytest.raises(ConfigError, match="needs base_url"):
        parse_config({"llm": {"backend": "openai", "model": "qwen"}})
    with pytest.raises(ConfigError, match="kv_cache_gb do\\(es\\) not apply to backend = 'openai'"):
        parse_config({"llm": {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1", "kv_cache_gb": 4}})
    with pytest.raises(ConfigError, match="parallel do\\(es\\) not apply to backend = 'vllm'"):
        parse_config({"llm": {"parallel": 4}})
    with pytest.raises(ConfigError, match="not a registry model"):
        parse_config({"llm": {"model": "gpt-4o"}})
    with pytest.raises(ConfigError, match="api_key_env"):
        parse_config({"llm": {"backend": "openai", "base_url": "http://h/v1", "api_key_env": "not a name"}})
    served = parse_config({"llm": {"backend": "openai", "base_url": "http://127.0.0.1:11434/v1",
                                   "model": "qwen2.5-coder:1.5b", "api_key_env": "OLLAMA_KEY"}})
    assert served.llm.parallel == 8 and served.llm.dtype is None
    text = dump_config(served)
    assert "OLLAMA_KEY" in text and "kv_cache_gb" not in text and parse_config(tomllib.loads(text)) == served
    local = parse_config({"llm": {"backend": "llamacpp", "model": "~/models/coder.gguf", "threads": 2}})
    assert local.llm.parallel == 8 and local.llm.threads == 2
    assert parse_config({}).llm.kv_cache_gb == 2  # vllm: its defaults filled in
    with pytest.raises(ConfigError, match="speculative do\\(es\\) not apply to backend = 'vllm'"):
        parse_config({"llm": {"speculative": "ngram"}})
    with pytest.raises(ConfigError, match="max_model_len do\\(es\\) not apply to backend = 'openai'"):
        parse_config({"llm": {"backend": "openai", "base_url": "http://h/v1", "max_model_len": 4096}})
    with pytest.raises(ConfigError, match="must not hold credentials"):
        parse_config({"llm": {"backend": "openai", "base_url": "http://me:pw@h/v1"}})
    assert served.llm.max_model_len is None and local.llm.max_model_len == 3072


def test_llm_settings_move_to_another_backend_without_its_keys():
    from operators.settings import LLMSettings

    local = LLMSettings(kv_cache_gb=4, max_tokens=300).on_backend("llamacpp", parallel=2)
    assert (local.backend, local.parallel, local.kv_cache_gb, local.max_tokens, local.max_model_len) == \
        ("llamacpp", 2, None, 300, 3072)
    served = local.on_backend("openai", base_url="http://127.0.0.1:8000/v1", model="qwen")
    assert served.max_model_len is None and served.parallel == 2 and served.threads is None
    assert served.on_backend("vllm", model="qwen2.5-coder-0.5b").kv_cache_gb == 2  # the default, not the 4 dropped
