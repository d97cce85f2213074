"""Real vLLM on the registry 0.5B model, given as a local Hugging Face folder (slow: engine load 1-4 min on 2 CPU cores).

`pytest -m slow tests/test_vllm_backend.py`; also marked `ci`. Skipped when vllm or the
model part packages are missing. One engine (LLMSettings defaults) serves all tests.
"""
import importlib.util
import os

import pytest

from operators.backends import CachedBackend, DictCache, Request

pytestmark = [pytest.mark.slow, pytest.mark.ci]

MODEL = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def backend():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed")
    from operators.model_store import ModelStoreError, ensure_model

    try:
        path = ensure_model(MODEL)
    except ModelStoreError as e:
        pytest.skip(str(e))
    from operators.model_store import digest
    from operators.settings import LLMSettings
    from operators.vllm_backend import VLLMBackend

    # `[llm] model` as a local Hugging Face folder (the registry model's converted one); same engine config as
    # the LLMSettings defaults otherwise, so the torch.compile cache is shared with runs
    b = VLLMBackend.from_settings(LLMSettings(model=str(path), max_model_len=4096, deadline_s=120))
    assert b.model_id == f"{path.name}@{digest(path)[:12]}" and b.model_path == str(path)
    yield b
    b.close()


def ask(i: int, max_tokens: int = 24) -> Request:
    return Request.chat([{"role": "user", "content": f"Write a Python function that returns {i} + {i}."}],
                        max_tokens=max_tokens, temperature=0.7, top_p=0.95, seed=100 + i, sample=i)


def test_batched_generate_returns_one_completion_per_request(backend):
    reqs = [ask(i) for i in range(4)]
    out = backend.generate(reqs)
    assert len(out) == 4
    for c in out:
        assert c.finish_reason in ("stop", "length") and c.text
        assert 0 < c.completion_tokens <= 24 and c.prompt_tokens > 10 and c.latency_s > 0
    assert backend.generate(reqs[:1])[0].text == out[0].text  # seeded sampling is reproducible


def test_deadline_aborts_unfinished_requests(backend):
    import time

    t = time.perf_counter()
    long = [Request.chat([{"role": "user", "content": f"Write a 3000-word essay on sorting algorithms, part {i}."}],
                         max_tokens=1800, seed=i) for i in range(2)]
    out = backend.generate(long, deadline_s=3.0)
    assert time.perf_counter() - t < 3.0 + 5.0  # one engine step + abort drain at most
    assert [c.finish_reason for c in out] == ["deadline", "deadline"]
    assert all(c.completion_tokens < 1800 for c in out)
    assert not backend.engine.has_unfinished_requests()
    assert backend.generate([ask(0)])[0].finish_reason in ("stop", "length")  # engine still usable


def test_cache_hit_returns_identical_text_without_calling_model(backend):
    cached = CachedBackend(backend, DictCache())
    reqs = [ask(i) for i in (7, 8)]
    first = cached.generate(reqs)
    calls = backend.usage.calls
    second = cached.generate(reqs)
    assert backend.usage.calls == calls
    assert [c.text for c in second] == [c.text for c in first] and all(c.cached for c in second)


def test_the_engine_runs_in_this_process_so_kill_9_leaves_nothing_behind(backend):
    """No engine or worker process of vLLM's: killing the run kills the model with it."""
    from procs import children, cmdline

    assert backend.generate([ask(0, 4)])[0].ok
    spawned = [pid for pid in children(os.getpid()) if b"resource_tracker" not in cmdline(pid)]
    assert not [cmdline(pid)[:80] for pid in spawned if b"VLLM" in cmdline(pid) or b"vllm" in cmdline(pid)]


def test_cpu_env_turns_the_failing_aot_compile_off_unless_the_user_set_it(monkeypatch):
    from operators.vllm_backend import set_vllm_cpu_env

    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    set_vllm_cpu_env()
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    set_vllm_cpu_env()
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"
