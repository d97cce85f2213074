"""MQAR generator: Zoology layout, deterministic per seed, separate train/test streams."""
import os

import pytest
import torch

from fitness.tasks.mqar import MQAR

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(seed, **kw):
    return MQAR(**kw).make_batch(torch.Generator().manual_seed(seed), 16)


def test_layout_and_labels():
    task = MQAR(vocab_size=512, seq_len=64, num_kv_pairs=4)
    b = task.make_batch(torch.Generator().manual_seed(0), 32)
    assert b.inputs.shape == b.targets.shape == b.mask.shape == (32, 64)
    assert (b.mask.sum(dim=1) == 4).all()
    assert ((b.targets != -100) == b.mask).all()
    keys, values = b.inputs[:, 0:8:2], b.inputs[:, 1:8:2]
    assert ((keys >= 1) & (keys < 256)).all() and ((values >= 256) & (values < 512)).all()
    for row in range(32):
        assert len(set(keys[row].tolist())) == 4 and len(set(values[row].tolist())) == 4
        pairs = dict(zip(keys[row].tolist(), values[row].tolist()))
        pos = b.mask[row].nonzero().flatten()
        assert (pos >= 8).all()
        for p in pos.tolist():  # the query token is a key; its target is that key's value
            assert b.targets[row, p].item() == pairs[b.inputs[row, p].item()]


def test_deterministic_and_seed_dependent():
    a, b, c = batch(1), batch(1), batch(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.inputs, c.inputs)


def test_test_side_candidates_and_twins():
    task = MQAR(vocab_size=8192, seq_len=128, num_kv_pairs=8)
    (b,) = task.test_batches(torch.Generator().manual_seed(0), 8, 1)
    assert (b.mask.sum(dim=1) == 8).all()
    cand = task.candidates(b.inputs, b.mask)
    assert cand.shape == (64, 8)  # for each query, the row's 8 values: information the inputs hold
    assert (cand == b.targets[b.mask][:, None]).any(dim=1).all()
    row, mask = b.inputs[0], b.mask[0]
    t = int(mask.nonzero()[0])
    twin = task.continue_after(row, mask, t, torch.Generator().manual_seed(1))
    assert torch.equal(twin[: t + 1], row[: t + 1]) and torch.equal(twin[mask], row[mask])
    assert not torch.equal(twin, row)
    assert task.metrics(2.0, 0.75) == {"score": 0.75}


def test_slices_train_on_each_and_test_on_all():
    task = MQAR(vocab_size=512, seq_len=128, slices=((32, 2), (64, 4), (128, 8)))
    g = torch.Generator().manual_seed(0)
    lengths = {task.make_batch(g, 4).inputs.shape[1] for _ in range(30)}
    assert lengths == {32, 64, 128}  # training batches come from every slice
    tests = task.test_batches(torch.Generator().manual_seed(1), 16, 2)
    assert [b.inputs.shape for b in tests] == [(16, 32)] * 2 + [(8, 64)] * 2 + [(4, 128)] * 2
    assert {int(b.mask.sum()) for b in tests} == {32}  # about as many queries per slice
    for b in tests:
        kv = {32: 2, 64: 4, 128: 8}[b.inputs.shape[1]]
        assert (b.mask.sum(dim=1) == kv).all()
        cand = task.candidates(b.inputs, b.mask)
        assert cand.shape == (int(b.mask.sum()), kv) and (cand == b.targets[b.mask][:, None]).any(dim=1).all()


def test_slices_in_the_stage_settings():
    from fitness.settings import StageSettings

    stage = StageSettings(seq_len=128, vocab_size=512, mqar_slices=[[64, 4], [128, 8]])
    assert MQAR.from_stage(stage).all_slices() == ((64, 4), (128, 8))
    with pytest.raises(ValueError, match="seq_len = the longest"):
        StageSettings(seq_len=256, vocab_size=512, mqar_slices=[[64, 4], [128, 8]])
    with pytest.raises(ValueError, match="4\\*kv <= T"):
        StageSettings(seq_len=128, vocab_size=512, mqar_slices=[[64, 20], [128, 8]])


def test_a_stage_of_slices_trains_and_scores():
    from fitness.settings import StageSettings

    stage = StageSettings(d_model=16, n_layers=1, seq_len=64, vocab_size=128, batch_size=16, steps=40, eval_batches=1,
                          mqar_slices=[[32, 2], [64, 4]])
    from evo.seeds import load_seeds
    from fitness.testset import train_and_score
    from genomes import SECRET

    metrics = train_and_score(dict(load_seeds())["delta_rule"], stage, 0, SECRET)
    assert 0.0 <= metrics["score"] <= 1.0 and metrics["test_positions"] == 32 + 32


def _train(name: str, stage) -> float:
    from evo.seeds import load_seeds
    from fitness.testset import train_and_score
    from genomes import SECRET

    torch.set_num_threads(1)  # as in the sandbox
    return train_and_score(dict(load_seeds())[name], stage, 0, SECRET)["score"]


@pytest.mark.slow
@pytest.mark.ci
def test_stage1_calibration():
    """The quickstart's stage 1 (the `default` preset: T=128, kv=8, d=64) separates the seeds as MQAR
    should (bench/README.md, "MQAR calibration"): softmax attention >= 0.95, linear attention
    clearly below it with the same budget (~1.5 minutes)."""
    from evo.config import load_config

    stage = load_config(os.path.join(PROJECT, "configs", "quickstart.toml")).fitness.stage1
    assert (stage.seq_len, stage.num_kv_pairs, stage.d_model) == (128, 8, 64)
    softmax, linear = _train("softmax_attention", stage), _train("linear_attention", stage)
    assert softmax >= 0.95, softmax
    assert linear < softmax - 0.2, (linear, softmax)
