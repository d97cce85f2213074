"""The messages between the engine and a sandboxed worker, and the hard limits on reading them.

A message is one frame: an 8-byte header (two big-endian uint32: JSON length, array-bytes
length), a JSON object, then the raw bytes of the arrays the JSON's `arrays` entry lists as
[name, dtype, shape]. Everything a worker sends is untrusted (a genome runs in its process):
the engine reads a frame only up to the limits it passes, decodes JSON with bounded size and
nesting, accepts only the dtypes in `DTYPES`, and checks that the declared shapes account for
every byte. A violation raises ProtocolError, which the engine turns into a failed evaluation.

FITNESS_PROTOCOL is the version of the whole scoring protocol (what the worker is sent, what
it returns, how the engine scores it). Every evaluation records it; stored results are reused
and runs resumed only under the same version.
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

FITNESS_PROTOCOL = 2
HEADER = struct.Struct(">II")
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8
DTYPES = {"int32": np.int32, "float32": np.float32, "uint8": np.uint8, "int64": np.int64}


class ProtocolError(ValueError):
    """A frame that breaks the protocol or its limits (garbled, oversized, wrong shape)."""


class PayloadTooLarge(ProtocolError):
    """A frame announces more bytes of arrays than the reader allows (`size`: how many)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"arrays of {size} bytes exceed the limit of {limit} for this message")
        self.size = size


def encode(message: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One frame: `message` (a JSON object) with `arrays` appended as raw little-endian bytes."""
    arrays = arrays or {}
    specs, blobs = [], []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.name
        if dtype not in DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {dtype} is not one of {sorted(DTYPES)}")
        specs.append([name, dtype, list(array.shape)])
        blobs.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    body = json.dumps({**message, "arrays": specs}, separators=(",", ":")).encode()
    payload = b"".join(blobs)
    return HEADER.pack(len(body), len(payload)) + body + payload


def _depth(value, limit: int) -> None:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ProtocolError(f"message nests deeper than {limit} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def number(value: object, low: float, high: float) -> float:
    """A number received from an untrusted peer, if it is a finite int or float within [low, high];
    ProtocolError otherwise (no bools, no 10**400, no NaN)."""
    if type(value) not in (int, float) or not (low <= value <= high):  # NaN fails the comparison
        raise ProtocolError(f"expected a number in [{low:g}, {high:g}], got {str(value)[:40]}")
    return value


def parse_json(data: bytes, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from untrusted bytes: size, nesting and type bounded; ProtocolError otherwise."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if data.count(b"[") + data.count(b"{") > max_bytes // 4:
        raise ProtocolError("message has too many nested containers")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"message is not valid JSON: {type(e).__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"message is a JSON {type(value).__name__}, not an object")
    _depth(value, MAX_JSON_DEPTH)
    return value


def decode(header: bytes, body: bytes, payload: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Message and arrays of one frame (its three parts already read)."""
    message = parse_json(body)
    specs = message.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) > 4096:
        raise ProtocolError("`arrays` must be a list of at most 4096 specs")
    arrays, offset = {}, 0
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and spec[1] in DTYPES
                and isinstance(spec[2], list) and len(spec[2]) <= 8
                and all(type(d) is int and 0 <= d < 2 ** 31 for d in spec[2])):
            raise ProtocolError(f"bad array spec {str(spec)[:80]}")
        name, dtype, shape = spec
        dt = np.dtype(DTYPES[dtype]).newbyteorder("<")
        size = math.prod(shape) * dt.itemsize  # Python ints: no wrap-around
        if offset + size > len(payload):
            raise ProtocolError(f"array {name[:40]!r} declares more bytes than the frame holds")
        arrays[name] = np.frombuffer(payload, dtype=dt, count=size // dt.itemsize, offset=offset).reshape(shape)
        offset += size
    if offset != len(payload):
        raise ProtocolError(f"{len(payload) - offset} bytes of the frame belong to no declared array")
    return message, arrays


def frame_sizes(header: bytes, max_json: int, max_payload: int) -> tuple[int, int]:
    """(JSON length, payload length) of a frame header, each checked against its limit."""
    if len(header) != HEADER.size:
        raise ProtocolError("truncated frame header")
    n_json, n_payload = HEADER.unpack(header)
    if n_json > max_json:
        raise ProtocolError(f"message of {n_json} bytes exceeds the limit of {max_json}")
    if n_payload > max_payload:
        raise PayloadTooLarge(n_payload, max_payload)
    return n_json, n_payload


# ---------------------------------------------------------------- worker side (blocking, trusted peer)


def read_exactly(fd: int, n: int) -> bytes:
    """n bytes from fd (blocking); EOFError if the peer closed first."""
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError("the engine closed the channel")
        out += chunk
    return bytes(out)


def read_frame(fd: int, max_payload: int = 1 << 30) -> tuple[dict, dict[str, np.ndarray]]:
    """One frame from the engine (blocking)."""
    header = read_exactly(fd, HEADER.size)
    n_json, n_payload = frame_sizes(header, 1 << 26, max_payload)
    return decode(header, read_exactly(fd, n_json), read_exactly(fd, n_payload))


def write_frame(fd: int, message: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write one frame to fd (blocking)."""
    data = memoryview(encode(message, arrays))
    while data:
        data = data[os.write(fd, data):]
