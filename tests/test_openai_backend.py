"""operators.openai_backend against a real llama.cpp server on 127.0.0.1 (the registry 0.5B model)."""
import os
import signal
import time

import pytest

from llm_server import llama_server, needs_server
from operators.backends import Request
from operators.openai_backend import OpenAIBackend


def ask(i: int, max_tokens: int = 16) -> Request:
    return Request.chat([{"role": "user", "content": f"Write a Python function that returns {i} + {i}."}],
                        max_tokens=max_tokens, temperature=0.0, seed=100 + i, sample=i)


@pytest.fixture(scope="module")
def server():
    needs_server()
    with llama_server(parallel=4, api_key_env="EVO_TEST_KEY", env={"EVO_TEST_KEY": "sekrit"}) as s:
        yield s


def test_a_batch_is_answered_in_order_with_token_counts(server, monkeypatch):
    monkeypatch.setenv("EVO_TEST_KEY", "sekrit")
    b = OpenAIBackend(server[0], "qwen", api_key_env="EVO_TEST_KEY", deadline_s=120, parallel=4)
    out = b.generate([ask(i) for i in range(4)])
    assert [c.finish_reason for c in out] == ["length"] * 4 and all(c.text for c in out)
    assert all(c.completion_tokens == 16 and c.prompt_tokens > 10 for c in out)
    three, seven = b.generate([ask(3, 64), ask(7, 64)])
    assert "3" in three.text and "7" not in three.text and "7" in seven.text and "3" not in seven.text
    assert b.usage.requests == 6 and b.usage.calls == 2 and b.usage.completion_tokens > 64


def test_a_wrong_key_is_an_error_without_retries(server, monkeypatch):
    monkeypatch.setenv("EVO_TEST_KEY", "wrong")
    b = OpenAIBackend(server[0], "qwen", api_key_env="EVO_TEST_KEY", deadline_s=60, retries=3, backoff_s=5)
    t = time.monotonic()
    c = b.generate([ask(0)])[0]
    assert c.finish_reason == "error" and "HTTP 401" in c.error and c.attempts == 1
    assert time.monotonic() - t < 5  # no backoff sleeps for a 4xx
    monkeypatch.delenv("EVO_TEST_KEY")
    with pytest.raises(RuntimeError, match="EVO_TEST_KEY"):
        b.generate([ask(0)])


def test_a_stalled_server_is_abandoned_at_the_deadline(server, monkeypatch):
    monkeypatch.setenv("EVO_TEST_KEY", "sekrit")
    b = OpenAIBackend(server[0], "qwen", api_key_env="EVO_TEST_KEY", deadline_s=6, parallel=4)
    os.kill(server[1].pid, signal.SIGSTOP)  # the server stops answering (connections stay open)
    try:
        t = time.monotonic()
        out = b.generate([ask(i, 200) for i in range(3)])
        took = time.monotonic() - t
    finally:
        os.kill(server[1].pid, signal.SIGCONT)
    assert [c.finish_reason for c in out] == ["deadline"] * 3 and all("6s deadline" in c.error for c in out)
    assert 5.5 < took < 12
    assert b.generate([ask(1)])[0].finish_reason == "length"  # answers again once resumed


def test_no_server_is_retried_with_backoff_then_an_error():
    from operators.llamacpp_backend import free_port

    b = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "qwen", deadline_s=30, retries=2, backoff_s=0.5)
    t = time.monotonic()
    c = b.generate([ask(0)])[0]
    assert c.finish_reason == "error" and c.attempts == 3 and "ConnectError" in c.error
    assert 1.4 < time.monotonic() - t < 10  # slept 0.5 + 1.0 between the attempts


