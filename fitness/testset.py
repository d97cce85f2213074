"""The held-out test of one stage, built and scored in the engine: the genome's process sees the
test inputs, never the labels, and never computes a number the engine keeps.

`build(stage, task_name, secret)` draws the task's test batches from a seed derived from the
engine's secret (fitness.secret), so nothing in the sandbox can regenerate them, while every
genome of a run (and of paired runs) gets the same test. It adds causality probes: for some
rows a twin whose inputs equal the row's up to a secret position t and differ after it (the
task's `continue_after`), and for as many other rows an exact copy. Twins and copies are
unscored and go in batches of their own, answered by the second worker (replica 1), a fresh
process that has only the trained parameters and never sees the originals. A copy must get the
same answers as its scored original at every requested position (an output that depends on
state the parameters do not carry, e.g. a model trained on the side, differs); a twin at
positions <= t (a look-ahead differs). t is one of the row's scored
positions where it has one before its end (so a look-ahead of a single token shows at t); else
it is an interior position that both rows then ask for, and as many other rows of the first
worker's batches ask for an unscored decoy position. Rows are shuffled with a secret
permutation. A causal model gives the same log-probabilities at positions <= t for a row and
its twin.

What goes to the worker per batch (`Request`): token ids, the positions whose outputs it must
return and, where the task restricts them, the candidate token ids. What comes back: for each
requested position the log-probabilities of the candidates (log-softmax over the whole
vocabulary, gathered) and the argmax over the whole vocabulary. `TestSet.score` checks those
arrays (finite, log-probabilities <= 0, probability mass <= 1, argmax a token id) and computes
accuracy, mean loss, the task's score and the causality verdict.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Callable

import numpy as np
import torch

from fitness.secret import derive_seed
from fitness.tasks import task_class

TWIN_FRACTION = 8  # one twin, and one copy, per this many rows (at least one each per batch)
LOGP_SLACK = 1e-3  # float32 rounding allowed above 0 for a log-probability / probability mass


@dataclasses.dataclass
class Request:
    """One batch sent to the worker."""

    inputs: np.ndarray  # (B, T) int32 token ids
    request: np.ndarray  # (B, T) uint8: 1 where outputs are returned (row-major order)
    candidates: np.ndarray | None  # (N, K) int32 token ids per requested position; None: the whole vocabulary
    replica: int = 0  # the worker that answers it: 0 the one that trained, 1 the check (the twins)

    @property
    def n(self) -> int:
        """Number of requested positions."""
        return int(self.request.sum())

    def k(self, vocab_size: int) -> int:
        """Number of log-probabilities returned per requested position."""
        return vocab_size if self.candidates is None else int(self.candidates.shape[1])


@dataclasses.dataclass
class TestSet:
    """The requests, and what only the engine knows: labels and twin pairs."""

    task: str
    vocab_size: int
    requests: list[Request]
    label_slot: list[np.ndarray]  # per request (N,): index of the target among the candidates; -1 unscored
    label_token: list[np.ndarray]  # per request (N,): target token id; -1 unscored
    twins: list[tuple[int, np.ndarray, int, np.ndarray]]  # (request a, entries a, request b, entries b) compared
    copies: list[tuple[int, np.ndarray, int, np.ndarray]]  # the same for exact copies of scored rows
    metrics: Callable[[float, float], dict]  # the task's score and metrics from (mean loss, accuracy)

    def check_outputs(self, index: int, logp: np.ndarray, argmax: np.ndarray) -> str | None:
        """Why the arrays returned for request `index` are unusable, or None."""
        req = self.requests[index]
        shape = (req.n, req.k(self.vocab_size))
        if logp.shape != shape or logp.dtype != np.float32:
            return f"log-probabilities of shape {logp.shape} {logp.dtype}, expected {shape} float32"
        if argmax.shape != (req.n,) or argmax.dtype != np.int32:
            return f"argmax of shape {argmax.shape} {argmax.dtype}, expected ({req.n},) int32"
        if not np.isfinite(logp).all():
            return "log-probabilities contain NaN or infinity"
        if (logp > LOGP_SLACK).any():
            return f"log-probabilities above 0 (up to {float(logp.max()):.3g}): not a distribution"
        mass = np.logaddexp.reduce(logp.astype(np.float64), axis=1) if shape[1] else np.zeros(0)
        if (mass > LOGP_SLACK).any():
            return f"probabilities sum to more than 1 (up to {float(np.exp(mass.max())):.4g})"
        if req.candidates is None and (np.abs(mass) > 1e-2).any():
            return "log-probabilities over the whole vocabulary do not sum to 1"
        if ((argmax < 0) | (argmax >= self.vocab_size)).any():
            return f"argmax outside the vocabulary [0, {self.vocab_size})"
        return None

    def score(self, outputs: list[tuple[np.ndarray, np.ndarray]], tolerance: float) -> dict:
        """Engine-computed metrics from checked outputs, one (logp, argmax) per request.

        "score" (the task's, higher is better), "test_accuracy", "test_loss" (mean nats at the
        scored positions), "test_positions", "causal_after_training" with the largest
        log-probability difference of any twin pair ("causal_max_diff") against `tolerance`,
        "reproducible" with the largest difference between a scored row and its copy answered by
        the second worker ("reproduce_max_diff"), and "predictions_sha256" (equal for two models
        only if they answered bit for bit alike)."""
        nll, hits, n = 0.0, 0, 0
        for (logp, argmax), slot, token in zip(outputs, self.label_slot, self.label_token):
            scored = slot >= 0
            nll -= float(logp[scored, slot[scored]].astype(np.float64).sum())
            hits += int((argmax[scored] == token[scored]).sum())
            n += int(scored.sum())
        causal, causal_diff = _agree(outputs, self.twins, tolerance)
        reproducible, reproduce_diff = _agree(outputs, self.copies, tolerance)
        loss, accuracy = nll / n, hits / n
        digest = hashlib.sha256()
        for logp, argmax in outputs:
            digest.update(logp.tobytes())
            digest.update(argmax.tobytes())
        out = {"test_loss": loss, "test_accuracy": accuracy, "test_positions": n,
               "causal_after_training": causal, "causal_max_diff": causal_diff, "causal_pairs": len(self.twins),
               "reproducible": reproducible, "reproduce_max_diff": reproduce_diff, "copies": len(self.copies),
               "predictions_sha256": digest.hexdigest()[:16]}
        out.update(self.metrics(loss, accuracy))
        return out


def _agree(outputs: list, pairs: list, tolerance: float) -> tuple[bool, float]:
    """Whether every pair gave the same log-probabilities (within tolerance) and argmax at its
    compared entries, and the largest difference seen."""
    worst, ok = 0.0, True
    for a, ea, b, eb in pairs:
        (la, aa), (lb, ab) = outputs[a], outputs[b]
        diff = float(np.abs(la[ea] - lb[eb]).max()) if len(ea) else 0.0
        worst = max(worst, diff)
        ok = ok and diff <= tolerance and not bool((aa[ea] != ab[eb]).any())
    return ok, worst


def _stage_key(stage) -> str:
    return json.dumps(stage.model_dump(), sort_keys=True)


def build(stage, task_name: str, secret: bytes, twins: bool = True) -> TestSet:
    """The test set of `task_name` at `stage` (cached per stage, task, secret and twins). twins:
    add the causality twins (answered by the second worker) and the decoys hiding them."""
    return _build(_stage_key(stage), task_name, secret, twins)


@functools.lru_cache(maxsize=16)
def _build(stage_json: str, task_name: str, secret: bytes, twins: bool = True) -> TestSet:
    from fitness.settings import StageSettings

    stage = StageSettings.model_validate(json.loads(stage_json)).model_copy(update={"task": task_name, "tasks": None})
    task = task_class(task_name).from_stage(stage)
    # the seed depends on what shapes the data, not on training settings: stages that differ only
    # in steps, lr or seeds are scored on the same examples
    seed = derive_seed(secret, "test", task_name, stage.seq_len, stage.num_kv_pairs, stage.vocab_size,
                       stage.batch_size, stage.eval_batches, *([stage.mqar_slices] if stage.mqar_slices else []))
    gen = torch.Generator().manual_seed(seed)
    batches = task.test_batches(gen, stage.batch_size, stage.eval_batches)
    rows = [[(b.inputs[i], b.targets[i], b.mask[i].clone(), True) for i in range(len(b.inputs))] for b in batches]
    pairs = []  # (batch a, row a, batch b, row b, last compared position t, "twin" | "copy")
    n_twins = max(1, stage.batch_size // TWIN_FRACTION) if twins else 0
    checks_batch: dict[int, int] = {}  # length -> the batch of twins and copies of that length (second worker)
    for a, batch in enumerate(batches):
        picked = torch.randperm(len(batch.inputs), generator=gen)[:2 * n_twins].tolist()
        for k, i in enumerate(picked):
            inputs, targets, mask, _ = rows[a][i]
            length = len(inputs)
            if k < n_twins:  # a twin: t is a scored position where one exists before the end (MQAR: a
                # query), so a look-ahead of one token shows there; else (LM) an interior position, asked for
                inner = [p for p in mask.nonzero().flatten().tolist() if p < length - 1]
                t = inner[int(torch.randint(len(inner), (1,), generator=gen))] if inner else \
                    int(torch.randint(1, length - 1, (1,), generator=gen))
                kind, row = "twin", task.continue_after(inputs, mask, t, gen)
            else:  # an exact copy of the scored row, compared at every requested position
                kind, row, t = "copy", inputs.clone(), length - 1
            if length not in checks_batch:
                checks_batch[length] = len(rows)
                rows.append([])
            b = checks_batch[length]
            rows[b].append((row, torch.full_like(targets, -100), mask.clone(), False))
            pairs.append((a, i, b, len(rows[b]) - 1, t, kind))
    replicas = [0] * len(batches) + [1] * (len(rows) - len(batches))
    extra = _ask_at_probe_positions(rows, pairs, len(batches), gen)
    return _assemble(task, task_name, rows, replicas, pairs, extra, gen)


def _ask_at_probe_positions(rows, pairs, n_base: int, gen) -> dict[tuple[int, int], set[int]]:
    """Positions a pair is compared at that neither row already asks for (LM: rows are scored only
    at their end): both rows ask for t, and as many other rows of the first worker's batches ask
    for a random unscored decoy, so the originals' requests do not stand out there."""
    extra: dict[tuple[int, int], set[int]] = {}
    added = 0
    for a, i, b, j, t, kind in pairs:
        if kind == "twin" and not rows[a][i][2][: t + 1].any():
            extra.setdefault((a, i), set()).add(t)
            extra.setdefault((b, j), set()).add(t)
            added += 1
    candidates = [(a, i) for a in range(n_base) for i in range(len(rows[a])) if (a, i) not in extra]
    for k in torch.randperm(len(candidates), generator=gen)[:added].tolist():
        a, i = candidates[k]
        length = len(rows[a][i][0])
        extra.setdefault((a, i), set()).add(int(torch.randint(0, length - 1, (1,), generator=gen)))
    return extra


