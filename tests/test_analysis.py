"""evo.analysis: a step sees the analyses of the steps its visibility allows (the lag of the steady-state
mode), `llm.analyst = false` feeds no notes, and through the engine (a scripted LLM, tiny stages):
the analysis of step 1 is stored, every prompt of step 2 carries its gist, and `evo report` shows the latest;
in the steady-state mode step 3 reads step 1's, also after the run failed and was resumed."""
import html

import pytest
from genomes import TINY

from archive.store import Archive
from evo.analysis import edit_format, notes
from evo.breed import Breeder
from evo.config import parse_config
from evo.run import resume_run, start_run
from evo.run_report import write_run_report
from evo.seeds import load_seeds
from evo.strategies import Ask, Member
from operators.analyst import Analysis
from operators.backends import FunctionBackend
from operators.researcher import Proposal
from operators.variation import Variation
from records import Genome

SOFTMAX = dict(load_seeds())["softmax_attention"]
COPY, IMPORT = "Copy the softmax reference mixer exactly.", "Import the os module at the top."


def test_a_step_reads_the_latest_analysis_it_can_see():
    archive = Archive(":memory:")
    for step in (1, 2, 3):
        archive.add_step_analysis(step, f"gist {step}", {})
    assert notes(archive, 4, lag=0) == "gist 3"  # generational: every earlier step is finished
    assert notes(archive, 4, lag=1) == "gist 2"  # steady state: step 3 may still be training
    assert notes(archive, 2, lag=1) == "" and notes(archive, 1, lag=0) == ""


@pytest.mark.parametrize("kind,analyst,fed", [("llm", True, True), ("mix", True, True), ("llm", False, False),
                                              ("classic", True, False)])
def test_specs_carry_the_notes_for_the_llm_unless_the_analyst_is_off(kind, analyst, fed):
    archive = Archive(":memory:")
    archive.add_step_analysis(1, "softplus raised the score", {})
    cfg = parse_config({"operators": {"kind": kind}, "llm": {"analyst": analyst}})
    breeder = Breeder(cfg, archive, None, Variation(kind, cfg.operators.classic_share, object(), cfg.llm), None, lag=0)
    parent = Member(Genome("p", SOFTMAX, "h"), 0.5)
    assert breeder.spec(Ask((parent,)), (), step=2).notes == ("softplus raised the score" if fed else "")


def test_the_edit_format_is_read_where_it_is_said_else_full_for_the_llm():
    llm = Proposal("x", "", "llm_mutate", (), "d", None, None)
    assert edit_format(llm, None) == "full" and edit_format(llm, {"edit_format": "diff"}) == "diff"
    assert edit_format(Proposal("x", "", "classic_add_skip", (), "add_skip", None, None), {}) == "classic"


def reply(request) -> str:
    """A scripted LLM: the directive that comes last in the prompt decides (the notes may name both)."""
    user = request.messages[-1][1]
    code = "import os\n" + SOFTMAX if user.rfind(IMPORT) > user.rfind(COPY) else SOFTMAX
    return f"MOTIVATION: as asked\n```python\n{code}\n```"


def llm_config(tmp_path, analyst: bool = True, mode: str = "generational", steps: int = 2):
    """Steps of three LLM children at tiny stage settings: copies of a seed (their results are reused)
    and children the static policy rejects, so nothing but the seeds trains."""
    return parse_config({
        "run": {"runs_dir": str(tmp_path), "secret_file": str(tmp_path / "secret.key")},
        "operators": {"kind": "llm"}, "novelty": {"enabled": False},
        "search": {"strategy": "random", "mode": mode, "children": 3, "budget": {"max_steps": steps}},
        "llm": {"directives": [COPY, IMPORT], "free_form_prob": 0.0, "repair_attempts": 0, "analyst": analyst},
        "fitness": {"workers": 2, "checks": {"complexity_probe": False}, "promotion": {"top_k": 1},
                    "stage1": dict(TINY), "stage2": {**TINY, "seeds": [0]}}})


def llm_run(tmp_path, analyst: bool):
    backend = FunctionBackend(reply)
    run_dir = start_run(llm_config(tmp_path, analyst), "analyst" if analyst else "no-analyst", llm_backend=backend)
    return run_dir, backend


@pytest.mark.parametrize("analyst", [True, False])
def test_the_engine_stores_each_step_analysis_and_feeds_its_gist_to_the_next_step(tmp_path, analyst):
    run_dir, backend = llm_run(tmp_path, analyst)
    archive = Archive(run_dir / "archive.sqlite", readonly=True)
    stored = {a["step"]: a for a in archive.step_analyses()}
    assert sorted(stored) == [1, 2]  # stored with or without the analyst's notes fed
    first = Analysis.from_dict(stored[1]["data"])
    assert stored[1]["gist"] == first.gist and first.gist.startswith("In step 1: 3 children, ")
    assert first.this["all"][""].children == 3 and first.this["edit_format"].keys() == {"full"}
    assert set(first.this["directive"]) <= {COPY, IMPORT}
    rejected = first.this["all"][""].failures
    assert all(reason.startswith("policy:") for reason in rejected)
    second = Analysis.from_dict(stored[2]["data"])
    assert second.total["all"][""].children == 6 and second.gist.startswith("In steps 1-2: 6 children, ")
    step1, step2 = backend.calls  # one batched call per step (no repairs)
    assert len(step1) == len(step2) == 3
    assert all("Notes from earlier experiments" not in r.messages[-1][1] for r in step1)
    if analyst:
        assert all(first.gist in r.messages[-1][1] for r in step2)
        page = write_run_report(run_dir).read_text()  # the report shows the latest gist and tallies
        assert "<h2>Analyst</h2>" in page and html.escape(second.gist) in page and html.escape(IMPORT) in page
    else:
        assert all("Notes from earlier experiments" not in r.messages[-1][1] for r in step2)


def prompts(backend) -> list[str]:
    return sorted(r.messages[-1][1] for call in backend.calls for r in call)


def analyses(run_dir) -> list[tuple]:
    with Archive(run_dir / "archive.sqlite", readonly=True) as archive:
        return [(a["step"], a["gist"], a["data"]) for a in archive.step_analyses()]


def test_steady_state_notes_lag_a_step_and_a_resumed_run_feeds_the_same_ones(tmp_path):
    config = llm_config(tmp_path, mode="steady_state", steps=3)
    reference = FunctionBackend(reply)
    start_run(config, "reference", llm_backend=reference)
    noted = [p for p in prompts(reference) if "Notes from earlier experiments" in p]
    first_gist = analyses(tmp_path / "reference")[-1][1]
    assert len(noted) == 3 and all(first_gist in p for p in noted)  # only step 3's, with step 1's gist

    def fail_on_notes(request):  # the LLM fails once step 3 asks, after steps 1 and 2 are bred
        if "Notes from earlier experiments" in request.messages[-1][1]:
            raise RuntimeError("LLM down")
        return reply(request)

    interrupted, resumed = FunctionBackend(fail_on_notes), FunctionBackend(reply)
    with pytest.raises(RuntimeError, match="LLM down"):
        start_run(config, "resumed", llm_backend=interrupted)
    resume_run(tmp_path / "resumed", llm_backend=resumed)
    assert analyses(tmp_path / "resumed") == analyses(tmp_path / "reference")
    sent = prompts(interrupted) + prompts(resumed)  # the cache answers all but step 3's prompts, asked again
    assert sorted(set(sent)) == sorted(set(prompts(reference))) and prompts(resumed) == noted
