"""Containment layers as a whole: the self-test sees every layer hold on this machine (spawned and
forked workers); a layer that cannot be applied stops evaluations and runs with a message naming
it and the key that allows it; with that key they run, and say the layer is off."""
import os
import subprocess
import sys

import pytest
import tomli_w

from evo.seeds import load_seeds
from fitness.containment import LAYERS, SandboxUnavailable, require
from fitness.evaluate import evaluate
from fitness.selftest import require_held, self_test
from fitness.settings import CheckSettings, FitnessSettings
from genomes import SECRET, TINY, ServerPool

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FS = FitnessSettings.model_validate({"device": "cpu", "stage1": dict(TINY, steps=5),
                                     "checks": CheckSettings(complexity_probe=False).model_dump()})
NO_CGROUP = FS.model_copy(update={"sandbox": FS.sandbox.model_copy(update={"cgroup_root": "/nonexistent/cgroup"})})


@pytest.mark.parametrize("launch", ["spawn", "fork"])
def test_every_layer_holds_here(launch):
    pool = ServerPool(1) if launch == "fork" else None
    try:
        report = self_test(FS, "cpu", server=pool._all[0] if pool else None)
    finally:
        if pool:
            pool.close()
    assert {name for name, r in report.items() if r["held"]} == set(LAYERS), report
    require_held(report, [])
    assert "ENOSPC" in report["filesystem"]["seen"] and "EPERM" in report["seccomp"]["seen"]
    assert "EACCES" in report["landlock"]["seen"] and "interfaces ['lo']" in report["namespaces"]["seen"]


def test_require_names_the_layer_and_the_key():
    layers = {name: {"active": True, "detail": "ok"} for name in LAYERS}
    layers["seccomp"] = {"active": False, "detail": "libseccomp not found"}
    with pytest.raises(SandboxUnavailable, match=r"lacks containment layer\(s\) seccomp \(seccomp: libseccomp not "
                                                 r"found\).*allow_missing = \['seccomp'\]"):
        require(layers, [])
    require(layers, ["seccomp"])
    del layers["user"]
    with pytest.raises(SandboxUnavailable, match="user: not reported"):
        require(layers, ["seccomp"])


def test_a_missing_layer_stops_the_evaluation_unless_allowed():
    code = dict(load_seeds())["short_conv"]
    with pytest.raises(SandboxUnavailable, match=r"cgroup.*/nonexistent/cgroup.*allow_missing = \['cgroup'\]"):
        evaluate("g", code, 1, None, 0, NO_CGROUP, SECRET)
    report = self_test(NO_CGROUP, "cpu")
    assert not report["cgroup"]["held"] and all(report[n]["held"] for n in LAYERS if n != "cgroup")
    allowed = NO_CGROUP.model_copy(update={"sandbox": NO_CGROUP.sandbox.model_copy(update={"allow_missing": ["cgroup"]})})
    ev = evaluate("g", code, 1, None, 0, allowed, SECRET)
    assert ev.status == "ok", ev.reason
    assert ev.metrics["containment"] == {**{n: True for n in LAYERS}, "cgroup": False}


def _cli(*args, cwd=PROJECT):
    return subprocess.run([sys.executable, "-m", "evo.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_a_run_stops_naming_the_layer_and_evaluate_runs_with_the_key(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(tomli_w.dumps({"run": {"runs_dir": str(tmp_path / "runs")}, "fitness": {
        "device": "cpu", "stage1": dict(TINY, steps=5), "checks": {"complexity_probe": False},
        "sandbox": {"cgroup_root": "/nonexistent/cgroup"}}}))
    run = _cli("run", str(config), "--name", "stops")
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "lacks containment layer(s) cgroup" in run.stderr and "allow_missing = ['cgroup']" in run.stderr
    seed = os.path.join(PROJECT, "evo", "seeds", "short_conv.py")
    stopped = _cli("evaluate", seed, "--config", str(config))
    assert stopped.returncode == 2 and "cgroup" in stopped.stderr
    allowed = _cli("evaluate", seed, "--config", str(config), "--set", 'fitness.sandbox.allow_missing=["cgroup"]')
    assert allowed.returncode == 0, (allowed.stdout, allowed.stderr)
    assert "  cgroup      MISSING" in allowed.stdout and "status ok: score" in allowed.stdout
