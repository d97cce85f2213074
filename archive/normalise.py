"""Canonical form of a genome's source: what is hashed, deduplicated and embedded.

Two sources that differ only in comments, docstrings, blank lines, quoting or other
formatting normalise to the same text and therefore the same `code_hash`.
"""
from __future__ import annotations

import ast
import hashlib

from records.source import parse as parse_source

_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


class NormaliseError(ValueError):
    """The source is not valid Python, so it has no normal form."""


class _DropStringStatements(ast.NodeTransformer):
    """Remove statements that are a bare string literal (docstrings and string "comments")."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            kept = [s for s in body if not _is_string_statement(s)]
            if not kept and field != "orelse" and not isinstance(node, ast.Module):
                kept = [ast.Pass()]  # a block may not be empty (an empty `else` just goes)
            setattr(node, field, kept)
        return node


def _is_string_statement(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def normalise(code: str) -> str:
    """Return the canonical form of `code`: parsed, docstrings and comments dropped, unparsed.

    Comments vanish in the parse; every statement that is only a string literal
    (docstrings, and strings used as block comments) is removed, leaving `pass` where
    a block would become empty. The result is stable: normalise(normalise(c)) == normalise(c).
    Raises NormaliseError (a ValueError) with the line and message on a syntax error.
    """
    try:
        tree = parse_source(code)
    except SyntaxError as e:
        raise NormaliseError(f"cannot normalise: syntax error at line {e.lineno}: {e.msg}") from e
    except ValueError as e:  # e.g. source containing null bytes
        raise NormaliseError(f"cannot normalise: {e}") from e
    tree = _DropStringStatements().visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def code_hash(code: str) -> str:
    """sha256 (hex) of the normalised code; raises NormaliseError if `code` does not parse."""
    return hashlib.sha256(normalise(code).encode("utf-8")).hexdigest()
