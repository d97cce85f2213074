"""`evo evaluate GENOME.py`: one genome, exactly as the search evaluates it, via a subprocess."""
import json
import os
import subprocess
import sys

import pytest
import tomli_w

from fitness.containment import LAYERS
from genomes import TINY

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = os.path.join(PROJECT, "evo", "seeds", "short_conv.py")
TINY_CONFIG = tomli_w.dumps({"fitness": {
    "device": "cpu",
    "checks": {"complexity_lengths": [64, 128], "complexity_repeats": 2},
    "stage1": TINY,
    "stage2": dict(TINY, steps=2, seeds=[0, 1]),
}})
HOSTILE = """
import torch
import torch.nn as nn
import torch.nn.functional as F
F.cross_entropy = lambda *a, **k: torch.zeros(())
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
    def forward(self, x):
        return self.proj(x)
"""
NON_CAUSAL = HOSTILE.replace("F.cross_entropy = lambda *a, **k: torch.zeros(())\n", "").replace(
    "return self.proj(x)", "return self.proj(x).flip(1).cumsum(1).flip(1)")


def evo_evaluate(*args, timeout=180):
    proc = subprocess.run([sys.executable, "-m", "evo.evaluate_cmd", *args], cwd=PROJECT, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CONFIG)
    return str(path)


def test_seed_json(config):
    rc, out, err = evo_evaluate(SEED, "--config", config, "--json")
    assert rc == 0, (out, err)
    res = json.loads(out)  # exactly one JSON object on stdout
    assert res["status"] == "ok" and res["stage"] == 1 and res["reason"] == ""
    assert 0.0 <= res["score"] <= 1.0 and res["params"] > 0
    (ev,) = res["evaluations"]  # stage 1: the stage's first seed, like the search
    assert ev["seed"] == 0 and ev["timings"]["wall_s"] > 0 and "train_wall_s" in ev["timings"]
    assert set(ev["metrics"]["complexity"]["forward_ms"]) == {"32", "64", "128"}  # the stage's length too
    assert {name for name, layer in res["containment"].items() if layer["held"]} == set(LAYERS)


def test_prints_the_containment_layers(config):
    rc, out, err = evo_evaluate(SEED, "--config", config)
    assert rc == 0, (out, err)
    for name in LAYERS:
        assert f"  {name:<11} held" in out, out


def test_seed_text_stage2_set_override(config):
    # stage 2 trains every seed of the stage; --set overrides a config key; --seed picks one
    rc, out, err = evo_evaluate(SEED, "--config", config, "--stage", "2", "--set", "fitness.stage2.steps=1")
    assert rc == 0, (out, err)
    assert "stage 2" in out and "seed 0: ok" in out and "seed 1: ok" in out and "status ok: score" in out
    rc, out, err = evo_evaluate(SEED, "--config", config, "--stage", "2", "--seed", "7", "--json")
    assert rc == 0, (out, err)
    assert [e["seed"] for e in json.loads(out)["evaluations"]] == [7]


def test_hostile_rejected_by_policy(config, tmp_path):
    genome = tmp_path / "hostile.py"
    genome.write_text(HOSTILE)
    rc, out, err = evo_evaluate(str(genome), "--config", config, "--json")
    assert rc == 1, (out, err)
    res = json.loads(out)
    assert res["status"] == "rejected" and res["score"] is None
    assert "policy: line 5: assigning to an attribute of anything but `self`" in res["reason"]
    rc, out, err = evo_evaluate(str(genome), "--config", config)
    assert rc == 1 and "status rejected: policy: line 5" in out and "reason:" in out


def test_non_causal_rejected_by_checks(config, tmp_path):
    genome = tmp_path / "future.py"
    genome.write_text(NON_CAUSAL)
    rc, out, err = evo_evaluate(str(genome), "--config", config, "--json")
    assert rc == 1, (out, err)
    res = json.loads(out)
    assert res["status"] == "rejected" and "check failed: not causal" in res["reason"]


def test_bad_input(config, tmp_path):
    rc, _, err = evo_evaluate(str(tmp_path / "missing.py"), "--config", config)
    assert rc == 2 and "cannot read" in err
    rc, _, err = evo_evaluate(SEED, "--config", config, "--set", "fitness.stage1.steps=-1")
    assert rc == 2 and "steps" in err
