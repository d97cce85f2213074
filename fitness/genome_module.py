"""A genome's source as a Python module in the worker, and its errors as one line for the LLM."""
from __future__ import annotations

import linecache
import traceback
import types

GENOME_FILENAME = "<genome>"


def load_genome(code: str) -> types.ModuleType:
    """Execute the genome's source as a fresh module named `genome` (tracebacks show its lines)."""
    linecache.cache[GENOME_FILENAME] = (len(code), None, code.splitlines(True), GENOME_FILENAME)
    module = types.ModuleType("genome")
    module.__file__ = GENOME_FILENAME
    exec(compile(code, GENOME_FILENAME, "exec"), module.__dict__)
    if not isinstance(getattr(module, "Mixer", None), type):
        raise TypeError("the genome does not define a class `Mixer`")
    return module


def describe_exception(exc: BaseException) -> str:
    """`Type: message (genome line N: <source>)`, pointing at the deepest genome frame if any."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    if len(msg) > 600:
        msg = msg[:600] + " ..."
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == GENOME_FILENAME]
    if frames:
        f = frames[-1]
        msg += f" (genome line {f.lineno}: `{(f.line or '').strip()}`)"
    return msg


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means the evaluation ran out of host or device memory."""
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()
