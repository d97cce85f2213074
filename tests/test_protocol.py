"""Frames between engine and worker: round trip, and every limit the engine reads them with."""
import json
import os

import numpy as np
import pytest

from fitness.protocol import HEADER, ProtocolError, decode, encode, frame_sizes, parse_json, read_frame, write_frame


def split(frame: bytes):
    n_json, n_payload = HEADER.unpack(frame[:HEADER.size])
    body = frame[HEADER.size:HEADER.size + n_json]
    return frame[:HEADER.size], body, frame[HEADER.size + n_json:]


def test_round_trip_through_a_pipe():
    r, w = os.pipe()
    arrays = {"logp": np.linspace(-3, 0, 12, dtype=np.float32).reshape(4, 3), "argmax": np.arange(4, dtype=np.int32)}
    write_frame(w, {"op": "predictions", "n": 4}, arrays)
    message, got = read_frame(r)
    os.close(r)
    os.close(w)
    assert message == {"op": "predictions", "n": 4}
    assert set(got) == {"logp", "argmax"}
    assert all(np.array_equal(got[k], arrays[k]) and got[k].dtype == arrays[k].dtype for k in arrays)


def test_sizes_are_checked_before_reading():
    header, _, _ = split(encode({"op": "x"}, {"a": np.zeros(100, np.float32)}))
    with pytest.raises(ProtocolError, match="exceed the limit of 10"):
        frame_sizes(header, 1000, 10)
    with pytest.raises(ProtocolError, match="exceeds the limit of 5"):
        frame_sizes(header, 5, 1000)


@pytest.mark.parametrize("body,match", [
    (b"[1, 2]", "not an object"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 60_000, "too many nested"),
    (json.dumps({"a": [[[[[[[[[[1]]]]]]]]]]}).encode(), "deeper than 8"),
    (b'{"a": ' + b"1" * 70_000 + b"}", "exceeds the limit"),
])
def test_untrusted_json_is_bounded(body, match):
    with pytest.raises(ProtocolError, match=match):
        parse_json(body)


@pytest.mark.parametrize("specs,payload,match", [
    ([["a", "float64", [2]]], b"\0" * 16, "bad array spec"),
    ([["a", "float32", [4]]], b"\0" * 8, "declares more bytes"),
    ([["a", "float32", [1]]], b"\0" * 8, "belong to no declared array"),
    ([["a", "float32", [-1]]], b"", "bad array spec"),
    ("nope", b"", "must be a list"),
])
def test_arrays_must_account_for_every_byte(specs, payload, match):
    body = json.dumps({"op": "x", "arrays": specs}).encode()
    with pytest.raises(ProtocolError, match=match):
        decode(b"", body, payload)


def test_only_known_dtypes_are_sent():
    with pytest.raises(ProtocolError, match="dtype"):
        encode({"op": "x"}, {"a": np.zeros(2, dtype=np.float64)})
