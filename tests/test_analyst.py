"""The analyst's tally of a step's children: counts, pass rate, mean score change against the first
parent, best and worst child per directive, operator and edit format; a gist that names what
raised the score and what failed, cumulative over steps, short, and the same for the same input
(also after a JSON round trip, as a resumed run reads it back)."""
import json

from operators.analyst import Analysis, Outcome, analyse, label, reason_kind
from operators.settings import DEFAULT_DIRECTIVES

SOFTPLUS, RELU2, NORMALISE, SCALE = DEFAULT_DIRECTIVES[:4]
GATE = DEFAULT_DIRECTIVES[5]
NAME_ERROR = "failed: error: NameError: name 'qg' is not defined (genome line 36: `num.append(qg @ s)`)"


def mutate(directive, parent, score, failure="", fmt="full", motivation="", gid="", repaired=False):
    return Outcome("llm_mutate", directive, fmt, (parent,), score, failure, motivation, gid, repaired)


STEP1 = [
    mutate(SOFTPLUS, 0.50, 0.60, motivation="softplus keeps the scores positive and smooth", gid="a"),
    mutate(SOFTPLUS, 0.40, 0.45, fmt="diff", motivation="softplus", gid="b"),
    mutate(RELU2, 0.50, None, NAME_ERROR, gid="c"),
    mutate(RELU2, 0.50, None, "rejected: near-duplicate of cb18756a46ef (cosine 0.9915 >= threshold 0.99); "
                              "make a different change", fmt="diff", gid="d"),
    mutate(NORMALISE, 0.50, 0.30, motivation="unit-norm queries", gid="e", repaired=True),
    Outcome("llm_crossover", "crossover: add one idea of B to A", "full", (0.5, 0.4), None,
            "parse: no ```python block in the reply"),
    Outcome("classic_swap_activation", "swap_activation", "classic", (0.5,), 0.52, motivation="classic edit",
            genome_id="f"),
]


def test_counts_pass_rate_mean_change_and_best_and_worst_per_table():
    a = analyse(1, STEP1)
    softplus, relu2 = a.this["directive"][SOFTPLUS], a.this["directive"][RELU2]
    assert (softplus.children, softplus.passed, softplus.pass_rate) == (2, 2, 1.0)
    assert abs(softplus.mean_delta - (0.10 + 0.05) / 2) < 1e-12
    assert softplus.best.genome_id == "a" and softplus.worst.genome_id == "b"
    assert softplus.best.motivation.startswith("softplus keeps")
    assert (relu2.children, relu2.passed, relu2.mean_delta, relu2.best) == (2, 0, None, None)
    assert relu2.failures == {"NameError: name 'qg' is not defined": 1,
                              "near-duplicate of <id>": 1}
    assert "swap_activation" not in a.this["directive"]  # directives are the LLM's; classic edits are operators
    ops = a.this["operator"]
    assert (ops["llm_mutate"].children, ops["llm_mutate"].passed, ops["llm_mutate"].repaired) == (5, 3, 1)
    assert ops["classic_swap_activation"].passed == 1 and ops["llm_crossover"].pass_rate == 0.0
    assert {k: (g.children, g.passed) for k, g in a.this["edit_format"].items()} == {
        "classic": (1, 1), "diff": (2, 1), "full": (4, 2)}
    everything = a.this["all"][""]
    assert (everything.children, everything.passed) == (7, 4)
    assert everything.best.genome_id == "a" and everything.worst.genome_id == "e"
    assert a.total == a.this and a.first_step == a.step == 1


