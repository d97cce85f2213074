"""Runtime guard of the worker: a `sys.addaudithook` hook installed before the genome loads.

The second layer of defence, behind the static policy. Once armed it denies (raises
PermissionError inside the genome's call):

- opening files for writing, creating/removing/renaming files outside the scratch dir;
- reading or listing files outside the interpreter's install, the project and a few
  system paths torch needs (so /etc, /home, ... are unreadable);
- every socket operation; ctypes; new imports of process/network/FFI modules;
- process creation (fork, posix_spawn, subprocess, os.system) beyond `max_procs`, and
  exec, which would replace the worker;
- os.kill/killpg, setrlimit/prlimit (root could raise the hard limits), chdir, chroot,
  new audit hooks, tracing/profiling hooks, and gc/frame introspection (which could find
  the result nonce).

Audit hooks cannot be removed, and `signal.signal` is not an audit event: the policy
forbids `signal`, and the parent only ever kills with SIGKILL, which cannot be caught.
"""
from __future__ import annotations

import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_SYSTEM_READ_ROOTS = ("/usr", "/lib", "/lib64", "/proc/self", "/proc/cpuinfo", "/proc/meminfo",
                      "/sys/devices/system", "/sys/fs/cgroup", "/dev/null", "/dev/urandom",
                      "/etc/ld.so.cache", "/etc/localtime")
_DENIED_IMPORTS = frozenset({"socket", "_socket", "subprocess", "_posixsubprocess", "ctypes", "_ctypes",
                             "multiprocessing", "pty", "urllib.request", "http.client", "ftplib",
                             "smtplib", "telnetlib", "asyncio", "ssl", "webbrowser", "cffi"})
_ALWAYS_DENIED = frozenset({
    "os.exec", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "os.chdir", "os.chroot", "sys.addaudithook", "sys.settrace",
    "sys.setprofile", "sys._current_frames", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "pickle.find_class", "webbrowser.open",
    "os.setuid", "os.setgid", "os.setreuid", "os.setregid", "socket.__new__",
})
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


def install(scratch_dir: str, max_procs: int = 0, extra_read_roots: tuple[str, ...] = ()) -> None:
    """Arm the audit hook for the rest of this process's life (irreversible)."""
    scratch = (os.path.realpath(scratch_dir),)
    project = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    read_roots = tuple(sorted(prefixes)) + (project,) + _SYSTEM_READ_ROOTS + scratch + tuple(extra_read_roots)
    read_roots += tuple(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
    procs = [0]

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
        elif event in _ALWAYS_DENIED or event.startswith(("socket.", "ctypes.", "_ctypes.")):
            deny(event)
        elif event in _PROCESS_EVENTS:
            procs[0] += 1
            if procs[0] > max_procs:
                deny(event, f"process creation (max_procs={max_procs})")
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
