"""The experiment store: one SQLite file that is the source of truth for a run.

Everything a run knows lives here: run metadata (resolved config, seed, status),
genomes, evaluations per stage and seed, the population of every generation (the
checkpoint), LLM calls (which double as the response cache), the analyst's analysis of
every step, embeddings and an event log.

Rules:
- WAL mode, one writer (the engine); readers (`evo top`) may open read-only at any time.
- Every state change is one transaction (`BEGIN IMMEDIATE ... COMMIT`), so a process
  killed at any moment loses at most the change in flight and never leaves half of one.
- Inserts are idempotent (`INSERT OR IGNORE` on natural keys): replaying work after a
  resume never duplicates rows. Nothing is ever deleted or overwritten, except meta
  values, which `set_meta` replaces (and what a schema upgrade drops: only tables no engine
  wrote, see `_UPGRADES`). LLM calls are an append-only log whose newest
  row per key is the cached answer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from records import Evaluation, Genome

SCHEMA_VERSION = 2

# Run statement by statement (split on semicolons): keep semicolons out of the SQL comments.
_STEP_ANALYSES = """CREATE TABLE IF NOT EXISTS step_analyses (   -- operators.analyst, after each step
    step        INTEGER PRIMARY KEY,
    gist        TEXT NOT NULL,                -- the short notes later prompts read
    data        TEXT NOT NULL,                -- JSON: the step's tally and the cumulative one
    created_at  REAL NOT NULL
);
"""
# What brings an archive of version v to v + 1. Version 2: the per-genome `analyses` table, which no
# engine ever wrote, gives way to the analyst's per-step table.
_UPGRADES = {1: _STEP_ANALYSES + "DROP TABLE IF EXISTS analyses;"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL                       -- JSON
);
CREATE TABLE IF NOT EXISTS genomes (
    id          TEXT PRIMARY KEY,
    code        TEXT NOT NULL,
    code_hash   TEXT NOT NULL,                -- sha256 of archive.normalise(code)
    parents     TEXT NOT NULL,                -- JSON list of genome ids
    operator    TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    island      INTEGER NOT NULL,
    motivation  TEXT NOT NULL,
    origin      TEXT NOT NULL,                -- JSON: directive, prompt key, repair attempt, ...
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS genomes_code_hash ON genomes(code_hash);
CREATE INDEX IF NOT EXISTS genomes_generation ON genomes(generation);
CREATE TABLE IF NOT EXISTS evaluations (
    genome_id   TEXT NOT NULL REFERENCES genomes(id),
    stage       INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    status      TEXT NOT NULL,                -- ok | rejected | failed | timeout | killed
    score       REAL,
    reason      TEXT NOT NULL,
    params      INTEGER,
    metrics     TEXT NOT NULL,                -- JSON
    wall_s      REAL NOT NULL,
    created_at  REAL NOT NULL,
    UNIQUE (genome_id, stage, seed)
);
CREATE INDEX IF NOT EXISTS evaluations_stage ON evaluations(stage, status);
CREATE TABLE IF NOT EXISTS checkpoints (
    generation  INTEGER PRIMARY KEY,
    size        INTEGER NOT NULL,             -- number of rows in populations
    state       TEXT NOT NULL,                -- JSON: strategy/RNG state to resume from
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS populations (
    generation  INTEGER NOT NULL REFERENCES checkpoints(generation),
    position    INTEGER NOT NULL,
    genome_id   TEXT NOT NULL REFERENCES genomes(id),
    PRIMARY KEY (generation, position)
);
CREATE TABLE IF NOT EXISTS llm_calls (             -- append-only log, the newest row per key is the cached answer
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    key               TEXT NOT NULL,
    request           TEXT NOT NULL,          -- JSON
    completion        TEXT NOT NULL,          -- JSON
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s         REAL NOT NULL,
    created_at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS llm_calls_key ON llm_calls(key);
""" + _STEP_ANALYSES + """CREATE TABLE IF NOT EXISTS embeddings (
    genome_id   TEXT PRIMARY KEY REFERENCES genomes(id),
    dim         INTEGER NOT NULL,
    vector      BLOB NOT NULL,                -- float32, little-endian, L2-normalised
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        REAL NOT NULL,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        TEXT NOT NULL                 -- JSON
);
"""


