"""In-process lint of the worker: a `sys.addaudithook` hook installed before the genome loads.

Like the static policy it is a fast filter with clear messages for the LLM, not a boundary
(a genome that subverts its own interpreter gets past it; the kernel layers of
fitness.containment hold regardless). Once armed it denies (raises PermissionError inside the
genome's call):

- opening files for writing, creating/removing/renaming files outside the scratch dir;
- reading or listing files outside the interpreter's install, the project and a few
  system paths torch needs (so /etc, /home, ... are unreadable);
- every socket operation; ctypes; new imports of process/network/FFI modules;
- process creation (fork, posix_spawn, subprocess, os.system) and exec;
- os.kill/killpg, setrlimit/prlimit (root could raise the hard limits), chdir, chroot,
  new audit hooks, tracing/profiling hooks, and gc/frame introspection (which could find
  the result nonce): `sys._getframe` and the audited frame/code attributes (`tb_frame`,
  `gi_frame`, `f_code`, `__code__`, ...) are denied while genome code is on the stack
  (torch's own uses from the harness still work), and replacing a function's `__code__`
  is always denied;
- sqlite3 (its C code opens files without an "open" event: the run's archive).

Audit hooks cannot be removed, and `signal.signal`, thread creation and setting
attributes on classes or modules are not audit events in Python 3.11: the policy forbids
them, and the worker checks the harness's integrity (fitness.worker).
"""
from __future__ import annotations

import contextlib
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_SYSTEM_READ_ROOTS = ("/usr", "/lib", "/lib64", "/proc/self/maps", "/proc/self/status", "/proc/self/stat",
                      "/proc/self/statm", "/proc/self/cgroup", "/proc/self/mountinfo", "/proc/cpuinfo", "/proc/meminfo",
                      "/sys/devices/system", "/sys/fs/cgroup", "/dev/null", "/dev/urandom",
                      "/etc/ld.so.cache", "/etc/localtime")
_DENIED_IMPORTS = frozenset({"socket", "_socket", "subprocess", "_posixsubprocess", "ctypes", "_ctypes",
                             "multiprocessing", "pty", "urllib.request", "http.client", "ftplib", "_cffi_backend",
                             "smtplib", "telnetlib", "asyncio", "ssl", "webbrowser", "cffi", "sqlite3",
                             "_sqlite3", "_thread", "mmap", "fcntl", "dbm", "shelve"})
_ALWAYS_DENIED = frozenset({
    "os.exec", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "os.chdir", "os.chroot", "sys.addaudithook", "sys.settrace",
    "sys.setprofile", "sys._current_frames", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "pickle.find_class", "webbrowser.open",
    "os.setuid", "os.setgid", "os.setreuid", "os.setregid", "socket.__new__",
    "sys._getframemodulename", "mmap.__new__",
    "sqlite3.connect", "sqlite3.connect/handle", "sqlite3.enable_load_extension", "sqlite3.load_extension",
    "sys.remote_exec", "cpython.remote_debugger_script",
})
# Frame and code introspection: denied while genome code is on the stack, unless the
# harness opened a trusted() section (describe_exception walks a traceback) or the caller
# is a stdlib helper that only reads a module name (typing.TypeVar, namedtuple, Enum).
# Setting a function's __defaults__ or a class's __bases__ (object.__setattr__) is treated alike;
# replacing a function's __code__ is always denied.
_INTROSPECTION = frozenset({"sys._getframe", "object.__getattr__", "object.__setattr__", "object.__delattr__"})
_PROCESS_EVENTS = frozenset({"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.system"})
_WRITE_PATH_EVENTS = {  # event -> indices of path arguments that must lie in the scratch dir
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (1,), "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
    "tempfile.mkstemp": (0,), "tempfile.mkdtemp": (0,),
}
_READ_PATH_EVENTS = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.listxattr": 0, "os.getxattr": 0}


class SandboxDenied(PermissionError):
    """An operation the evaluation sandbox does not allow."""


