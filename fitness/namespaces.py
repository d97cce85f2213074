"""Linux namespaces, private mounts and the unprivileged user of a sandboxed worker.

The launcher (a trusted process that never runs genome code) calls `unshare_all()` and then
forks the worker, which becomes process 1 of a fresh PID namespace: when it dies, the kernel
kills every process left in that namespace (a `setsid` child included), and the worker sees
no process outside it. The namespaces also give it a network with only a loopback interface
that is down, its own IPC objects and hostname, and its own mount table. As an unprivileged
user (euid != 0) a user namespace is created first, mapping the user to root inside it.

The worker then calls `private_mounts(...)` (a /proc of its own PID namespace, a size- and
inode-limited tmpfs, mounted noexec, as its scratch dir, and the interpreter made readable to
the unprivileged user where one of its parent folders is not, e.g. a Python under /root), and
`drop_privileges()` (real root: setgroups([]) and uid/gid 65534 `nobody`; in a user namespace:
every capability dropped). Kernel APIs through ctypes: no binary to install, nothing to exec.
"""
from __future__ import annotations

import ctypes
import os
import stat

NOBODY = 65534
_NEWNS, _NEWUTS, _NEWIPC, _NEWUSER, _NEWPID, _NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_CAPBSET_DROP = 24
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def unshare_all() -> str:
    """New mount, PID, network, IPC and UTS namespaces (and a user namespace when not root) for
    the children this process forks next. Call in a single-threaded process."""
    uid, gid = os.geteuid(), os.getegid()
    as_user = uid != 0
    flags = _NEWNS | _NEWPID | _NEWNET | _NEWIPC | _NEWUTS | (_NEWUSER if as_user else 0)
    _check(_libc().unshare(flags), "unshare")
    if as_user:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    return "pid, net, ipc, uts, mount" + (" (in a user namespace)" if as_user else "")


def _blocked_ancestor(path: str) -> str | None:
    """The topmost folder above `path` that `nobody` cannot traverse (no o+x), if any."""
    parts = os.path.realpath(path).split("/")[1:]
    for i in range(1, len(parts)):
        folder = "/" + "/".join(parts[:i])
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


def private_mounts(scratch: str, scratch_mb: int, scratch_inodes: int, readable: list[str]) -> str:
    """In the worker (process 1 of its namespaces): mounts no one else sees. Raises OSError."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    hidden: dict[str, list[str]] = {}
    for path in readable:
        if os.path.exists(path):
            top = _blocked_ancestor(path)
            if top is not None:
                hidden.setdefault(top, []).append(os.path.realpath(path))
    for top, paths in hidden.items():  # a tmpfs over e.g. /root, with only the interpreter bound back
        fds = [os.open(p, os.O_PATH | os.O_CLOEXEC) for p in paths]
        try:
            _mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=64k")
            for p, fd in zip(paths, fds):
                os.makedirs(p, mode=0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", p, None, _MS_BIND | _MS_REC)
                _mount(None, p, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
        finally:
            for fd in fds:
                os.close(fd)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount("tmpfs", scratch, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
           f"size={scratch_mb}m,nr_inodes={scratch_inodes},mode=0777")
    shown = f"; {', '.join(hidden)} hidden but the interpreter" if hidden else ""
    return f"own /proc, scratch tmpfs {scratch_mb} MiB / {scratch_inodes} inodes, noexec{shown}"


def drop_privileges() -> str:
    """Become `nobody` (real root), or drop every capability (inside a user namespace)."""
    if os.getuid() == 0 and not _in_user_namespace():
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        return f"uid/gid {NOBODY} (nobody), no supplementary groups, no capabilities"
    libc = _libc()
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is None:
        raise OSError(f"capset: unknown syscall number on {os.uname().machine}")
    _check(libc.syscall(number, header, data), "capset")
    return f"uid {os.getuid()} of a user namespace, no capabilities"


def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def capabilities() -> int:
    """The effective capability set of this process (0: none)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return -1
