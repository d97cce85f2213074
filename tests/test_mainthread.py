"""LLM calls from breeding threads run on the main thread, one batch per call; closing fails waiters."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from evo.mainthread import MainThreadLLM
from operators.backends import Completion, Request


class Recorder:
    """Answers each request with the name of the thread that ran the batch."""

    model_id = "recorder"

    def __init__(self):
        self.batches = []

    def generate(self, requests):
        self.batches.append(len(requests))
        return [Completion(threading.current_thread().name) for _ in requests]


def test_calls_from_threads_run_on_the_main_thread_in_whole_batches():
    backend = Recorder()
    llm = MainThreadLLM(backend)
    with ThreadPoolExecutor(2) as pool:
        work = [pool.submit(llm.generate, [Request((("user", str(i)),))] * (i + 1)) for i in range(2)]
        for w in work:
            llm.serve_until(w)
        answers = [w.result() for w in work]
    assert sorted(backend.batches) == [1, 2]
    assert {c.text for a in answers for c in a} == {threading.main_thread().name}
    assert llm.generate([Request((("user", "x"),))])[0].text == threading.main_thread().name  # direct on main


def test_closing_fails_callers_instead_of_hanging():
    llm = MainThreadLLM(Recorder())
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(llm.generate, [Request((("user", "x"),))])
        llm.close()
        with pytest.raises(RuntimeError, match="stopping"):
            waiting.result(timeout=5)
