"""A run on disk: a run scored under another fitness protocol refuses to resume, a run directory is
never overwritten by accident, and a run's secret can be shared (paired runs see the same test sets)."""
from pathlib import Path

import pytest

from archive.store import Archive
from evo.config import ConfigError, dump_config, load_config, parse_config
from evo.run import resume_run, start_run
from fitness.protocol import FITNESS_PROTOCOL

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_scored_under_another_protocol_does_not_resume(tmp_path):
    config = load_config(ROOT / "configs" / "quickstart.toml", [f'run.runs_dir="{tmp_path}"'])
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(dump_config(config))
    with Archive(run_dir / "archive.sqlite") as archive:
        archive.set_meta("fitness_protocol", FITNESS_PROTOCOL - 1)
    with pytest.raises(ConfigError, match=f"scored under fitness protocol {FITNESS_PROTOCOL - 1}.*start a new run"):
        resume_run(run_dir)
    with Archive(run_dir / "archive.sqlite", readonly=True) as archive:
        assert archive.get_meta("fitness_protocol") == FITNESS_PROTOCOL - 1  # nothing stored is changed


def test_an_existing_run_is_not_overwritten_and_a_missing_one_not_resumed(tmp_path):
    config = parse_config({"run": {"runs_dir": str(tmp_path)}})
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists: use `evo resume"):
        start_run(config, "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="not a run directory"):
        resume_run(tmp_path / "nothing")
