"""A control group per evaluation: caps on memory and tasks that hold on CUDA too, and a way to
kill every process of the evaluation, whatever it did to its session or parent.

The engine creates the group (`EvalGroup.create`) before the worker starts and passes the
files the launcher writes its own pid into (`join`); everything the launcher forks is then in
the group. Limits: `memory` (host memory, RSS and page cache; unlike RLIMIT_AS it works with
the CUDA driver's huge virtual mappings) and `pids` (processes and threads together: a genome
cannot raise torch's thread pools without bound). `kill_all()` SIGKILLs every task left in the
group and `remove()` deletes it. Works with cgroup v2 (one hierarchy) and v1 (one hierarchy
per controller, as on this CI's machines); needs write access to the hierarchy (root, or a
delegated subtree), else `create` raises CgroupUnavailable with the reason.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ROOT = "/sys/fs/cgroup"


class CgroupUnavailable(OSError):
    """No writable cgroup hierarchy with the memory and pids controllers."""


def _own_path(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy of `controller` ("" for v2's)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return "/"




class EvalGroup:
    """One evaluation's cgroup (in each v1 hierarchy, or one v2 group)."""

    def __init__(self, dirs: list[Path], v2: bool):
        self.dirs, self.v2 = dirs, v2

    @classmethod
    def create(cls, name: str, memory_mb: int, max_tasks: int, root: str = ROOT) -> "EvalGroup":
        """A new group `name` under the hierarchy at `root` (v2: any group this process may write,
        e.g. a delegated one) with the limits set; CgroupUnavailable if that cannot be done here."""
        root_path = Path(root)
        group = cls([], (root_path / "cgroup.controllers").exists())
        try:
            if group.v2:
                base = root_path / "evoarch"
                base.mkdir(exist_ok=True)
                for parent in (root_path, base):
                    enabled = (parent / "cgroup.subtree_control").read_text().split()
                    missing = " ".join(f"+{c}" for c in ("memory", "pids") if c not in enabled)
                    if missing:
                        (parent / "cgroup.subtree_control").write_text(missing)
                group.dirs.append(base / name)
                group.dirs[0].mkdir()
                (group.dirs[0] / "memory.max").write_text(str(memory_mb * 2 ** 20))
                (group.dirs[0] / "pids.max").write_text(str(max_tasks))
                return group
            for controller in ("memory", "pids"):
                if not (root_path / controller).is_dir():
                    raise OSError(f"no cgroup v1 hierarchy for {controller} under {root}")
                group.dirs.append(root_path / controller / _own_path(controller).lstrip("/") / name)
                group.dirs[-1].mkdir()
            (group.dirs[0] / "memory.limit_in_bytes").write_text(str(memory_mb * 2 ** 20))
            (group.dirs[1] / "pids.max").write_text(str(max_tasks))
            return group
        except OSError as e:
            group.remove()
            raise CgroupUnavailable(f"cannot create a cgroup with memory and pids limits under {root}: {e}") from None

    def join_files(self) -> list[str]:
        """The files a process writes "0" into to move itself into the group."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        """Processes in the group now."""
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(found)

    def kill_all(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process in the group until none is left (or the timeout)."""
        if self.v2 and (self.dirs[0] / "cgroup.kill").exists():
            try:
                (self.dirs[0] / "cgroup.kill").write_text("1")
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def peak_memory_mb(self) -> float | None:
        """The group's peak memory use, MiB (None where the kernel does not report it)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.dirs[0] / name).read_text()) / 2 ** 20
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Kill what is left and delete the group."""
        self.kill_all()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:  # busy until the killed tasks are reaped
                    time.sleep(0.02)
                else:
                    break


def join(files: list[str]) -> None:
    """Move this process into the group (the launcher, before it forks the worker)."""
    for f in files:
        with open(f, "w") as fh:
            fh.write("0")