def _assemble(task, task_name, rows, replicas, pairs, extra, gen) -> TestSet:
    requests, slots, tokens = [], [], []
    where: dict[tuple[int, int], tuple[int, dict[int, int]]] = {}  # (batch, row) -> (request, position -> entry)
    for a, batch in enumerate(rows):
        order = torch.randperm(len(batch), generator=gen).tolist()
        inputs = torch.stack([batch[i][0] for i in order])
        scored = torch.stack([batch[i][2] & torch.tensor(batch[i][3]) for i in order])
        asked = scored.clone()
        for r, i in enumerate(order):
            asked[r] |= batch[i][2]  # a twin asks where its original does
            for t in extra.get((a, i), ()):
                asked[r, t] = True
        targets = torch.stack([batch[i][1] for i in order])[asked]
        cand = task.candidates(inputs, asked)
        entry_scored = scored[asked]
        token = torch.where(entry_scored, targets, torch.full_like(targets, -1))
        if cand is None:
            slot = token.clone()
        else:
            match = cand == targets[:, None]
            if not match.any(dim=1)[entry_scored].all():
                raise ValueError(f"task {task_name}: a scored target is not among its candidates")
            slot = torch.where(entry_scored, match.float().argmax(dim=1), torch.full_like(token, -1))
        positions = asked.nonzero().tolist()  # row-major: the order of the entries
        index = {}
        for e, (r, p) in enumerate(positions):
            index.setdefault(order[r], {})[p] = e
        for i in range(len(batch)):
            where[(a, i)] = (a, index.get(i, {}))
        requests.append(Request(inputs.to(torch.int32).numpy(), asked.to(torch.uint8).numpy(),
                                None if cand is None else cand.to(torch.int32).numpy(), replicas[a]))
        slots.append(slot.numpy().astype(np.int64))
        tokens.append(token.numpy().astype(np.int64))
    compared: dict[str, list] = {"twin": [], "copy": []}
    for a, i, b, j, t, kind in pairs:
        ra, ea = where[(a, i)]
        rb, eb = where[(b, j)]
        common = sorted(p for p in ea if p <= t and p in eb)
        compared[kind].append((ra, np.array([ea[p] for p in common], dtype=np.int64),
                               rb, np.array([eb[p] for p in common], dtype=np.int64)))
    return TestSet(task_name, task.vocab_size, requests, slots, tokens, compared["twin"], compared["copy"],
                   task.metrics)


