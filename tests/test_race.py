"""Racing on a real archive: who gets more training seeds, and when it stops (the training itself is
replaced by scores drawn from a table: this tests the rules, not the fitness)."""
import dataclasses
import statistics

import pytest
from genomes import stored_genome

from archive.store import Archive
from evo.race import race
from evo.score import Estimate, estimate, pooled_sd, selection_score
from evo.screen import Child, Visible
from fitness.settings import FitnessSettings
from records import Evaluation

SEEDS = [0, 101, 102, 103, 104]


def fitness(top_k=0, min_seeds=3):
    return FitnessSettings.model_validate({"promotion": {"top_k": top_k},
                                           "racing": {"min_seeds": min_seeds, "baseline_seeds": 3, "z": 2.0}})


@pytest.fixture
def archive(tmp_path):
    """The best seed genome: 0.80 ± 0.02 over three seeds (pooled SD 0.02)."""
    a = Archive(tmp_path / "a.sqlite")
    stored_genome(a, "best")
    a.add_evaluations([Evaluation("best", 1, s, "ok", v) for s, v in zip(SEEDS, (0.78, 0.80, 0.82))])
    return a


def child(archive, gid, scores_by_seed):
    """A step-1 child scored on seed 0; `train` gives it the table's score for each further seed."""
    g = stored_genome(archive, gid, "classic_add_skip", ("best",), 1)
    ev = Evaluation(gid, 1, 0, "ok", scores_by_seed[0])
    archive.add_evaluation(ev)
    return Child(g, evaluations=[ev]), scores_by_seed


def run(archive, kids, **settings):
    table = {c.genome.id: t for c, t in kids}
    asked = []

    def train(pairs):
        for c, seed in pairs:
            asked.append((c.genome.id, seed))
            ev = Evaluation(c.genome.id, 1, seed, "ok", table[c.genome.id][SEEDS.index(seed)])
            archive.add_evaluation(ev)
            c.evaluations.append(ev)

    race(1, [c for c, _ in kids], archive, fitness(**settings), Visible(1, 0), train)
    return asked


def test_pooled_sd_and_intervals():
    assert pooled_sd([[0.78, 0.80, 0.82], [0.5]]) == pytest.approx(0.02)
    assert pooled_sd([[0.5]]) == 0.0
    # weighted by degrees of freedom: variance 0.0004 on 2 dof, 0.0008 on 1 dof
    assert pooled_sd([[0.78, 0.80, 0.82], [0.50, 0.54]]) == pytest.approx((0.0016 / 3) ** 0.5)
    assert estimate([0.2, 0.5, 0.8], 0.02).sd == pytest.approx(0.3)  # its own spread, larger than the pool's
    assert estimate([0.2, 0.8], 0.02).sd == 0.02  # two seeds: the pool's
    e = Estimate(0.8, 4, 0.02)
    assert (e.se, e.low(2), e.high(2)) == (pytest.approx(0.01), pytest.approx(0.78), pytest.approx(0.82))


def test_a_lucky_draw_is_raced_until_the_noise_is_out(archive):
    lucky = child(archive, "lucky", [0.86, 0.79, 0.80, 0.78, 0.79])  # one good draw, then ordinary ones
    asked = run(archive, [lucky])
    assert [s for _, s in asked] == SEEDS[1:]  # overlaps the best's interval at every n: raced to the cap
    assert lucky[0].score == pytest.approx(statistics.fmean([0.86, 0.79, 0.80, 0.78, 0.79]))


def test_a_clear_winner_stops_at_min_seeds_and_a_clear_loser_gets_nothing(archive):
    winner = child(archive, "winner", [0.95, 0.96, 0.94, 0.95, 0.95])
    loser = child(archive, "loser", [0.40, 0.41, 0.39, 0.40, 0.40])
    asked = run(archive, [winner, loser])
    assert asked == [("winner", 101), ("winner", 102)]  # min_seeds = 3, then the intervals are apart


def test_the_steps_top_k_reach_min_seeds_even_when_they_do_not_contend(archive):
    middling = child(archive, "mid", [0.60, 0.61, 0.59, 0.60, 0.60])
    worse = child(archive, "worse", [0.50, 0.50, 0.50, 0.50, 0.50])
    asked = run(archive, [middling, worse], top_k=1)
    assert asked == [("mid", 101), ("mid", 102)]


def test_the_selection_score_takes_the_stage2_verdict_in_stage1_units():
    baseline = {"stage1": 0.80, "stage2": 0.60}
    assert selection_score([0.84, 0.86], [], baseline) == pytest.approx(0.85)
    assert selection_score([0.84, 0.86], [0.55, 0.57], baseline) == pytest.approx(0.76)  # worse than the seeds at stage 2
    assert selection_score([0.84, 0.86], [0.55], {"stage1": 0.80}) == pytest.approx(0.85)  # no stage-2 baseline yet
    assert selection_score([0.84, 0.86], [0.55, None], baseline) is None  # failing stage 2 keeps nothing


def test_a_step_redone_after_a_kill_races_as_the_first_try(archive, tmp_path):
    """The first try stored some racing seeds before the kill; the redo starts from the same
    archive plus those results and must ask for the same (child, seed) pairs, training only the rest."""
    table = {"a": [0.95, 0.93, 0.96, 0.94, 0.95], "b": [0.84, 0.81, 0.86, 0.80, 0.83]}
    first = run(archive, [child(archive, g, t) for g, t in table.items()])

    again = Archive(tmp_path / "again.sqlite")
    stored_genome(again, "best")
    again.add_evaluations([Evaluation("best", 1, s, "ok", v) for s, v in zip(SEEDS, (0.78, 0.80, 0.82))])
    kids = [child(again, g, t) for g, t in table.items()]
    stored = []
    for c, t in kids:  # what the killed try had stored: the child's first two racing seeds
        stored += [(c.genome.id, s) for g, s in first if g == c.genome.id][:2]
        evs = [Evaluation(c.genome.id, 1, s, "ok", t[SEEDS.index(s)]) for g, s in stored if g == c.genome.id]
        again.add_evaluations(evs)
        c.evaluations.extend(evs)
    redone = run(again, kids)
    assert len(first) > len(stored) and redone == [p for p in first if p not in stored]
    for c, _ in kids:
        assert sorted(e.seed for e in c.evaluations) == sorted([0] + [s for g, s in first if g == c.genome.id])


def test_a_copy_of_the_best_is_not_raced_against_itself(archive):
    g = stored_genome(archive, "copy", "llm_mutate", ("best",), 1)
    g = dataclasses.replace(g, code=archive.genome("best").code)
    evs = [dataclasses.replace(e, genome_id="copy") for e in archive.evaluations("best", stage=1)]
    asked = []
    race(1, [Child(g, evaluations=evs)], archive, fitness(), Visible(1, 0), lambda pairs: asked.extend(pairs))
    assert asked == []
