"""Multi-query associative recall (MQAR), the Zoology synthetic (Arora et al. 2023).

Each example starts with `kv` key-value pairs (keys from the lower half of the vocabulary,
values from the upper half), then the keys are asked again at power-law distributed gaps
among random filler tokens; at each query position the model must output the key's value.
Only query positions are scored, so the backbone computes logits only there. The answer to a
query is the value next to the first occurrence of its key, never a later token, so a look-ahead
cannot read it; the candidates the worker returns log-probabilities for are the row's `kv`
context values (information the inputs already hold).
"""
from __future__ import annotations

import dataclasses

import torch

from fitness.tasks import Batch


def _distinct(g: torch.Generator, rows: int, k: int, low: int, high: int) -> torch.Tensor:
    """(rows, k) integers in [low, high), distinct within each row (redraws rows with repeats)."""
    if 4 * k > high - low:  # dense case: a random permutation per row
        return torch.rand(rows, high - low, generator=g).argsort(dim=1)[:, :k] + low
    out = torch.randint(low, high, (rows, k), generator=g)
    while True:
        srt = out.sort(dim=1).values
        bad = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
        if not bad.any():
            return out
        out[bad] = torch.randint(low, high, (int(bad.sum()), k), generator=g)


@dataclasses.dataclass
class MQAR:
    """MQAR generator for one vocab_size and one (seq_len, num_kv_pairs) slice, or several `slices`
    as in Zoology (each training batch from a slice drawn at random; the test set has every slice,
    with rows in inverse proportion to kv so each slice asks about as many queries); deterministic
    per torch.Generator."""

    vocab_size: int = 8192
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    slices: tuple[tuple[int, int], ...] = ()  # (seq_len, num_kv_pairs), distinct lengths; () the one above

    @classmethod
    def from_stage(cls, stage) -> "MQAR":
        """Build from StageSettings."""
        slices = tuple((int(t), int(kv)) for t, kv in stage.mqar_slices or ())
        return cls(vocab_size=stage.vocab_size, seq_len=stage.seq_len, num_kv_pairs=stage.num_kv_pairs, slices=slices)

    def all_slices(self) -> tuple[tuple[int, int], ...]:
        """The (seq_len, num_kv_pairs) slices trained and tested on."""
        return self.slices or ((self.seq_len, self.num_kv_pairs),)

    def make_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Draw one batch of MQAR examples (Zoology layout, labels aligned with the query key)."""
        slices = self.all_slices()
        t, kv = slices[int(torch.randint(len(slices), (1,), generator=generator))] if len(slices) > 1 else slices[0]
        return self._batch(generator, batch_size, t, kv)

    def _batch(self, generator: torch.Generator, batch_size: int, t: int, kv: int) -> Batch:
        g, b, v = generator, batch_size, self.vocab_size
        half = v // 2
        keys = _distinct(g, b, kv, 1, half)  # keys in [1, half)
        values = _distinct(g, b, kv, half, v)  # values in [half, v)
        context = 2 * kv
        space = (t - context) // 2
        p = self.power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (self.power_a - 1)
        gaps = torch.multinomial(p.expand(b, space), kv, replacement=False, generator=g)
        pos = context + 2 * gaps  # where each key is asked again
        inputs = torch.randint(v, (b, t), generator=g)  # random filler everywhere else
        inputs[:, 0:context:2] = keys
        inputs[:, 1:context:2] = values
        inputs.scatter_(1, pos, keys)
        targets = torch.full((b, t), -100, dtype=torch.long)
        targets.scatter_(1, pos, values)
        mask = torch.zeros(b, t, dtype=torch.bool)
        mask.scatter_(1, pos, True)
        return Batch(inputs, targets, mask)

    def test_batches(self, generator: torch.Generator, rows: int, n_batches: int) -> list[Batch]:
        """Held-out batches: `n_batches` draws of `rows` examples from the engine's generator, per slice
        (several slices: rows × smallest kv / the slice's kv, at least one)."""
        slices = self.all_slices()
        low = min(kv for _, kv in slices)
        return [self._batch(generator, max(1, rows * low // kv), t, kv) for t, kv in slices for _ in range(n_batches)]

    def candidates(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, kv): for each scored position (row-major), the values of its row's key-value pairs."""
        kv = dict(self.all_slices())[inputs.shape[1]]
        values = inputs[:, 1:2 * kv:2]
        return values.repeat_interleave(mask.sum(dim=1), dim=0)

    def continue_after(self, row: torch.Tensor, scored: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        """The row with fresh random filler after position t; the scored (query) positions keep
        their keys, so the copy alone is a valid example asking the same questions."""
        out = row.clone()
        filler = torch.randint(self.vocab_size, (len(row),), generator=generator)
        redraw = ~scored.clone()
        redraw[: t + 1] = False
        out[redraw] = filler[redraw]
        return out

    def metrics(self, loss_nats: float, accuracy: float) -> dict:
        """Score = accuracy at the query positions."""
        return {"score": accuracy}
