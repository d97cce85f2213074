"""Python source to a syntax tree, one thread at a time.

CPython 3.11's `ast.parse` is not thread-safe: the AST constructor keeps its recursion depth in
interpreter-wide state, so two threads parsing at once can fail with "SystemError: AST
constructor recursion depth mismatch" (python/cpython#106905). Breeding threads, executor
threads and the main thread all parse genomes, so every parse in evoarch goes through `parse`.
"""
from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, mode: str = "exec") -> ast.AST:
    """`ast.parse(source, mode=mode)`, serialised with every other call."""
    with _LOCK:
        return ast.parse(source, mode=mode)
