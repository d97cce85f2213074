"""Python source to a syntax tree, one thread at a time.

CPython 3.11's `ast.parse` is not thread-safe: the AST constructor keeps its recursion depth in
interpreter-wide state, so two threads parsing at once can fail with "SystemError: AST
constructor recursion depth mismatch" (python/cpython#106905). Breeding threads, executor
threads and the main thread all parse genomes, and the standard library and torch parse too
(`traceback` formats carets with `ast.parse`, `torch.jit` parses sources). So importing this
module makes the process's `ast.parse` take one lock, and `parse` retries the spurious error,
which a caller that builds trees without `ast.parse` can still provoke.
"""
from __future__ import annotations

import ast
import functools
import threading

_LOCK = threading.RLock()  # re-entrant: a finalizer run by the GC mid-parse may parse too
_UNLOCKED_PARSE = getattr(ast.parse, "__wrapped__", ast.parse)
_RACE = "AST constructor recursion depth mismatch"
_TRIES = 5


@functools.wraps(_UNLOCKED_PARSE)
def _locked_parse(*args, **kwargs):
    with _LOCK:
        return _UNLOCKED_PARSE(*args, **kwargs)


ast.parse = _locked_parse


def parse(source: str, mode: str = "exec") -> ast.AST:
    """`ast.parse(source, mode=mode)`, serialised with every other parse, retried on the race."""
    for _ in range(_TRIES - 1):
        try:
            return ast.parse(source, mode=mode)
        except SystemError as e:
            if _RACE not in str(e):
                raise
    return ast.parse(source, mode=mode)
