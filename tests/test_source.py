"""records.source: parsing from many threads at once never fails with CPython 3.11's AST race."""
import ast
import gc
import threading
import time
from pathlib import Path

import pytest

from records import source
from records.source import parse

SOURCE = Path(__file__).parents[1].joinpath("operators", "classic.py").read_text()


@pytest.fixture
def switching_gc():
    """A GC that hands the interpreter to other threads in the middle of building a tree."""
    def yield_thread(phase, info):
        if phase == "start":
            time.sleep(0)
    threshold = gc.get_threshold()
    gc.callbacks.append(yield_thread)
    gc.set_threshold(50)
    yield
    gc.callbacks.remove(yield_thread)
    gc.set_threshold(*threshold)


def hammer(build_tree, rounds=150):
    """Parse `SOURCE` with `parse` while another thread builds trees with `build_tree`; both errors."""
    stop, theirs, ours = threading.Event(), [], []

    def other():
        while not stop.is_set():
            try:
                build_tree("x = [1, (2, 3), {4: 5}]\n" * 50)
            except SystemError as e:
                theirs.append(e)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        for _ in range(rounds):
            try:
                parse(SOURCE)
            except SystemError as e:
                ours.append(e)
    finally:
        stop.set()
        thread.join()
    return theirs, ours


def test_a_library_calling_ast_parse_in_another_thread_waits_for_ours(switching_gc):
    theirs, ours = hammer(ast.parse)
    assert theirs == [] and ours == []


def test_the_race_met_anyway_is_retried_and_other_system_errors_are_not(monkeypatch):
    calls, real = [], source._UNLOCKED_PARSE

    def racing(text, mode="exec", fail=2, message="AST constructor recursion depth mismatch (before=42, after=50)"):
        calls.append(text)
        if len(calls) <= fail:
            raise SystemError(message)
        return real(text, mode=mode)

    monkeypatch.setattr(source, "_UNLOCKED_PARSE", racing)
    assert isinstance(parse("x = 1"), ast.Module) and len(calls) == 3
    calls.clear()
    monkeypatch.setattr(source, "_UNLOCKED_PARSE", lambda text, mode="exec": racing(text, mode, message="other"))
    with pytest.raises(SystemError, match="other"):
        parse("x = 1")
    assert len(calls) == 1


def test_parse_still_reports_real_errors():
    with pytest.raises(SyntaxError):
        parse("def (:\n")
