"""What a step spent, and which budget limit stops a run."""
from evo.budget import Spent, exhausted, step_spent
from evo.config import BudgetSettings
from operators.backends import Completion
from operators.researcher import Proposal
from records import Evaluation


def proposal(tokens: tuple[int, int] | None, cached: bool = False) -> Proposal:
    completion = Completion("x", prompt_tokens=tokens[0], completion_tokens=tokens[1], cached=cached) if tokens else None
    return Proposal("code", "", "llm_mutate" if tokens else "classic_add_skip", (), "", None, completion)


def test_a_step_counts_tokens_including_cached_answers_and_only_sandboxed_evaluations():
    sandboxed = {"launch": "fork", "protocol": 2}
    evaluations = [Evaluation("a", 1, 0, "ok", 0.5, metrics=sandboxed, wall_s=2.0),
                   Evaluation("a", 1, 1, "failed", metrics=sandboxed, wall_s=1.0),
                   Evaluation("b", 1, 0, "ok", 0.5, metrics={**sandboxed, "reused_from": "a"}, wall_s=2.0),
                   Evaluation("c", 1, 0, "rejected", metrics={"protocol": 2}),  # the static policy: no sandbox
                   Evaluation("d", 1, 0, "rejected", reason="near-duplicate"),
                   Evaluation("a", 2, 0, "ok", 0.4, metrics=sandboxed, wall_s=5.0)]
    spent = step_spent([proposal((100, 50)), proposal((80, 40), cached=True), proposal(None)], evaluations, 9.5, 3.25)
    assert (spent.llm_calls, spent.llm_cached, spent.prompt_tokens, spent.completion_tokens) == (2, 1, 180, 90)
    assert (spent.evaluations_stage1, spent.evaluations_stage2, spent.evaluation_s) == (2, 1, 8.0)
    assert spent.steps == 1 and spent.wall_s == 9.5 and spent.tokens == 270 and spent.llm_s == 3.25
    total = spent + spent
    assert total.evaluations == 6 and total.llm_s == 6.5 and Spent.from_dict(total.as_dict()) == total
    assert Spent.from_dict({"steps": 2}).llm_s == 0.0  # a checkpoint written before LLM seconds were recorded


def test_each_limit_stops_at_its_own_count():
    used = Spent(steps=3, prompt_tokens=900, completion_tokens=100, evaluations_stage1=20, evaluations_stage2=4,
                 wall_s=60.0)
    assert exhausted(BudgetSettings(max_steps=4), used, 0.5) is None
    assert exhausted(BudgetSettings(max_steps=3), used, 0.5) == "max_steps = 3 reached (3 spent)"
    assert exhausted(BudgetSettings(max_evaluations=24), used, 0.5).startswith("max_evaluations = 24 reached")
    assert exhausted(BudgetSettings(max_evaluations=25), used, 0.5) is None
    assert exhausted(BudgetSettings(max_llm_tokens=1000), used, 0.5).startswith("max_llm_tokens = 1000 reached")
    assert exhausted(BudgetSettings(max_wall_s=59.0), used, 0.5).startswith("max_wall_s = 59.0 reached")
    assert exhausted(BudgetSettings(max_steps=9, target_score=0.5), used, 0.5).startswith("target_score = 0.5")
    assert exhausted(BudgetSettings(max_steps=9, target_score=0.6), used, 0.5) is None
    assert exhausted(BudgetSettings(max_steps=9, target_score=0.6), used, None) is None
