"""A genome's neighbours in code space, as one step of the search may see them.

The code embeddings of scored genomes are stored in the archive and indexed by FAISS
(archive.novelty). Every question is asked from a step and answered among the genomes of the
steps before it (`before`), never among genomes stored by the same or a concurrent step, so an
answer does not depend on timing or on where a killed run stopped: near duplicates (rejected
before training), nearest neighbours (shown to the LLM as "move away from these") and novelty
(mean cosine distance to the k nearest, a selection term and objective). Thread-safe.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from archive.embed import Embedder
from archive.novelty import NoveltyIndex, NoveltySettings
from archive.store import Archive
from records import Genome

INDEX_FILE = "novelty.faiss"


class Neighbours:
    """Embeddings and the novelty index of one run."""

    def __init__(self, archive: Archive, run_dir: Path, settings: NoveltySettings):
        self.archive, self.path, self.settings = archive, run_dir / INDEX_FILE, settings
        self.embedder = Embedder()
        self._index: NoveltyIndex | None = None
        self._generation: dict[str, int] = {}
        self._lock = threading.RLock()

    def vector(self, genome: Genome) -> np.ndarray:
        """The genome's embedding: the stored one, else computed (one genome per call: same bits every time)."""
        with self._lock:
            stored = self.archive.embedding(genome.id)
            return stored if stored is not None else self.embedder.embed([genome.code])[0]

    def add(self, genome: Genome) -> None:
        """Store and index a scored genome's embedding."""
        with self._lock:
            vector = self.vector(genome)[None, :]
            self.archive.add_embeddings([genome.id], vector)
            self.index().add([genome.id], vector)

    def nearest(self, genome: Genome, k: int, before: int) -> list[tuple[str, float]]:
        """Up to k (genome id, cosine similarity) of genomes made before step `before`, most similar first."""
        with self._lock:
            index, vector = self.index(), self.vector(genome)
            fetch = k + 8
            while True:
                hits = [h for h in index.search(vector, fetch)[0] if h[0] != genome.id and self._step(h[0]) < before]
                if len(hits) >= k or fetch >= len(index):
                    return hits[:k]
                fetch *= 4

    def near_duplicate(self, genome: Genome, before: int) -> tuple[str, float] | None:
        """The closest genome of an earlier step if its similarity reaches the threshold, else None."""
        hits = self.nearest(genome, 1, before)
        return hits[0] if hits and hits[0][1] >= self.settings.threshold else None

    def novelty(self, genome: Genome, before: int) -> float:
        """Mean cosine distance to the `k` nearest genomes of earlier steps; 1.0 when there are none."""
        hits = self.nearest(genome, self.settings.k, before)
        return float(np.mean([1.0 - s for _, s in hits])) if hits else 1.0

    def index(self) -> NoveltyIndex:
        """The FAISS index, opened (caught up or rebuilt from the archive) on first use."""
        with self._lock:
            if self._index is None:
                s = self.settings
                self._index = NoveltyIndex.open(self.archive, self.path, dim=self.embedder.dim, kind=s.index,
                                                hnsw_m=s.hnsw_m, hnsw_ef_search=s.hnsw_ef_search)
            return self._index

    def save(self) -> None:
        """Write the index file (a cache: SQLite holds the vectors)."""
        with self._lock:
            if self._index is not None:
                self._index.save(self.path)

    def _step(self, genome_id: str) -> int:
        if genome_id not in self._generation:
            self._generation[genome_id] = self.archive.genome(genome_id).generation
        return self._generation[genome_id]
