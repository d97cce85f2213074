"""The trusted trainer's learning-rate sweep: one training per rate, the model with the lowest
validation loss kept (the same model a single training at that rate gives), its rate and the
validation losses reported, each rate counted in the budget; a Mixer whose parameters change shape
between the sweep's trainings is rejected."""
import pytest

from evo.budget import trainings
from evo.seeds import load_seeds
from fitness.checks import CheckFailed
from fitness.settings import StageSettings
from fitness.testset import train_and_score
from genomes import SECRET
from records import Evaluation

TINY = dict(d_model=16, n_layers=1, seq_len=32, num_kv_pairs=2, vocab_size=64, batch_size=16, steps=60,
            eval_batches=1)


def test_sweep_keeps_the_model_of_the_best_validation_loss():
    code = dict(load_seeds())["delta_rule"]
    swept = train_and_score(code, StageSettings(**TINY, lr_sweep=[1e-5, 1e-2]), 0, SECRET)
    losses = swept["val_loss_by_lr"]
    assert swept["lr_trials"] == 2 and set(losses) == {"1e-05", "0.01"}
    best = min(losses, key=losses.get)
    assert swept["lr"] == float(best) and swept["val_loss"] == pytest.approx(losses[best])
    alone = train_and_score(code, StageSettings(**TINY, lr=float(best)), 0, SECRET)
    assert swept["test_loss"] == pytest.approx(alone["test_loss"]) and swept["score"] == alone["score"]
    assert swept["val_loss"] < max(losses.values())  # the rates really differ: 1e-5 barely moves the model


def test_a_mixer_that_changes_shape_between_trainings_is_rejected():
    code = '''
import torch
from torch import nn

class Mixer(nn.Module):
    built = 0

    def __init__(self, d_model, n_heads):
        super().__init__()
        Mixer.built += 1
        # builds: the checks' Mixer, then one per training: the second training's has a bias
        self.proj = nn.Linear(d_model, d_model, bias=Mixer.built > 2)

    def forward(self, x):
        return self.proj(x)
'''
    with pytest.raises(CheckFailed, match="changed shape"):
        train_and_score(code, StageSettings(**TINY, lr_sweep=[1e-2, 1e-6]), 0, SECRET)  # the first is best


def test_rates_must_differ_and_count_in_the_budget():
    with pytest.raises(ValueError, match="distinct rates"):
        StageSettings(**TINY, lr_sweep=[1e-3, 1e-3])
    ev = Evaluation("g", 1, 0, "ok", 0.5, "", 10, {"launch": {}, "lr_trials": 3}, 1.0)
    assert trainings(ev) == 3
    assert trainings(Evaluation("g", 1, 0, "ok", 0.5, "", 10, {"launch": {}}, 1.0)) == 1
