"""An OpenAI-compatible chat-completions server as a backend (vllm serve, llama.cpp's server, Ollama, SGLang).

Every request of a `generate` call is in flight at once, up to `parallel`, so the server can
batch them. Replies are streamed: at the call's deadline every unfinished request is
abandoned (its connection closed, so the server can stop generating) and returned with
finish_reason "deadline" and the text received so far; a stalled endpoint therefore costs
at most the deadline. Connection failures (a connect timeout included), 429 and 5xx answers
are retried up to `retries` times with exponential backoff inside the deadline; other 4xx
answers are errors at once. The server's replies are untrusted input: anything malformed
(not JSON, nested too deep, a reply longer than `reply_limit(max_tokens)` bytes) becomes an
error completion, never an exception. The API key is read from the environment variable
`api_key_env` names, at each call, and is masked in every error message (a server may echo
the request's headers).
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx

from operators.backends import Completion, Request, Usage

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
CONNECT_TIMEOUT_S = 30.0  # most seconds one connection attempt may take (less when the deadline is closer)
ERROR_BODY_BYTES = 4096  # most bytes of an HTTP error answer read (500 quoted)
MAX_COUNT = 2**31 - 1  # token counts above this are not believed


def reply_limit(max_tokens: int) -> int:
    """Most bytes a streamed reply of `max_tokens` tokens may take (a chunk per token is < 1 KB)."""
    return (1 << 20) + 4096 * max_tokens


class ServerError(RuntimeError):
    """An answer that is not a usable completion; `retry` says whether asking again may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class OpenAIBackend:
    """Chat completions from `base_url` (e.g. http://127.0.0.1:8000/v1) for model `model`."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, deadline_s: float = 600.0,
                 retries: int = 1, parallel: int = 8, backoff_s: float = 1.0, model_id: str | None = None,
                 api_key: str | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self._api_key = model, api_key_env, api_key
        self.model_id = model_id or f"openai:{model}"
        self.deadline_s, self.retries, self.parallel, self.backoff_s = deadline_s, retries, parallel, backoff_s
        self.usage = Usage()

    @classmethod
    def from_settings(cls, settings: Any) -> "OpenAIBackend":
        """The backend `[llm]` describes (backend = "openai")."""
        return cls(settings.base_url, settings.model, api_key_env=settings.api_key_env,
                   deadline_s=settings.deadline_s, retries=settings.retries, parallel=settings.parallel)

    def headers(self) -> dict[str, str]:
        """Request headers; the key comes from the environment at each call and is never stored."""
        key = self._api_key
        if key is None and self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()  # a key file read with its newline
            if not key:
                raise RuntimeError(f"[llm] api_key_env names {self.api_key_env!r}, but that environment "
                                   f"variable is empty or unset")
            if not (key.isascii() and key.isprintable()) or any(ch.isspace() for ch in key):
                # the HTTP library would quote the refused header, key and all, in its error
                raise RuntimeError(f"the environment variable {self.api_key_env!r} holds no API key: one is "
                                   "printable ASCII without spaces")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def generate(self, requests: Sequence[Request], deadline_s: float | None = None) -> list[Completion]:
        """One completion per request, in order; all in flight at once (up to `parallel`) until the deadline."""
        t0 = time.perf_counter()
        limit = self.deadline_s if deadline_s is None else deadline_s
        headers = self.headers()
        out = _run(self._all(list(requests), headers, time.monotonic() + limit, limit))
        key = headers.get("Authorization", "").removeprefix("Bearer ")
        for c in out:
            c.error = _mask(c.error, key)
        self.usage.add(out, time.perf_counter() - t0)
        return out

    async def _all(self, requests: list[Request], headers: dict, deadline: float, limit: float) -> list[Completion]:
        gate = asyncio.Semaphore(self.parallel)
        timeout = httpx.Timeout(limit, connect=min(limit, CONNECT_TIMEOUT_S))
        limits = httpx.Limits(max_connections=self.parallel, max_keepalive_connections=self.parallel)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
            return list(await asyncio.gather(*(self._one(client, gate, r, deadline, limit) for r in requests)))

    async def _one(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, r: Request, deadline: float,
                   limit: float) -> Completion:
        body = {"model": self.model, "messages": r.message_dicts(), "max_tokens": r.max_tokens,
                "temperature": r.temperature, "top_p": r.top_p, "stream": True,
                "stream_options": {"include_usage": True}}
        if r.seed is not None:
            body["seed"] = r.seed
        attempts, error = 0, "not started before the deadline"
        async with gate:
            t0 = time.monotonic()
            while attempts <= self.retries and time.monotonic() < deadline:
                attempts += 1
                partial = _Partial()
                try:
                    await asyncio.wait_for(self._stream(client, body, partial, reply_limit(r.max_tokens)),
                                           deadline - time.monotonic())
                    return partial.completion(time.monotonic() - t0, attempts)
                except (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException) as e:
                    if isinstance(e, httpx.TimeoutException) and time.monotonic() < deadline:
                        error = f"{type(e).__name__}: {e}"  # e.g. a connect timeout: a connection failure
                    else:
                        c = partial.completion(time.monotonic() - t0, attempts)
                        c.finish_reason, c.error = "deadline", f"abandoned at the {limit:g}s deadline"
                        return c
                except ServerError as e:
                    error = str(e)
                    if not e.retry:
                        break
                except (httpx.HTTPError, OSError, ValueError) as e:
                    error = f"{type(e).__name__}: {e}"
                except Exception as e:  # anything else a malformed reply may raise: an error, not a crash
                    error = f"{type(e).__name__}: {e}"[:500]
                    break
                if attempts <= self.retries:
                    pause = min(self.backoff_s * 2 ** (attempts - 1), max(0.0, deadline - time.monotonic()))
                    await asyncio.sleep(pause)
        reason = "deadline" if time.monotonic() >= deadline and attempts <= self.retries else "error"
        return Completion("", finish_reason=reason, error=error, attempts=attempts,
                          latency_s=time.monotonic() - t0 if attempts else 0.0)

    async def _stream(self, client: httpx.AsyncClient, body: dict, partial: "_Partial", limit: int) -> None:
        async with client.stream("POST", self.url, json=body) as resp:
            if resp.status_code != 200:
                head = b""
                async for data in resp.aiter_bytes():
                    head += data
                    if len(head) >= ERROR_BODY_BYTES:
                        break
                text = head.decode("utf-8", "replace")[:500]
                raise ServerError(f"HTTP {resp.status_code} from {self.url}: {text}",
                                  retry=resp.status_code in RETRY_STATUS)
            async for line in _lines(resp, limit):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                partial.add(_json_object(data))
        if partial.finish_reason is None:
            raise ServerError("the stream ended before a finish_reason", retry=True)


class _Partial:
    """What a streamed reply has delivered so far."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self.chunks = 0

    def add(self, chunk: dict) -> None:
        if chunk.get("error") is not None:
            raise ServerError(f"server error in stream: {str(chunk['error'])[:300]}", retry=True)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("prompt_tokens"))
            self.completion_tokens = _int(usage.get("completion_tokens"))
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.parts.append(content)
            self.chunks += 1
        if choice.get("finish_reason") is not None:
            self.finish_reason = str(choice["finish_reason"])

    def completion(self, latency_s: float, attempts: int) -> Completion:
        return Completion("".join(self.parts), prompt_tokens=self.prompt_tokens,
                          completion_tokens=self.completion_tokens or self.chunks,
                          finish_reason=self.finish_reason or "stop",
                          latency_s=latency_s, attempts=attempts)


