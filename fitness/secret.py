"""The engine's secret: the key from which every held-out test set is derived.

Test data must be unknowable to a genome, yet the same for every genome of a run (and of
paired runs) so scores compare, and the same again on resume so runs replay. So test sets are
drawn from seeds derived (HMAC-SHA256) from a random key kept in a file that only the engine
reads: `secret.key` in the run directory (or a bench folder, or the user's cache for
`evo evaluate`), created once with mode 0600. The sandbox can read none of these places.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_FILE = "secret.key"
_BYTES = 32


def load_or_create(path: str | Path) -> bytes:
    """The secret stored at `path`, created (random, 0600, atomically) if the file does not exist.
    Raises ValueError for a file that is not a secret this module wrote."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(_BYTES)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        try:
            os.link(tmp, path)  # never replaces a secret another process created meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return load_or_create(path)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != _BYTES:
        raise ValueError(f"{path} is not an evoarch secret ({_BYTES} bytes as hex); remove it to make a new one "
                         "(scores of runs made with the old one will not compare with new ones)")
    return key


def default_secret() -> bytes:
    """The user's own secret for evaluations outside a run (`evo evaluate`): ~/.cache/evoarch/secret.key,
    or $EVOARCH_CACHE/secret.key."""
    root = os.environ.get("EVOARCH_CACHE")
    return load_or_create((Path(root) if root else Path.home() / ".cache" / "evoarch") / SECRET_FILE)


def derive_seed(secret: bytes, *parts: object) -> int:
    """A 63-bit seed from the secret and a description of what it seeds."""
    digest = hmac.new(secret, "|".join(map(str, parts)).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def fingerprint(secret: bytes) -> str:
    """A short public name of a secret (safe to store and print: it reveals nothing of the key)."""
    return hmac.new(secret, b"evoarch-fingerprint", hashlib.sha256).hexdigest()[:12]
