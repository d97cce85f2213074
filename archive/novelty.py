"""Novelty archive: is a child a near-duplicate of something already seen, and how novel is it?

A FAISS index over the L2-normalised code embeddings stored in the archive's
`embeddings` table, so inner product = cosine similarity. `flat` (exact,
IndexFlatIP) is the default; `hnsw` (IndexHNSWFlat, inner product) is approximate
and scales to millions. SQLite stays the source of truth: the index file is a cache,
caught up or rebuilt from the stored vectors (never re-embedded) when missing or stale.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from archive.store import Archive

IndexKind = Literal["flat", "hnsw"]


class NoveltySettings(BaseModel):
    """The `[novelty]` config table."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Reject near-duplicate children before training and compute novelty.")
    threshold: float = Field(
        0.99, gt=0.0, le=1.0,
        description="Cosine similarity (of normalised-code embeddings) at or above which a child is a "
                    "near-duplicate of an archived genome. Same-kind mixers score about 0.95, so 0.99 "
                    "means near-identical.")
    k: int = Field(10, ge=1, le=1000, description="Neighbours averaged for the novelty score.")
    index: IndexKind = Field("flat", description="'flat': exact search; 'hnsw': approximate, for very large archives.")
    weight: float = Field(0.0, ge=0.0, le=1.0,
                          description="Weight of novelty in selection: 0 ignores it, 1 selects on novelty alone.")
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree (index='hnsw' only).")
    hnsw_ef_search: int = Field(64, ge=8, le=4096, description="HNSW search breadth (index='hnsw' only).")


class NoveltyIndex:
    """FAISS inner-product index keyed by genome id. Vectors are L2-normalised on the way in."""

    def __init__(self, dim: int, kind: IndexKind = "flat", hnsw_m: int = 32, hnsw_ef_search: int = 64):
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = hnsw_ef_search
        else:
            raise ValueError(f"novelty index kind must be 'flat' or 'hnsw', got {kind!r}")
        self.dim, self.kind = dim, kind
        self.ids: list[str] = []  # FAISS label i <-> self.ids[i]
        self._known: set[str] = set()

    @classmethod
    def from_settings(cls, dim: int, settings: NoveltySettings) -> NoveltyIndex:
        """An empty index configured by the `[novelty]` settings."""
        return cls(dim, settings.index, settings.hnsw_m, settings.hnsw_ef_search)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add vectors under genome ids; ids already present are skipped. Returns how many were added."""
        vectors = self._prepare(vectors)
        if len(vectors) != len(ids):
            raise ValueError(f"need one vector per id: {len(ids)} ids, {len(vectors)} vectors")
        keep = []
        for i, gid in enumerate(ids):
            if gid not in self._known:
                self._known.add(gid)
                keep.append(i)
        if keep:
            self.index.add(vectors[keep])
            self.ids.extend(ids[i] for i in keep)
        return len(keep)

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query row, up to k (genome id, cosine similarity) pairs, most similar first."""
        vectors = self._prepare(vectors)
        k = min(k, len(self.ids))
        if k == 0:
            return [[] for _ in range(len(vectors))]
        sims, labels = self.index.search(vectors, k)
        return [[(self.ids[j], float(s)) for s, j in zip(srow, lrow) if j >= 0] for srow, lrow in zip(sims, labels)]

    def nearest(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[tuple[str, float]]:
        """The k most similar archived genomes to one vector: [(id, similarity)], best first.

        `exclude` drops one id from the answer (a genome scored against an archive that holds it).
        """
        hits = self.search(vector, k + (exclude is not None))[0]
        return [h for h in hits if h[0] != exclude][:k]

    def max_similarity(self, vector: np.ndarray, exclude: str | None = None) -> float:
        """Cosine similarity to the closest archived genome; -1.0 (nothing alike) when empty."""
        hits = self.nearest(vector, 1, exclude)
        return hits[0][1] if hits else -1.0

    def near_duplicate(self, vector: np.ndarray, threshold: float) -> tuple[str, float] | None:
        """The closest archived genome if its similarity is >= threshold, else None."""
        hits = self.nearest(vector, 1)
        return hits[0] if hits and hits[0][1] >= threshold else None

    def novelty(self, vector: np.ndarray, k: int, exclude: str | None = None) -> float:
        """Mean cosine distance (1 - similarity) to the k nearest archived genomes; 1.0 when empty."""
        hits = self.nearest(vector, k, exclude)
        return float(np.mean([1.0 - s for _, s in hits])) if hits else 1.0

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        v = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
        if v.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {v.shape}")
        faiss.normalize_L2(v)
        return v

    # ---- persistence -------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index and its ids to one .npz file, atomically (temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        header = {"dim": self.dim, "kind": self.kind, "count": len(self.ids),
                  "last_id": self.ids[-1] if self.ids else None}
        with open(tmp, "wb") as f:
            np.savez(f, index=faiss.serialize_index(self.index), ids=np.array(self.ids, dtype=str),
                     header=np.array(json.dumps(header)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> NoveltyIndex:
        """Read an index written by `save`."""
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            self = cls.__new__(cls)
            self.dim, self.kind = header["dim"], header["kind"]
            self.index = faiss.deserialize_index(z["index"])
            self.ids = [str(x) for x in z["ids"]]
        self._known = set(self.ids)
        if self.index.ntotal != len(self.ids):
            raise ValueError(f"{path}: index holds {self.index.ntotal} vectors but {len(self.ids)} ids")
        return self

    def is_fresh(self, archive: Archive) -> bool:
        """True if this index holds exactly the archive's stored embeddings (same count and last id)."""
        count, last_id = archive.embedding_marker()
        return count == len(self.ids) and last_id == (self.ids[-1] if self.ids else None)

    @classmethod
    def rebuild(cls, archive: Archive, dim: int, kind: IndexKind = "flat", **kwargs: int) -> NoveltyIndex:
        """A new index over every embedding stored in the archive (no re-embedding)."""
        self = cls(dim, kind, **kwargs)
        ids, vectors = archive.embeddings()
        if ids:
            self.add(ids, vectors)
        return self

    @classmethod
    def open(cls, archive: Archive, path: str | Path, dim: int, kind: IndexKind = "flat",
             **kwargs: int) -> NoveltyIndex:
        """The index for `archive`, from `path` if usable, caught up or rebuilt otherwise, then saved.

        A file is reused when its kind and dim match and its ids are a prefix of the
        archive's stored embeddings (then only the newer vectors are added); anything
        else (missing, unreadable, other kind, diverged) rebuilds from SQLite.
        """
        path = Path(path)
        index = None
        if path.exists():
            try:
                index = cls.load(path)
            except Exception:  # a torn or foreign file is only a cache: rebuild
                index = None
        if index is not None and (index.kind != kind or index.dim != dim or not index._is_prefix_of(archive)):
            index = None
        if index is None:
            index = cls.rebuild(archive, dim, kind, **kwargs)
        elif not index.is_fresh(archive):
            ids, vectors = archive.embeddings(offset=len(index.ids))
            index.add(ids, vectors)
        else:
            return index
        index.save(path)
        return index

    def _is_prefix_of(self, archive: Archive) -> bool:
        if not self.ids:
            return True
        return archive.embedding_id_at(len(self.ids) - 1) == self.ids[-1]
