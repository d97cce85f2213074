"""LLM backends behind one interface: `generate(list[Request]) -> list[Completion]`.

- `operators.vllm_backend`: in-process vLLM; `operators.openai_backend`: an OpenAI-compatible
  server; `operators.llamacpp_backend`: in-process llama.cpp on a GGUF file. `load_backend`
  loads the one `[llm]` names, `LazyBackend` does so on the first call.
- `CachedBackend`: wraps any backend with a response cache keyed by
  sha256(model id + messages + params + seed + sample index); the archive stores it.
- `FunctionBackend`: replies from a Python function, for tests and dry runs.
- `DictCache`: an in-memory cache with the archive's `get` / `put` interface.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

# finish reasons: stop | length | deadline (aborted at the deadline) | error (failed after retries)
RETRY_ON_CACHE_HIT = frozenset({"deadline", "error"})  # not a real answer: ask the model again


@dataclasses.dataclass(frozen=True)
class Request:
    """One chat completion request. `sample` tells apart repeated samples of one prompt."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable; see `chat`
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    sample: int = 0

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, str]], **params: Any) -> "Request":
        """Build from OpenAI-style [{"role": ..., "content": ...}, ...]."""
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **params)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["messages"] = self.message_dicts()
        return d


@dataclasses.dataclass
class Completion:
    """One reply with its token accounting and how it ended."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    latency_s: float = 0.0
    cached: bool = False
    error: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.finish_reason in ("stop", "length")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Completion":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Backend(Protocol):
    """What every backend offers. `model_id` names the exact weights (goes into cache keys)."""

    model_id: str

    def generate(self, requests: Sequence[Request]) -> list[Completion]: ...


@dataclasses.dataclass
class Usage:
    """Running totals of one backend: calls, requests, tokens, wall time, cache hits."""

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    cache_hits: int = 0
    deadlines: int = 0
    errors: int = 0

    def add(self, completions: Sequence[Completion], wall_s: float) -> None:
        self.calls += 1
        self.wall_s += wall_s
        for c in completions:
            self.requests += 1
            self.cache_hits += c.cached
            if not c.cached:
                self.prompt_tokens += c.prompt_tokens
                self.completion_tokens += c.completion_tokens
            self.deadlines += c.finish_reason == "deadline"
            self.errors += c.finish_reason == "error"


# ---------------------------------------------------------------------------------------
# response cache


class DictCache:
    """In-memory cache with the archive's interface: get(key) -> dict | None, put(key, request, completion)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[dict, dict]] = {}

    def get(self, key: str) -> dict | None:
        row = self.rows.get(key)
        return None if row is None else dict(row[1])

    def put(self, key: str, request: dict, completion: dict) -> None:
        self.rows[key] = (request, completion)


def cache_key(model_id: str, request: Request) -> str:
    """sha256 of model id + messages + sampling params + seed + sample index."""
    payload = {"model": model_id, **request.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedBackend:
    """Answer from the cache when possible; send all misses to `backend` in ONE call; record every call.

    A cached "deadline" or "error" completion is treated as a miss (and overwritten), so a
    resumed run retries what failed instead of replaying the failure.
    """

    def __init__(self, backend: Backend, cache: Any, model_id: str | None = None) -> None:
        self.backend, self.cache = backend, cache
        self.model_id = model_id or backend.model_id
        self.usage = Usage()

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Completions in request order; identical requests in one call are generated once."""
        t0 = time.perf_counter()
        keys = [cache_key(self.model_id, r) for r in requests]
        out: list[Completion | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is not None and hit.get("finish_reason") not in RETRY_ON_CACHE_HIT:
                out[i] = dataclasses.replace(Completion.from_dict(hit), cached=True)
            else:
                todo.setdefault(k, []).append(i)
        if todo:
            first = [idx[0] for idx in todo.values()]
            fresh = self.backend.generate([requests[i] for i in first])
            for (k, idx), c in zip(todo.items(), fresh):
                record = {"model": self.model_id, **requests[idx[0]].to_dict()}
                self.cache.put(k, record, c.to_dict())
                for j, i in enumerate(idx):
                    out[i] = c if j == 0 else dataclasses.replace(c, cached=True)
        done = [c for c in out if c is not None]
        assert len(done) == len(requests)
        self.usage.add(done, time.perf_counter() - t0)
        return done


# ---------------------------------------------------------------------------------------
# test / dry-run backend


class FunctionBackend:
    """Replies with `fn(request) -> str`; counts calls. For tests and runs without a model."""

    def __init__(self, fn: Callable[[Request], str], model_id: str = "function") -> None:
        self.fn, self.model_id = fn, model_id
        self.calls: list[list[Request]] = []
        self.usage = Usage()

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        t0 = time.perf_counter()
        self.calls.append(list(requests))
        out = []
        for r in requests:
            text = self.fn(r)
            out.append(Completion(text=text, prompt_tokens=sum(len(c.split()) for _, c in r.messages),
                                  completion_tokens=len(text.split())))
        self.usage.add(out, time.perf_counter() - t0)
        return out


# ---------------------------------------------------------------------------------------
# the backend `[llm]` names


def load_backend(settings: Any) -> Backend:
    """Load the backend `[llm]` (LLMSettings) names: vllm, openai or llamacpp."""
    if settings.backend == "openai":
        from operators.openai_backend import OpenAIBackend

        return OpenAIBackend.from_settings(settings)
    if settings.backend == "llamacpp":
        from operators.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend.from_settings(settings)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from operators.vllm_backend import VLLMBackend

    return VLLMBackend.from_settings(settings)


def backend_model_id(settings: Any) -> str:
    """The model id of `[llm]` for cache keys, known without loading the model."""
    if settings.backend == "openai":
        return f"openai:{settings.model}"
    from operators.model_store import model_id

    return model_id(settings.model)


class LazyBackend:
    """The backend of `settings` (LLMSettings), loaded on the first `generate` (a run whose every
    request is cached never loads the model or contacts the server)."""

    def __init__(self, settings: Any) -> None:
        self.settings, self._backend = settings, None
        self.model_id = backend_model_id(settings)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self._backend is None:
            self._backend = load_backend(self.settings)
        return self._backend.generate(requests)

    def close(self) -> None:
        """Shut the backend down if it was loaded."""
        if self._backend is not None and hasattr(self._backend, "close"):
            self._backend.close()
        self._backend = None