def test_gist_names_the_best_directive_the_worst_and_the_failing_one_shortly():
    gist = analyse(1, STEP1).gist
    lines = gist.splitlines()
    assert lines[0].startswith("In step 1: 7 children, 4 scored.")
    assert lines[1].startswith("Raised the score: " + label(SOFTPLUS) + " (+0.0750, 2/2 scored)")
    assert "F.softplus(x)" in lines[1]
    assert lines[2].startswith("Lowered the score: Normalise queries and keys") and "(-0.2000)" in lines[2]
    assert lines[3].startswith("Rarely scored, avoid: Use the feature map F.relu(x) ** 2")
    assert "(0/2 scored, failed with: " in lines[3]
    assert lines[4] == "Best change so far (+0.1000): softplus keeps the scores positive and smooth"
    assert "Most common failure" not in gist  # no reason was seen twice
    assert len(gist) < 700 and len(lines) <= 5


def test_the_gist_is_cumulative_over_steps():
    first = analyse(1, STEP1)
    step2 = [mutate(RELU2, 0.5, None, NAME_ERROR.replace("36", "12")),
             mutate(GATE, 0.5, 0.9, motivation="gate the output", gid="g"),
             mutate(SOFTPLUS, 0.6, 0.55, gid="h")]
    second = analyse(2, step2, Analysis.from_dict(json.loads(json.dumps(first.as_dict()))))
    assert second.this["all"][""].children == 3 and second.total["all"][""].children == 10
    relu2 = second.total["directive"][RELU2]
    assert (relu2.children, relu2.failures["NameError: name 'qg' is not defined"]) == (3, 2)
    softplus = second.total["directive"][SOFTPLUS]
    assert softplus.children == 3 and abs(softplus.mean_delta - (0.10 + 0.05 - 0.05) / 3) < 1e-12
    assert softplus.best.genome_id == "a" and softplus.worst.genome_id == "h"  # the earlier step's best stays
    assert second.first_step == 1 and second.step == 2
    lines = second.gist.splitlines()
    assert lines[0] == ("In steps 1-2: 10 children, 6 scored. "
                        "Most common failure: NameError: name 'qg' is not defined (2x).")
    assert lines[1].startswith("Raised the score: Add an output gate (+0.4000, 1/1 scored); " + label(SOFTPLUS))
    assert "(0/3 scored" in second.gist and second.gist.endswith("(+0.4000): gate the output")


def test_deterministic_and_round_trips_through_json():
    a, b = analyse(1, STEP1), analyse(1, list(STEP1))
    assert a == b and json.dumps(a.as_dict()) == json.dumps(b.as_dict())
    assert Analysis.from_dict(json.loads(json.dumps(a.as_dict()))) == a
    later = [mutate(SCALE, 0.5, 0.51, gid="i")]
    assert analyse(2, later, a) == analyse(2, later, Analysis.from_dict(json.loads(json.dumps(a.as_dict()))))


def test_nothing_measured_gives_no_gist_and_labels_and_reasons_are_short():
    assert analyse(3, []).gist == ""
    only_failures = analyse(1, [mutate(RELU2, None, None, "timeout: over the wall deadline of 60 s")] * 2)
    assert only_failures.gist == ("In step 1: 2 children, 0 scored. Most common failure: over the wall deadline "
                                  "of N s (2x).\nRarely scored, avoid: " + label(RELU2)
                                  + " (0/2 scored, failed with: over the wall deadline of N s).")
    decay = "Multiply the causal score matrix of head h by a fixed decay gamma_h ** (i - j)"
    assert label(DEFAULT_DIRECTIVES[4]) == decay  # cut at the clause break after the brackets
    assert label(NORMALISE) == NORMALISE.rstrip(".")  # the comma inside brackets does not cut it
    assert label("crossover: add one idea of B to A") == "crossover"
    assert all(len(label(d)) <= 100 for d in DEFAULT_DIRECTIVES)
    assert reason_kind("rejected: complexity: cost grows as T**2.90 (CPU time at T = 128, 256), above "
                       "the limit") == "complexity: cost grows as T**N, above the limit"
    assert reason_kind("failed: error: RuntimeError: The size of tensor a (128) must match (genome line 3: `x`)"
                       ) == "RuntimeError: The size of tensor a (N) must match"
    assert reason_kind("") == "no score" and len(reason_kind("failed: " + "x " * 200)) <= 70
