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


# ---------------------------------------------------------------------------------------
# against a tiny scripted HTTP server (asyncio, 127.0.0.1): replies no model server gives


class Scripted:
    """An HTTP server on 127.0.0.1 in a thread of its own; `reply(writer, head)` answers each request."""

    def __init__(self, reply):
        import asyncio
        import threading

        self.reply, self.heads, self.loop = reply, [], asyncio.new_event_loop()
        ready = threading.Event()

        async def serve(reader, writer):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                size = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                             if h.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(size)
                self.heads.append(head)
                await self.reply(writer, head)
            except Exception:
                pass
            finally:
                writer.close()

        async def start():
            self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
            ready.set()

        def main():
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.wait(10)

    def close(self):
        """Stop serving, end the replies still running, stop the thread."""
        import asyncio

        async def shut():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def scripted():
    made = []

    def make(reply):
        made.append(Scripted(reply))
        return made[-1]

    yield make
    for s in made:
        s.close()


def sse(*events: bytes) -> bytes:
    """A 200 event-stream answer of `events` (each a data: payload) and [DONE], closed after."""
    body = b"".join(b"data: " + e + b"\n\n" for e in (*events, b"[DONE]"))
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + body


def answer(data: bytes):
    async def reply(writer, head):
        writer.write(data)
        await writer.drain()
    return reply


STOP = b'{"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}'


def test_malformed_stream_chunks_are_error_completions_never_exceptions(scripted):
    cases = {
        b"[" * 100_000 + b"]" * 100_000: "nested too deep",  # json.loads raised RecursionError out of generate
        b"[1, 2]": "not a JSON object",
        b"not json": "JSONDecodeError",
        b'{"choices": [{"delta": {"content": "a"}}]}': "before a finish_reason",
        b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}": "ValueError",
    }
    for chunk, why in cases.items():
        server = scripted(answer(sse(chunk)))
        c = OpenAIBackend(server.url, "m", deadline_s=10, retries=0).generate([ask(0)])[0]
        assert c.finish_reason == "error" and why in c.error, (chunk[:40], c)


def test_odd_but_readable_chunks_give_the_text_and_believable_counts(scripted):
    server = scripted(answer(sse(
        b'{"choices": [1, {"delta": {"content": "x"}}]}',  # a non-dict choice: skipped
        b'{"choices": [{"delta": "x"}]}', b'{"choices": [{"delta": {"content": 5}}]}',
        b'{"error": null, "choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}],'
        b' "usage": {"prompt_tokens": "7", "completion_tokens": 1000000000000000000000}}')))
    c = OpenAIBackend(server.url, "m", deadline_s=10, retries=0).generate([ask(0)])[0]
    assert (c.text, c.finish_reason, c.error) == ("ok", "stop", "")
    assert c.prompt_tokens == 0 and c.completion_tokens == 1  # unbelievable counts are not taken


def test_an_endless_reply_line_is_cut_at_the_reply_limit_not_held_in_memory(scripted):
    import operators.openai_backend as ob

    async def endless(writer, head):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: ")
        for _ in range(2000):  # 2 GB if read to the end
            writer.write(b"a" * (1 << 20))
            await writer.drain()

    server = scripted(endless)
    t = time.monotonic()
    c = OpenAIBackend(server.url, "m", deadline_s=30, retries=0).generate([ask(0)])[0]
    assert c.finish_reason == "error" and f"passed {ob.reply_limit(16)} bytes" in c.error
    assert time.monotonic() - t < 10


def test_the_api_key_is_masked_in_an_error_that_echoes_the_request(scripted, monkeypatch):
    async def echo(writer, head):
        body = b"unauthorised; you sent:\n" + head
        writer.write(b"HTTP/1.1 401 No\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    server = scripted(echo)
    monkeypatch.setenv("EVO_TEST_KEY", "sk-the-secret-4e1f")
    c = OpenAIBackend(server.url, "m", api_key_env="EVO_TEST_KEY", deadline_s=10).generate([ask(0)])[0]
    assert b"sk-the-secret-4e1f" in server.heads[0]  # it was sent, and echoed back
    assert c.finish_reason == "error" and "HTTP 401" in c.error and "Bearer <api key>" in c.error
    assert "sk-the-secret-4e1f" not in c.error


def test_the_deadline_bounds_a_call_whose_requests_wait_for_a_server_that_never_answers(scripted):
    import asyncio

    async def never(writer, head):
        await asyncio.sleep(3600)

    server = scripted(never)
    t = time.monotonic()
    out = OpenAIBackend(server.url, "m", deadline_s=1.5, parallel=1, retries=3).generate([ask(i) for i in range(3)])
    assert 1.4 < time.monotonic() - t < 4
    assert [c.finish_reason for c in out] == ["deadline"] * 3 and [c.attempts for c in out] == [1, 0, 0]


def test_retries_with_backoff_stop_at_the_deadline(scripted):
    server = scripted(answer(b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\n\r\nbusy"))
    t = time.monotonic()
    c = OpenAIBackend(server.url, "m", deadline_s=1.5, retries=5, backoff_s=1.0).generate([ask(0)])[0]
    assert 1.4 < time.monotonic() - t < 4
    assert c.finish_reason == "deadline" and c.attempts == 2 and "HTTP 503" in c.error


def test_a_connect_timeout_before_the_deadline_is_a_retried_connection_failure(monkeypatch):
    import socket

    import operators.openai_backend as ob

    monkeypatch.setattr(ob, "CONNECT_TIMEOUT_S", 0.4)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepts: once its queue is full, connection attempts hang
    port, fill = listener.getsockname()[1], []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fill.append(s)
    try:
        t = time.monotonic()
        c = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", deadline_s=20, retries=1,
                          backoff_s=0.1).generate([ask(0)])[0]
        took = time.monotonic() - t
    finally:
        for s in [*fill, listener]:
            s.close()
    assert c.finish_reason == "error" and "ConnectTimeout" in c.error and c.attempts == 2, c
    assert took < 5


def test_generate_works_from_a_thread_that_runs_an_event_loop(scripted):
    import asyncio

    server = scripted(answer(sse(STOP)))
    b = OpenAIBackend(server.url, "m", deadline_s=10)

    async def inside():
        return b.generate([ask(0), ask(1)])

    assert [c.text for c in asyncio.run(inside())] == ["ok", "ok"]


def test_a_key_read_with_its_newline_is_sent_stripped_and_a_malformed_one_is_refused_unquoted(scripted, monkeypatch):
    """Before: the key's newline made the HTTP library refuse the header and quote it, key and all, in the error
    that the archive stores."""
    server = scripted(answer(sse(STOP)))
    monkeypatch.setenv("EVO_TEST_KEY", "sk-the-secret-4e1f\n")
    b = OpenAIBackend(server.url, "m", api_key_env="EVO_TEST_KEY", deadline_s=10, retries=0)
    c = b.generate([ask(0)])[0]
    assert (c.text, c.error) == ("ok", "") and b"Bearer sk-the-secret-4e1f\r\n" in server.heads[0]
    for bad in ("sk-the secret", "sk-th\u00e9-secret", "sk-the-\x07secret"):
        monkeypatch.setenv("EVO_TEST_KEY", bad)
        with pytest.raises(RuntimeError, match="'EVO_TEST_KEY' holds no API key") as err:
            b.generate([ask(0)])
        assert "secret" not in str(err.value)