def _inside(path: object, roots: tuple[str, ...]) -> bool:
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def _safe_frame_callers() -> frozenset:
    """Code objects of the stdlib modules a genome may use that call sys._getframe only to
    read the caller's module name (a string, never a frame, reaches the genome) or set up
    the classes they create (TypeVar, NamedTuple, namedtuple, Enum). Identity of code
    objects, not file names: compile() could forge a file name."""
    import collections
    import enum
    import types
    import typing

    codes: set = set()

    def add(code) -> None:
        if isinstance(code, types.CodeType) and code not in codes:
            codes.add(code)
            for const in code.co_consts:
                add(const)

    def add_callable(obj) -> None:
        obj = getattr(obj, "__func__", obj)
        add(getattr(obj, "__code__", None))

    for mod in (typing, collections, enum):
        for value in list(vars(mod).values()):
            if isinstance(value, type) and getattr(value, "__module__", None) == mod.__name__:
                for member in list(vars(value).values()):
                    add_callable(member)
            else:
                add_callable(value)
    return frozenset(codes)


class Guard:
    """Handle on an armed guard: `trusted()` lets harness code walk frames (tracebacks)."""

    def __init__(self) -> None:
        self._trusted = [0]

    @contextlib.contextmanager
    def trusted(self):
        self._trusted[0] += 1
        try:
            yield
        finally:
            self._trusted[0] -= 1


def install(scratch_dir: str, extra_read_roots: tuple[str, ...] = (),
            genome_files: frozenset[str] = frozenset({"<genome>"})) -> Guard:
    """Arm the audit hook for the rest of this process's life (irreversible).

    Readable: the interpreter and its site-packages, the harness packages (not the rest of
    the project: runs/, archives, configs), a few system paths, the scratch dir."""
    scratch = (os.path.realpath(scratch_dir),)
    project = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    packages = tuple(os.path.join(project, p) for p in ("fitness", "evo"))
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    read_roots = tuple(sorted(prefixes)) + packages + _SYSTEM_READ_ROOTS + scratch + tuple(extra_read_roots)
    read_roots += tuple(os.path.realpath(p) for p in sys.path
                        if p and os.path.isdir(p) and os.path.realpath(p) != project)
    handle = Guard()
    trusted = handle._trusted
    busy = [0]  # the hook's own frame walk raises the same events
    safe_callers = _safe_frame_callers()

    def genome_on_stack() -> bool:
        busy[0] += 1
        try:
            frame = sys._getframe(2)  # the frame that raised the event (0: here, 1: the hook)
            if frame.f_code in safe_callers:
                return False
            while frame is not None:
                if frame.f_code.co_filename in genome_files:
                    return True
                frame = frame.f_back
            return False
        finally:
            busy[0] -= 1

    def deny(event: str, detail: str = "") -> None:
        raise SandboxDenied(f"sandbox denied {event}{': ' + detail if detail else ''}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if isinstance(path, int):
                if writing:
                    deny(event, f"writing to file descriptor {path}")
                return
            if writing and not _inside(path, scratch):
                deny(event, f"writing {path!r} outside the scratch dir")
            if not writing and not _inside(path, read_roots):
                deny(event, f"reading {path!r}")
        elif event in _ALWAYS_DENIED or event.startswith(("socket.", "ctypes.", "_ctypes.", "sqlite3.")):
            deny(event)
        elif event in _INTROSPECTION:
            what = f" ({args[1]!r})" if event.startswith("object.") and len(args) > 1 else ""
            if event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
                deny(event + what, "replacing a function's code")
            if not trusted[0] and not busy[0] and genome_on_stack():
                deny(event + what, "frame/code introspection" if event in ("sys._getframe", "object.__getattr__")
                     else "changing a function's or class's internals")
        elif event in _PROCESS_EVENTS:
            deny(event, "process creation")
        elif event in _WRITE_PATH_EVENTS:
            for i in _WRITE_PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not _inside(args[i], scratch):
                    deny(event, f"{args[i]!r} is outside the scratch dir")
        elif event in _READ_PATH_EVENTS:
            arg = args[_READ_PATH_EVENTS[event]] if args else "."
            if isinstance(arg, (str, bytes, os.PathLike)) and not _inside(arg, read_roots):
                deny(event, f"listing {arg!r}")
        elif event == "import":
            if args and args[0] in _DENIED_IMPORTS:
                deny(event, f"module {args[0]!r}")

    sys.addaudithook(hook)
    return handle
