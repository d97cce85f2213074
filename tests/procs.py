"""Reading the process table (/proc) in tests: who is alive, whose child, what command."""
import os


def cmdline(pid) -> bytes:
    """The process's command line (NUL-separated)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def state_and_parent(pid) -> tuple[str, int]:
    """(state letter, parent pid) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie."""
    try:
        return state_and_parent(pid)[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """Live (non-zombie) children of `pid`."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, ppid = state_and_parent(entry)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and state != "Z":
            out.append(int(entry))
    return out
