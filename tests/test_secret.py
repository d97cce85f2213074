"""The engine's secret: created once, private, reused; seeds derived from it; bad files refused."""
import os
import stat

import pytest

from fitness.secret import derive_seed, fingerprint, load_or_create


def test_created_once_private_and_reused(tmp_path):
    path = tmp_path / "run" / "secret.key"
    key = load_or_create(path)
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create(path) == key
    assert sorted(os.listdir(path.parent)) == ["secret.key"]  # no temporary file left
    assert load_or_create(tmp_path / "other.key") != key


def test_bad_file_refused(tmp_path):
    path = tmp_path / "secret.key"
    path.write_text("not hex\n")
    with pytest.raises(ValueError, match="not an evoarch secret"):
        load_or_create(path)
    assert path.read_text() == "not hex\n"  # nothing stored is lost


def test_derived_seeds_and_fingerprint():
    key = bytes(range(32))
    assert derive_seed(key, "test", "mqar", 64) == derive_seed(key, "test", "mqar", 64)
    assert derive_seed(key, "test", "mqar", 64) != derive_seed(key, "test", "mqar", 128)
    assert derive_seed(key, "test", "mqar", 64) != derive_seed(bytes(32), "test", "mqar", 64)
    assert 0 <= derive_seed(key, "x") < 2 ** 63
    assert fingerprint(key) != fingerprint(bytes(32)) and key.hex()[:12] != fingerprint(key)