async def _lines(resp: httpx.Response, limit: int) -> Any:
    """The lines of a streamed answer (decoded, without line ends); ServerError once it passes `limit` bytes,
    so a server that sends without end (or one endless line) costs bounded memory."""
    total, buf = 0, bytearray()
    async for data in resp.aiter_bytes():
        total += len(data)
        if total > limit:
            raise ServerError(f"the reply passed {limit} bytes without ending", retry=False)
        buf += data
        if b"\n" in data:
            *lines, rest = bytes(buf).split(b"\n")
            buf = bytearray(rest)
            for line in lines:
                yield line.decode("utf-8", "replace").rstrip("\r")
    if buf:
        yield bytes(buf).decode("utf-8", "replace").rstrip("\r")


def _json_object(data: str) -> dict:
    try:
        value = json.loads(data)
    except RecursionError:
        raise ServerError("stream chunk is JSON nested too deep", retry=True) from None
    if not isinstance(value, dict):
        raise ServerError(f"stream chunk is not a JSON object: {data[:200]}", retry=True)
    return value


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT else 0


def _mask(text: str, key: str) -> str:
    """`text` with every occurrence of the API key `key` replaced by <api key>."""
    return text.replace(key, "<api key>") if key and text else text


def _run(coro: Any) -> Any:
    """Run a coroutine to completion, also when the calling thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:  # a loop runs here: run this one in a thread of its own
        return pool.submit(asyncio.run, coro).result()