class ArchiveError(RuntimeError):
    """The archive cannot be opened or the requested change would corrupt it."""


@dataclasses.dataclass(frozen=True)
class LeaderboardRow:
    """One genome's standing at one stage: mean score over its ok seeds and their spread."""

    genome_id: str
    mean: float
    std: float  # sample standard deviation over seeds; 0.0 with one seed
    n_seeds: int
    params: int | None
    operator: str
    generation: int


class Archive:
    """A run's SQLite store. `Archive(path)` creates or opens it; `readonly=True` for viewers.

    Thread-safe for one process (a lock serialises access to the one connection);
    across processes there must be one writer, any number of read-only readers.
    """

    def __init__(self, path: str | Path, readonly: bool = False, timeout_s: float = 30.0):
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise ArchiveError(f"no archive at {self.path}")
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute("PRAGMA foreign_keys=ON")
        self._check_or_create_schema()

    # ---- lifecycle -------------------------------------------------------------------

    def _check_or_create_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise ArchiveError(
                f"{self.path} has archive schema version {version}, newer than this evoarch "
                f"understands ({SCHEMA_VERSION}); upgrade evoarch to open it")
        self.schema_version = version
        if version == SCHEMA_VERSION:
            return
        if version > 0:  # an older archive: a writer upgrades it, a reader sees the tables added since as empty
            if not self.readonly:
                self._upgrade(version)
            return
        if self.readonly:
            self._db.close()
            raise ArchiveError(f"{self.path} is not an initialised evoarch archive (schema version {version})")
        has_tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if has_tables:
            self._db.close()
            raise ArchiveError(f"{self.path} is an SQLite file with tables but not an evoarch archive")
        self.schema_version = SCHEMA_VERSION
        with self._tx() as db:
            # statements one by one: executescript() would COMMIT behind our back
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (json.dumps(time.time()),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))

    def _upgrade(self, version: int) -> None:
        """Bring an archive of an older schema version to this one, in one transaction."""
        with self._tx() as db:
            for v in range(version, SCHEMA_VERSION):
                for stmt in _UPGRADES[v].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))
        self.schema_version = SCHEMA_VERSION

    def close(self) -> None:
        """Close the connection (a writer checkpoints the WAL into the main file)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Cursor]:
        """One write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any error."""
        if self.readonly:
            raise ArchiveError(f"{self.path} is open read-only")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _Cursor(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    def integrity_check(self) -> str:
        """SQLite's own integrity check plus foreign keys: 'ok' or the problems found."""
        problems = [r[0] for r in self._read("PRAGMA integrity_check")]
        problems += [f"foreign key {tuple(r)}" for r in self._read("PRAGMA foreign_key_check")]
        return "ok" if problems == ["ok"] else "; ".join(problems)

    # ---- run metadata ------------------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable run fact (config_toml, seed, status, ...), replacing the old value."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The stored value for `key`, or `default`."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def meta(self) -> dict[str, Any]:
        """All run metadata."""
        return {r["key"]: json.loads(r["value"]) for r in self._read("SELECT key, value FROM meta ORDER BY key")}

    # ---- genomes -----------------------------------------------------------------------

    def add_genome(self, genome: Genome, origin: dict[str, Any] | None = None) -> bool:
        """Insert a genome; True if new, False if that id was already stored with the same code.

        Raises ArchiveError if the id exists with different code (ids must be content-derived).
        """
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO genomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (genome.id, genome.code, genome.code_hash, json.dumps(list(genome.parents)), genome.operator,
                 genome.generation, genome.island, genome.motivation, json.dumps(origin or {}),
                 genome.created_at))
            if cur.rowcount == 1:
                return True
            (stored_hash, stored_code), = db.execute(
                "SELECT code_hash, code FROM genomes WHERE id = ?", (genome.id,)).fetchall()
            if stored_hash != genome.code_hash or stored_code != genome.code:
                raise ArchiveError(f"genome {genome.id} already stored with different code")
            return False

    def genome(self, genome_id: str) -> Genome | None:
        """The stored genome with this id, or None."""
        rows = self._read("SELECT * FROM genomes WHERE id = ?", (genome_id,))
        return _genome(rows[0]) if rows else None

    def origin(self, genome_id: str) -> dict[str, Any] | None:
        """The origin record (directive, prompt info) stored with a genome, or None if unknown."""
        rows = self._read("SELECT origin FROM genomes WHERE id = ?", (genome_id,))
        return json.loads(rows[0]["origin"]) if rows else None

    def genomes(self, generation: int | None = None, code_hash: str | None = None) -> list[Genome]:
        """Stored genomes in insertion order, optionally only one generation or one code hash."""
        sql, args = "SELECT * FROM genomes WHERE 1=1", []
        if generation is not None:
            sql, args = sql + " AND generation = ?", args + [generation]
        if code_hash is not None:
            sql, args = sql + " AND code_hash = ?", args + [code_hash]
        return [_genome(r) for r in self._read(sql + " ORDER BY rowid", args)]

    def count_genomes(self) -> int:
        """Number of stored genomes."""
        return self._read("SELECT count(*) AS n FROM genomes")[0]["n"]

    # ---- evaluations -------------------------------------------------------------------

    def add_evaluation(self, ev: Evaluation) -> bool:
        """Insert one (genome, stage, seed) result; True if new, False if that key was already stored.

        The first stored result wins: a replay after resume never overwrites it.
        """
        return self.add_evaluations([ev]) == 1

    def add_evaluations(self, evs: Sequence[Evaluation]) -> int:
        """Insert several results in one transaction (all or none); returns how many were new."""
        with self._tx() as db:
            return sum(db.execute(
                "INSERT OR IGNORE INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ev.genome_id, ev.stage, ev.seed, ev.status, _finite_or_none(ev.score), ev.reason, ev.params,
                 json.dumps(ev.metrics, default=_json_default), ev.wall_s, time.time())).rowcount for ev in evs)

    def evaluations(self, genome_id: str | None = None, stage: int | None = None,
                    status: str | None = None) -> list[Evaluation]:
        """Stored evaluations in insertion order, filtered by genome, stage and/or status."""
        sql, args = "SELECT * FROM evaluations WHERE 1=1", []
        for col, val in (("genome_id", genome_id), ("stage", stage), ("status", status)):
            if val is not None:
                sql, args = sql + f" AND {col} = ?", args + [val]
        return [_evaluation(r) for r in self._read(sql + " ORDER BY rowid", args)]

    def leaderboard(self, stage: int, n: int = 10) -> list[LeaderboardRow]:
        """The `n` best genomes at `stage` by mean score over their ok seeds (ties: more seeds first)."""
        rows = self._read(
            "SELECT e.genome_id, avg(e.score) AS mean, avg(e.score * e.score) AS mean_sq, count(*) AS k, "
            "max(e.params) AS params, g.operator, g.generation "
            "FROM evaluations e JOIN genomes g ON g.id = e.genome_id "
            "WHERE e.stage = ? AND e.status = 'ok' AND e.score IS NOT NULL "
            "GROUP BY e.genome_id ORDER BY mean DESC, k DESC, g.rowid LIMIT ?", (stage, n))
        out = []
        for r in rows:
            k = r["k"]
            var = max(0.0, r["mean_sq"] - r["mean"] ** 2) * k / (k - 1) if k > 1 else 0.0
            out.append(LeaderboardRow(r["genome_id"], r["mean"], math.sqrt(var), k, r["params"],
                                      r["operator"], r["generation"]))
        return out

    # ---- populations (checkpoints) -----------------------------------------------------

    def save_population(self, generation: int, ids: Sequence[str], state: dict[str, Any] | None = None) -> None:
        """Checkpoint: write generation `generation`'s population (ordered ids) in one transaction.

        `state` (JSON) is whatever else the engine needs to resume (RNG state, strategy
        counters). Saving the same generation again with the same ids is a no-op; with
        different ids it is an error (checkpoints are never rewritten).
        """
        ids = list(ids)
        with self._tx() as db:
            existing = [r[0] for r in db.execute(
                "SELECT genome_id FROM populations WHERE generation = ? ORDER BY position", (generation,))]
            done = db.execute("SELECT 1 FROM checkpoints WHERE generation = ?", (generation,)).fetchall()
            if done:
                if existing != ids:
                    raise ArchiveError(f"generation {generation} is already checkpointed with another population")
                return
            db.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
                       (generation, len(ids), json.dumps(state or {}, default=_json_default), time.time()))
            db.executemany("INSERT INTO populations VALUES (?, ?, ?)",
                           [(generation, i, gid) for i, gid in enumerate(ids)])

    def population(self, generation: int) -> list[str]:
        """The ordered genome ids checkpointed for `generation` ([] if none)."""
        return [r["genome_id"] for r in self._read(
            "SELECT genome_id FROM populations WHERE generation = ? ORDER BY position", (generation,))]

    def checkpoint_state(self, generation: int) -> dict[str, Any] | None:
        """The `state` saved with a generation's population, or None if it was never checkpointed."""
        rows = self._read("SELECT state FROM checkpoints WHERE generation = ?", (generation,))
        return json.loads(rows[0]["state"]) if rows else None

    def last_checkpoint(self) -> int | None:
        """The latest checkpointed generation, or None before the first checkpoint."""
        return self._read("SELECT max(generation) AS g FROM checkpoints")[0]["g"]

    # ---- LLM calls: log and response cache (names fixed: operators call get/put) ------

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached completion for an LLM request key (the latest stored for it), or None on a miss."""
        rows = self._read("SELECT completion FROM llm_calls WHERE key = ? ORDER BY id DESC LIMIT 1", (key,))
        return json.loads(rows[0]["completion"]) if rows else None

    def put(self, key: str, request: dict[str, Any], completion: dict[str, Any], *,
            prompt_tokens: int | None = None, completion_tokens: int | None = None,
            latency_s: float | None = None) -> None:
        """Record one LLM call; its completion becomes the cached answer for `key`.

        Calls are appended, never overwritten: when a key is put again (the operators retry
        a cached deadline/error), `get` answers with the newest and the failed attempt stays
        in the log and in `llm_stats`. Token counts and latency default to the completion's
        own `prompt_tokens`, `completion_tokens` and `latency_s` fields (or an OpenAI-style
        `usage` dict).
        """
        usage = completion.get("usage") if isinstance(completion.get("usage"), dict) else {}

        def pick(explicit: Any, name: str) -> Any:
            return explicit if explicit is not None else completion.get(name, usage.get(name)) or 0

        with self._tx() as db:
            db.execute("INSERT INTO llm_calls (key, request, completion, prompt_tokens, completion_tokens, "
                       "latency_s, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (key, json.dumps(request, default=_json_default), json.dumps(completion, default=_json_default),
                        int(pick(prompt_tokens, "prompt_tokens")), int(pick(completion_tokens, "completion_tokens")),
                        float(pick(latency_s, "latency_s")), time.time()))

    def llm_stats(self) -> dict[str, float]:
        """Totals over every LLM call made (cache hits are not calls): calls, prompt/completion/total tokens, latency."""
        r = self._read("SELECT count(*) AS calls, coalesce(sum(prompt_tokens), 0) AS p, "
                       "coalesce(sum(completion_tokens), 0) AS c, coalesce(sum(latency_s), 0.0) AS s "
                       "FROM llm_calls")[0]
        return {"calls": r["calls"], "prompt_tokens": r["p"], "completion_tokens": r["c"],
                "total_tokens": r["p"] + r["c"], "latency_s": r["s"]}

    # ---- the analyst's step analyses ---------------------------------------------------

    def add_step_analysis(self, step: int, gist: str, data: dict[str, Any]) -> bool:
        """Store the analysis after `step` (its gist and JSON data); True if new (the first stored wins)."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO step_analyses VALUES (?, ?, ?, ?)",
                             (step, gist, json.dumps(data, default=_json_default), time.time()))
            return cur.rowcount == 1

    def step_analyses(self, before: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored step analyses, newest step first, only those of steps before `before` if given:
        dicts with step, gist, data, created_at (none in an archive older than schema version 2)."""
        if self.schema_version < 2:
            return []
        sql, args = "SELECT * FROM step_analyses", []
        if before is not None:
            sql, args = sql + " WHERE step < ?", [before]
        sql += " ORDER BY step DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return [{**dict(r), "data": json.loads(r["data"])} for r in self._read(sql, args)]

    # ---- embeddings --------------------------------------------------------------------

    def add_embeddings(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Store float32 vectors (one row per id) in one transaction; returns how many were new."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"need one vector per id: {len(ids)} ids, vectors of shape {vectors.shape}")
        now = time.time()
        with self._tx() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?)",
                           [(gid, vectors.shape[1], vectors[i].tobytes(), now) for i, gid in enumerate(ids)])
            return db.total_changes - before

    def embedding(self, genome_id: str) -> np.ndarray | None:
        """The stored vector of one genome, or None."""
        rows = self._read("SELECT vector FROM embeddings WHERE genome_id = ?", (genome_id,))
        return np.frombuffer(rows[0]["vector"], dtype="<f4").copy() if rows else None

    def embeddings(self, offset: int = 0) -> tuple[list[str], np.ndarray]:
        """All stored embeddings in insertion order from position `offset`: (ids, (n, dim) float32)."""
        rows = self._read("SELECT genome_id, dim, vector FROM embeddings ORDER BY rowid LIMIT -1 OFFSET ?", (offset,))
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        mat = np.frombuffer(b"".join(r["vector"] for r in rows), dtype="<f4").reshape(len(rows), rows[0]["dim"])
        return [r["genome_id"] for r in rows], mat.astype(np.float32)

    def embedding_marker(self) -> tuple[int, str | None]:
        """(count, id of the last stored embedding): what the novelty index checks for staleness."""
        n = self._read("SELECT count(*) AS n FROM embeddings")[0]["n"]
        last = self._read("SELECT genome_id FROM embeddings ORDER BY rowid DESC LIMIT 1")
        return n, (last[0]["genome_id"] if last else None)

    def embedding_id_at(self, position: int) -> str | None:
        """The genome id of the embedding stored at `position` (0-based insertion order), or None."""
        rows = self._read("SELECT genome_id FROM embeddings ORDER BY rowid LIMIT 1 OFFSET ?", (position,))
        return rows[0]["genome_id"] if rows else None

    # ---- events ------------------------------------------------------------------------

    def log_event(self, kind: str, message: str = "", **data: Any) -> int:
        """Append an event (kind, message, JSON data) to the run's log; returns its id."""
        with self._tx() as db:
            cur = db.execute("INSERT INTO events (time, kind, message, data) VALUES (?, ?, ?, ?)",
                             (time.time(), kind, message, json.dumps(data, default=_json_default)))
            return cur.lastrowid

    def events(self, kind: str | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        """Events with id > `after_id` in order, optionally of one kind: dicts id, time, kind, message, data."""
        sql, args = "SELECT * FROM events WHERE id > ?", [after_id]
        if kind is not None:
            sql, args = sql + " AND kind = ?", args + [kind]
        return [{**dict(r), "data": json.loads(r["data"])} for r in self._read(sql + " ORDER BY id", args)]


class _Cursor:
    """The connection as seen inside one transaction (execute/executemany, change counter)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self._db.executemany(sql, rows)

    @property
    def total_changes(self) -> int:
        return self._db.total_changes


def _genome(r: sqlite3.Row) -> Genome:
    return Genome(id=r["id"], code=r["code"], code_hash=r["code_hash"], parents=tuple(json.loads(r["parents"])),
                  operator=r["operator"], generation=r["generation"], island=r["island"],
                  motivation=r["motivation"], created_at=r["created_at"])


def _evaluation(r: sqlite3.Row) -> Evaluation:
    return Evaluation(genome_id=r["genome_id"], stage=r["stage"], seed=r["seed"], status=r["status"],
                      score=r["score"], reason=r["reason"], params=r["params"], metrics=json.loads(r["metrics"]),
                      wall_s=r["wall_s"])


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _json_default(o: Any) -> Any:
    """JSON for numpy scalars/arrays, tuples, sets and paths that metrics and requests may carry."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
