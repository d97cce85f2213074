"""operators.llamacpp_backend: llama.cpp in-process (xllamacpp) on the registry 0.5B model's GGUF file,
given as `[llm] model` by its path."""
import pytest

from llm_server import needs_server
from operators.backends import LazyBackend, Request
from operators.settings import LLMSettings


def test_a_gguf_file_as_model_loads_in_process_and_answers_a_batch():
    needs_server()
    from operators.model_store import MODELS, ensure_gguf

    gguf = ensure_gguf("qwen2.5-coder-0.5b")
    settings = LLMSettings(backend="llamacpp", model=str(gguf), parallel=2, threads=2, max_model_len=1024)
    backend = LazyBackend(settings)
    assert backend.model_id == f"{gguf.name}@{MODELS['qwen2.5-coder-0.5b'].sha256[:12]}"  # the file's own sha256
    try:
        out = backend.generate([Request.chat([{"role": "user", "content": f"Say the number {i}."}], max_tokens=8,
                                             temperature=0.0, seed=i) for i in (4, 9)])
        assert [c.finish_reason in ("stop", "length") for c in out] == [True, True]
        assert "4" in out[0].text and "9" in out[1].text and all(0 < c.completion_tokens <= 8 for c in out)
    finally:
        backend.close()


def test_the_llamacpp_backend_refuses_a_folder():
    from operators.model_store import ModelStoreError
    from operators.llamacpp_backend import LlamaCppBackend

    with pytest.raises(ModelStoreError, match="loads a .gguf file"):
        LlamaCppBackend.from_settings(LLMSettings(backend="llamacpp", model="/tmp"))


def test_ngram_speculation_keeps_greedy_replies_identical():
    """Drafts are verified by the model: with temperature 0 the reply is the one plain decoding gives."""
    needs_server()
    from operators.model_store import ensure_gguf

    gguf = str(ensure_gguf("qwen2.5-coder-0.5b"))
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    ask = Request.chat([{"role": "user", "content": f"Repeat this code exactly, then stop:\n{code}"}], max_tokens=48,
                       temperature=0.0, seed=0)
    replies = []
    for speculative in ("none", "ngram"):
        backend = LazyBackend(LLMSettings(backend="llamacpp", model=gguf, parallel=1, threads=2,
                                          max_model_len=1024, speculative=speculative))
        try:
            replies.append(backend.generate([ask])[0].text)
        finally:
            backend.close()
    assert replies[0] and replies[0] == replies[1]
    assert "return a - b" in replies[0]
