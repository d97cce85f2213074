"""LLM calls made by breeding threads, carried out on the main thread.

Steps breed in worker threads (two at once in the steady-state mode); the in-process vLLM engine
is loaded and driven by the main thread only. `MainThreadLLM.generate`, called from any thread,
hands the batch to the main thread, which runs it inside `serve_until` and hands the answer back.
Each batch stays one `generate` call, so batches are composed as in a single-threaded run.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, TimeoutError
from typing import Sequence

from operators.backends import Backend, Completion, Request


class MainThreadLLM:
    """A backend whose calls run on the main thread."""

    def __init__(self, backend: Backend):
        self.backend, self.model_id = backend, backend.model_id
        self._calls: queue.Queue[tuple[Sequence[Request], Future]] = queue.Queue()
        self._closed = False

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if threading.current_thread() is threading.main_thread():
            return self.backend.generate(requests)
        if self._closed:
            raise RuntimeError("the search is stopping: no more LLM calls")
        answer: Future = Future()
        self._calls.put((requests, answer))
        while True:
            try:
                return answer.result(timeout=0.5)
            except TimeoutError:
                if self._closed:
                    raise RuntimeError("the search is stopping: no more LLM calls") from None

    def serve_until(self, done: Future) -> None:
        """Run the LLM calls other threads make until `done` completes (on the main thread)."""
        while not done.done():
            try:
                requests, answer = self._calls.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                answer.set_result(self.backend.generate(requests))
            except BaseException as exc:  # the caller's thread raises it
                answer.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise

    def close(self) -> None:
        """Refuse further calls and fail the waiting ones."""
        self._closed = True
        while True:
            try:
                _, answer = self._calls.get_nowait()
            except queue.Empty:
                return
            answer.set_exception(RuntimeError("the search is stopping: no more LLM calls"))
