"""operators.backends without a model: requests, completions, the response cache."""
from operators.backends import CachedBackend, Completion, DictCache, FunctionBackend, Request, cache_key

MSGS = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def echo(r: Request) -> str:
    return f"reply seed={r.seed} sample={r.sample}"


def test_request_round_trip_and_key_covers_everything():
    r = Request.chat(MSGS, max_tokens=10, temperature=0.5, top_p=0.9, seed=1, sample=0)
    assert r.message_dicts() == MSGS and r.to_dict()["messages"] == MSGS
    k = cache_key("m", r)
    assert k == cache_key("m", Request.chat(MSGS, max_tokens=10, temperature=0.5, top_p=0.9, seed=1))
    variants = [cache_key("other-model", r)] + [
        cache_key("m", Request.chat(MSGS, **{**dict(max_tokens=10, temperature=0.5, top_p=0.9, seed=1), **ch}))
        for ch in ({"max_tokens": 11}, {"temperature": 0.6}, {"top_p": 1.0}, {"seed": 2}, {"sample": 1})]
    variants.append(cache_key("m", Request.chat(MSGS[:1], max_tokens=10, temperature=0.5, top_p=0.9, seed=1)))
    assert k not in variants and len(set(variants)) == len(variants)


def test_completion_dict_round_trip():
    c = Completion("t", 3, 4, "length", 1.5, False, "", 2)
    assert Completion.from_dict({**c.to_dict(), "unknown": 1}) == c


def test_cache_miss_then_hit_returns_identical_text_without_calling_model():
    inner, cache = FunctionBackend(echo, model_id="fake"), DictCache()
    b = CachedBackend(inner, cache)
    reqs = [Request.chat(MSGS, seed=s, sample=i) for i, s in enumerate([7, 8, 9])]
    first = b.generate(reqs)
    assert [c.cached for c in first] == [False] * 3 and len(inner.calls) == 1 and len(inner.calls[0]) == 3
    assert len(cache.rows) == 3  # every call recorded
    request_record, _ = cache.rows[cache_key("fake", reqs[0])]
    assert request_record["model"] == "fake" and request_record["seed"] == 7
    second = b.generate(reqs)
    assert len(inner.calls) == 1  # the model was not called again
    assert [c.text for c in second] == [c.text for c in first] and all(c.cached for c in second)
    assert b.usage.cache_hits == 3 and b.usage.requests == 6


def test_only_misses_go_to_the_model_in_one_call_and_duplicates_once():
    inner = FunctionBackend(echo, model_id="fake")
    b = CachedBackend(inner, DictCache())
    b.generate([Request.chat(MSGS, seed=1)])
    r2 = Request.chat(MSGS, seed=2)
    out = b.generate([Request.chat(MSGS, seed=1), r2, r2])
    assert [len(c) for c in inner.calls] == [1, 1] and inner.calls[1] == [r2]
    assert [c.cached for c in out] == [True, False, True] and out[1].text == out[2].text


def test_deadline_and_error_results_are_recorded_but_retried():
    replies = iter(["", "good"])

    class Flaky(FunctionBackend):
        def generate(self, requests):
            out = super().generate(requests)
            if out[0].text == "":
                out[0].finish_reason = "deadline"
            return out

    inner, cache = Flaky(lambda r: next(replies), model_id="fake"), DictCache()
    b = CachedBackend(inner, cache)
    r = Request.chat(MSGS, seed=1)
    assert b.generate([r])[0].finish_reason == "deadline"
    assert cache.get(cache_key("fake", r))["finish_reason"] == "deadline"
    again = b.generate([r])[0]
    assert again.text == "good" and not again.cached and len(inner.calls) == 2


def test_prefix_staging_sends_sharers_after_their_leader():
    from operators.vllm_backend import VLLMBackend

    shared = list(range(100))
    ids = [shared + [1], shared + [2], list(range(500, 600)), shared[:10] + [3], list(range(500, 570)) + [9]]
    leaders, followers = VLLMBackend._stage([0, 1, 2, 3, 4], ids)
    assert leaders == [0, 2, 3] and followers == [1, 4]
