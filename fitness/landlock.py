"""Landlock (Linux >= 5.13): the kernel decides which files the sandboxed worker may read or write.

`restrict(read_roots, write_roots, device_roots)` handles every file access Landlock knows
(read, list, write, create, remove, rename, truncate, execute) and grants only: reading (and
listing) under `read_roots`, everything under `write_roots` (the scratch dir), reading and
writing the device files under `device_roots` (/dev/null, /dev/urandom, GPUs). Nothing may be
executed (execve), and, where the kernel supports it, no TCP port bound or connected (ABI 4)
and no signal sent or abstract Unix socket reached outside the sandbox (ABI 6). Applies to C
code as much as Python (`torch.from_file`, dlopen, sqlite3), and is irreversible. The registry's
`landlock` package is a pre-release (1.0.0.dev5); the three syscalls are called through ctypes.
"""
from __future__ import annotations

import ctypes
import os

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_PR_SET_NO_NEW_PRIVS = 38
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_MAKE_AND_REMOVE = sum(1 << i for i in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_TCP = (1 << 0) | (1 << 1)  # ABI 4: bind / connect
_SCOPE_ALL = (1 << 0) | (1 << 1)  # ABI 6: abstract Unix sockets, signals


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 if Landlock is unavailable."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


def restrict(read_roots: list[str], write_roots: list[str], device_roots: list[str]) -> str:
    """Apply the ruleset to this process (and its future children). Returns what was applied;
    raises OSError naming the step that failed. Paths that do not exist are skipped."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = abi_version()
    if abi < 1:
        raise OSError(f"Landlock is not available in this kernel ({os.uname().release})")
    write = _WRITE_FILE | _MAKE_AND_REMOVE | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    read = _READ_FILE | _READ_DIR
    handled = write | read | _EXECUTE
    net = _NET_TCP if abi >= 4 else 0
    scoped = _SCOPE_ALL if abi >= 6 else 0
    attr = _RulesetAttr(handled, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    rfd = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rfd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    file_rights = _READ_FILE | _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0)
    rules = [(p, read) for p in read_roots] + [(p, read | write) for p in write_roots]
    rules += [(p, read | write if os.path.isdir(p) else file_rights) for p in device_roots]
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not os.path.isdir(path):
                    rights &= _READ_FILE | _WRITE_FILE | _TRUNCATE | _EXECUTE
                rule = _PathBeneath(rights, fd)
                if libc.syscall(_SYS_ADD_RULE, rfd, 1, ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYS_RESTRICT_SELF, rfd, ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(rfd)
    parts = ["reads only the interpreter, libraries and harness", "writes only in scratch", "no exec"]
    parts += (["no TCP"] if net else []) + (["signals and abstract sockets scoped"] if scoped else [])
    return f"ABI {abi}: " + ", ".join(parts)
