"""seccomp: the kernel refuses the system calls a sandboxed worker has no business making.

`restrict()` loads a filter (libseccomp through `pyseccomp`, which also resolves the syscall
numbers per architecture and kills calls made through a foreign ABI such as x32) that fails
with EPERM: creating processes (fork, vfork, clone without CLONE_THREAD; clone3 reports ENOSYS
so the C library falls back to clone, whose flags the filter can read), running programs
(execve, execveat), any socket (so no UDP, TCP or Unix socket even where the network
namespace is missing), tracing or reading other processes, leaving the process group or
session, clearing the parent-death signal, and the kernel facilities a sandbox never needs
(mount, namespaces, BPF, perf, userfaultfd, io_uring, keyrings, modules, memfd). Threads stay
allowed: torch needs its pools (their number is capped by the cgroup's pids limit).
Irreversible; applies to C code as much as Python.
"""
from __future__ import annotations

import errno

DENIED = (
    "fork", "vfork", "execve", "execveat", "socket", "socketpair", "ptrace", "process_vm_readv",
    "process_vm_writev", "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "kcmp", "setsid", "setpgid",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsmount", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "memfd_create", "memfd_secret", "open_by_handle_at",
    "name_to_handle_at", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm", "personality",
    "fanotify_init", "sethostname", "setdomainname", "settimeofday", "clock_settime", "adjtimex",
)
_CLONE_THREAD = 0x00010000
_PR_SET_PDEATHSIG = 1


def restrict() -> str:
    """Load the filter into this process (its threads created later inherit it). Returns what was
    applied; raises OSError (or ImportError when libseccomp is missing) if it cannot be."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    known = []
    for name in DENIED:
        try:
            f.add_rule(deny, name)
            known.append(name)
        except OSError:  # not a syscall on this architecture (e.g. fork on aarch64)
            pass
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(deny, "prctl", sc.Arg(0, sc.EQ, _PR_SET_PDEATHSIG))
    f.load()  # sets no_new_privs itself
    return f"{len(known) + 2} syscalls denied: no processes, exec, sockets, tracing, namespaces or mounts"
