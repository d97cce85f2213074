"""The engine's test set: derived from the secret (not regenerable from public seeds), twins
that share a prefix through a scored position, labels never sent, and every kind of bad output
from a worker refused before it could become a score."""
import numpy as np
import pytest
import torch

from fitness import testset
from fitness.settings import StageSettings
from fitness.tasks.mqar import MQAR
from genomes import SECRET

STAGE = StageSettings(d_model=32, seq_len=64, num_kv_pairs=4, vocab_size=512, batch_size=16, eval_batches=4)


def oracle(tests: testset.TestSet, twin_noise: float = 0.0) -> list:
    """The outputs a perfect causal model would return: all mass on the target; a twin answers
    exactly as its original at the compared positions, plus `twin_noise`."""
    outputs = []
    for req, slot, token in zip(tests.requests, tests.label_slot, tests.label_token):
        k = req.k(tests.vocab_size)
        logp = np.full((req.n, k), -30.0, dtype=np.float32)
        argmax = np.zeros(req.n, dtype=np.int32)
        for e in range(req.n):
            j = slot[e] if slot[e] >= 0 else 0
            logp[e, j] = 0.0
            argmax[e] = token[e] if token[e] >= 0 else (req.candidates[e, 0] if req.candidates is not None else 0)
        outputs.append((logp, argmax))
    for a, ea, b, eb in tests.twins:
        outputs[b][0][eb] = outputs[a][0][ea] + twin_noise
        outputs[b][1][eb] = outputs[a][1][ea]
    return outputs


def test_same_secret_same_test_other_secret_other_test():
    a, b = testset.build(STAGE, "mqar", SECRET), testset.build(STAGE, "mqar", bytes(32))
    again = testset._build.__wrapped__(testset._stage_key(STAGE), "mqar", SECRET)  # rebuilt, not cached
    assert all(np.array_equal(x.inputs, y.inputs) for x, y in zip(a.requests, again.requests))
    assert not np.array_equal(a.requests[0].inputs, b.requests[0].inputs)


def test_training_settings_do_not_change_the_test():
    a = testset.build(STAGE, "mqar", SECRET)
    b = testset.build(STAGE.model_copy(update={"steps": 7, "lr": 0.1, "seeds": [3]}), "mqar", SECRET)
    assert all(np.array_equal(x.inputs, y.inputs) for x, y in zip(a.requests, b.requests))


def test_public_seeds_do_not_regenerate_it():
    tests = testset.build(STAGE, "mqar", SECRET)
    engine_rows = {tuple(row) for req in tests.requests for row in req.inputs.tolist()}
    task = MQAR(STAGE.vocab_size, STAGE.seq_len, STAGE.num_kv_pairs)
    for seed in [20250101, 0, 1, 2, 3]:  # protocol 1's test seed and training seeds
        gen = torch.Generator().manual_seed(seed)
        public = {tuple(row) for _ in range(8) for row in task.make_batch(gen, STAGE.batch_size).inputs.tolist()}
        assert not engine_rows & public


def test_requests_carry_no_labels_and_twins_share_a_prefix():
    tests = testset.build(STAGE, "mqar", SECRET)
    for req in tests.requests:
        assert set(vars(req)) == {"inputs", "request", "candidates", "replica"}  # what travels to the trainer
        assert req.inputs.dtype == np.int32 and req.request.dtype == np.uint8 and req.candidates.dtype == np.int32
    assert len(tests.twins) == STAGE.eval_batches * (STAGE.batch_size // testset.TWIN_FRACTION)
    for a, ea, b, eb in tests.twins:  # the original answered by the worker that trained, its twin by the other
        assert (tests.requests[a].replica, tests.requests[b].replica) == (0, 1) and len(ea) == len(eb) >= 1
        ra, rb = tests.requests[a], tests.requests[b]
        rows_a, pos_a = np.nonzero(ra.request)
        rows_b, pos_b = np.nonzero(rb.request)
        row_a, row_b = rows_a[ea[0]], rows_b[eb[0]]
        t = pos_a[ea[-1]]  # the last compared position is the secret t: a scored (query) position
        assert tests.label_slot[a][ea[-1]] >= 0 and tests.label_slot[b][eb[-1]] == -1  # the twin is not scored
        assert np.array_equal(ra.inputs[row_a, : t + 1], rb.inputs[row_b, : t + 1])
        assert not np.array_equal(ra.inputs[row_a], rb.inputs[row_b])


def test_oracle_scores_one_and_uniform_scores_log_k():
    tests = testset.build(STAGE, "mqar", SECRET)
    perfect = tests.score(oracle(tests), 1e-3)
    assert perfect["test_accuracy"] == perfect["score"] == 1.0 and perfect["test_loss"] == 0.0
    assert perfect["causal_after_training"] and perfect["test_positions"] == 4 * 16 * 4
    uniform = [(np.full_like(lp, -np.log(lp.shape[1])), am) for lp, am in oracle(tests)]
    assert tests.score(uniform, 1e-3)["test_loss"] == pytest.approx(np.log(STAGE.num_kv_pairs))


def test_twin_that_answers_differently_is_not_causal():
    tests = testset.build(STAGE, "mqar", SECRET)
    verdict = tests.score(oracle(tests, twin_noise=-0.01), 1e-3)
    assert not verdict["causal_after_training"] and verdict["causal_max_diff"] == pytest.approx(0.01, rel=1e-3)
    assert tests.score(oracle(tests, twin_noise=-1e-5), 1e-3)["causal_after_training"]


@pytest.mark.parametrize("corrupt,match", [
    (lambda lp, am: (lp[:-1], am), "shape"),
    (lambda lp, am: (lp.astype(np.float64), am), "float32"),
    (lambda lp, am: (np.where(lp == 0, np.nan, lp).astype(np.float32), am), "NaN"),
    (lambda lp, am: (lp + 1.0, am), "above 0"),
    (lambda lp, am: (np.full_like(lp, -0.1), am), "sum to more than 1"),
    (lambda lp, am: (lp, am + 10_000), "outside the vocabulary"),
    (lambda lp, am: (lp, am.astype(np.int64)), "int32"),
])
def test_bad_outputs_refused(corrupt, match):
    tests = testset.build(STAGE, "mqar", SECRET)
    logp, argmax = corrupt(*oracle(tests)[0])
    assert match in tests.check_outputs(0, logp, argmax)


def test_full_vocabulary_must_be_a_distribution():
    lm = StageSettings(task="shakespeare", seq_len=32, batch_size=8, eval_batches=2)
    tests = testset.build(lm, "shakespeare", SECRET)
    req = tests.requests[0]
    assert req.candidates is None and req.k(tests.vocab_size) == 256
    half = np.full((req.n, 256), np.log(0.5 / 256), dtype=np.float32)  # sums to 1/2
    assert "do not sum to 1" in tests.check_outputs(0, half, np.zeros(req.n, np.int32))
    assert tests.score(oracle(tests), 1e-3)["score"] == 1.0


def test_lm_twins_ask_for_an_interior_position_hidden_among_decoys():
    lm = StageSettings(task="shakespeare", seq_len=32, batch_size=16, eval_batches=4)
    tests = testset.build(lm, "shakespeare", SECRET)
    interior = 0
    for req in tests.requests:
        asked = req.request.astype(bool)
        assert asked[:, -1].all()  # every row asks for its end
        if req.replica == 0:  # the originals' interior requests, and as many decoys beside them
            interior += int(asked[:, :-1].any(axis=1).sum())
    assert interior == 2 * len(tests.twins)