@pytest.mark.slow
@pytest.mark.ci
def test_a_search_through_a_server_that_stalls_mid_batch_stores_what_it_got_and_resumes(tmp_path, monkeypatch):
    """A generation of LLM children through the server; the server stops answering once the first reply
    of the batch is done: the rest are abandoned at the deadline, the run stops (resumable) with the
    answers it got stored; `evo resume` after the server is back reuses them and asks for the rest.
    The server wants an API key: the run reads it from the environment and writes it nowhere."""
    import sqlite3
    import threading

    from archive.store import Archive
    from evo.config import parse_config
    from evo.run import resume_run, start_run
    from llm_server import metric

    needs_server()
    tiny = {"d_model": 32, "n_heads": 2, "n_layers": 1, "seq_len": 32, "num_kv_pairs": 2, "vocab_size": 256,
            "batch_size": 8, "steps": 12, "eval_batches": 1}
    key = "evo-test-key-5c1e0d"
    monkeypatch.setenv("EVO_SERVER_KEY", key)
    with llama_server(parallel=3, threads=2, api_key_env="EVO_SERVER_KEY") as (url, proc):
        config = parse_config({
            "run": {"runs_dir": str(tmp_path)}, "operators": {"kind": "llm"}, "novelty": {"enabled": False},
            "search": {"strategy": "mu_plus_lambda", "children": 3, "budget": {"max_steps": 1}},
            "llm": {"backend": "openai", "base_url": url, "model": "qwen", "parallel": 3, "deadline_s": 75,
                    "api_key_env": "EVO_SERVER_KEY",
                    "retries": 0, "max_tokens": 160, "repair_attempts": 1, "examples_k": 0},
            "fitness": {"workers": 2, "checks": {"complexity_probe": False}, "promotion": {"top_k": 0},
                        "racing": {"baseline_seeds": 1, "min_seeds": 1},
                        "stage1": tiny, "stage2": {**tiny, "seeds": [0]}}})
        stop_at_first_reply, stalled = threading.Event(), threading.Event()

        def stall() -> None:  # once the first request of the batch has finished and its reply is sent
            while not stop_at_first_reply.is_set():
                if metric(url, "tokens_predicted_total", key) > 0:
                    time.sleep(1.5)
                    os.kill(proc.pid, signal.SIGSTOP)
                    stalled.set()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=stall, daemon=True)
        watcher.start()
        with pytest.raises(RuntimeError, match="answered none of"):
            start_run(config, "stalled")
        stop_at_first_reply.set()
        assert stalled.is_set()
        run_dir = tmp_path / "stalled"
        rows = sqlite3.connect(run_dir / "archive.sqlite").execute(
            "SELECT key, json_extract(completion, '$.finish_reason'), id FROM llm_calls").fetchall()
        answered = {k: i for k, reason, i in rows if reason in ("stop", "length")}
        assert answered and any(reason == "deadline" for _, reason, _ in rows), rows_debug(run_dir)
        assert Archive(run_dir / "archive.sqlite", readonly=True).last_checkpoint() == 0

        os.kill(proc.pid, signal.SIGCONT)
        resume_run(run_dir)
        archive = Archive(run_dir / "archive.sqlite", readonly=True)
        assert archive.get_meta("status") == "finished" and archive.last_checkpoint() == 1
        newest = {}
        for k, reason, i in sqlite3.connect(run_dir / "archive.sqlite").execute(
                "SELECT key, json_extract(completion, '$.finish_reason'), id FROM llm_calls ORDER BY id"):
            newest[k] = (reason, i)
        assert all(newest[k][1] == i for k, i in answered.items())  # the stored answers were reused
        assert any(reason in ("stop", "length") and k not in answered for k, (reason, _) in newest.items())
        assert [g for g in archive.genomes() if g.operator.startswith("llm_")]
    for path in run_dir.rglob("*"):
        assert not path.is_file() or key.encode() not in path.read_bytes(), f"the API key is in {path}"


def rows_debug(run_dir):
    import sqlite3

    return sqlite3.connect(run_dir / "archive.sqlite").execute(
        "SELECT json_extract(completion, '$.finish_reason'), json_extract(completion, '$.error'), "
        "substr(json_extract(completion, '$.text'), 1, 80) FROM llm_calls").fetchall()