def train_and_score(code: str, stage, seed: int, secret: bytes, checks=None, device: str = "cpu") -> dict:
    """Train a genome's Mixers on each task of `stage` and score them on its test set, all in this
    process with the same trainer an evaluation uses (trusted code only: benchmarks and tests of
    the harness; genomes are evaluated through the sandbox by fitness.evaluate). A task mix gives
    "NAME/<metric>" per task and the weighted mean "score", as fitness.evaluate does."""
    from fitness.settings import CheckSettings
    from fitness.tasks import stage_task_names
    from fitness.train import LocalMixers, Trainer, training_seeds

    checks = checks or CheckSettings(complexity_probe=False)
    names = stage_task_names(stage)
    mixers = LocalMixers(code, stage.d_model, stage.n_heads, stage.seq_len, checks, device)
    trainer = Trainer(stage, checks, device, training_seeds(secret, seed, names), mixers)
    weights = stage.tasks or {stage.task: 1.0}
    out, score = {}, 0.0
    for name in names:
        metrics = trainer.train(name)
        tests = build(stage, name, secret, twins=False)
        outputs = [trainer.predict(0, r.inputs, r.request, r.candidates) for r in tests.requests]
        metrics.update(tests.score(outputs, checks.trained_tolerance))
        if len(names) == 1:
            return metrics
        out.update({f"{name}/{k}": v for k, v in metrics.items()})
        score += weights[name] / sum(weights.values()) * metrics["score"]
    out["score"] = score
    return out
