"""evoarch archive: the SQLite experiment store, code normalisation, embeddings, novelty index.

`archive.store` and `archive.normalise` need only the standard library and numpy and are
re-exported here. `archive.embed` (sentence-transformers, torch) and `archive.novelty`
(FAISS, pydantic) are heavier: import those submodules where you need them.
"""
from archive.normalise import NormaliseError, code_hash, normalise
from archive.store import Archive, ArchiveError, LeaderboardRow

__all__ = ["Archive", "ArchiveError", "LeaderboardRow", "NormaliseError", "code_hash", "normalise"]
