"""The operating-system layers around a sandboxed worker: which exist, how each is applied, and
the self-test that checks them from inside before the engine trusts the sandbox.

Layers, in the order they are applied (a name is what `[fitness.sandbox] allow_missing` takes):

- `rlimits`    CPU seconds, file size, open files, no core dumps; address space on CPU.
- `cgroup`     memory (works with CUDA) and tasks (processes + threads) caps; kill-all at the end.
- `namespaces` fresh PID, network, IPC, UTS and mount namespaces; the worker is their process 1.
- `filesystem` its own /proc, a size- and inode-limited noexec tmpfs as scratch dir.
- `user`       not root: `nobody`, or no capabilities in a user namespace.
- `landlock`   reads only the interpreter, libraries and harness; writes only in scratch; no exec.
- `seccomp`    no process creation, exec, sockets, tracing, namespaces or mounts.

`enter(spec)` runs in the launcher (rlimits, cgroup, namespaces), `isolate(...)` in the worker
(filesystem, user, landlock, seccomp); each returns {layer: {"active", "detail"}} and never
raises: a layer that cannot be applied is reported inactive with the reason. The worker sends
that report before any genome code exists in its process, and waits; the engine stops (raises
SandboxUnavailable naming the layers) unless every inactive layer is in `allow_missing`.
`self_test` (run by executors at start) goes further: the worker tries what each layer must
forbid — see `probe` — and the engine compares.
"""
from __future__ import annotations

import errno
import os
import resource
import sys

LAYERS = ("rlimits", "cgroup", "namespaces", "filesystem", "user", "landlock", "seccomp")
OPEN_FILES = 1024
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/localtime", "/sys/devices/system/cpu")
_CUDA_READ = ("/proc/driver/nvidia", "/sys/devices", "/sys/bus/pci", "/sys/module/nvidia")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")


class SandboxUnavailable(RuntimeError):
    """A containment layer the config requires could not be applied; the message names it and the
    key that allows running without it."""


def _layer(active: bool, detail: str) -> dict:
    return {"active": active, "detail": detail[:300]}


def enter(spec: dict) -> dict:
    """In the launcher, before it forks the worker: rlimits, cgroup, namespaces."""
    layers = {}
    mb = 2 ** 20
    try:
        limits = [(resource.RLIMIT_CPU, spec["cpu_s"], spec["cpu_s"] + 5),
                  (resource.RLIMIT_FSIZE, spec["file_size_mb"] * mb, spec["file_size_mb"] * mb),
                  (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NOFILE, OPEN_FILES, OPEN_FILES)]
        if spec.get("address_space_mb"):
            limits.append((resource.RLIMIT_AS, spec["address_space_mb"] * mb, spec["address_space_mb"] * mb))
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
        what = f"CPU {spec['cpu_s']} s, files {spec['file_size_mb']} MiB, {OPEN_FILES} open files, no core dumps"
        layers["rlimits"] = _layer(True, what + (f", address space {spec['address_space_mb']} MiB"
                                                 if spec.get("address_space_mb") else ""))
    except (OSError, ValueError) as e:
        layers["rlimits"] = _layer(False, f"setrlimit: {e}")
    cgroup = spec.get("cgroup")
    if isinstance(cgroup, dict):
        try:
            from fitness.cgroup import join

            join(cgroup["join"])
            layers["cgroup"] = _layer(True, cgroup["detail"])
        except OSError as e:
            layers["cgroup"] = _layer(False, f"joining the evaluation's cgroup: {e}")
    else:
        layers["cgroup"] = _layer(False, str(cgroup or "not created"))
    try:
        from fitness.namespaces import unshare_all

        layers["namespaces"] = _layer(True, unshare_all())
    except OSError as e:
        layers["namespaces"] = _layer(False, str(e))
    return layers


def read_roots(device: str) -> list[str]:
    """What the worker may read: the interpreter and its libraries, the harness, system libraries."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    paths.discard(os.path.realpath(PROJECT_ROOT))  # the project holds runs, archives and configs
    paths.discard(os.path.realpath(os.getcwd()))
    harness = [os.path.join(PROJECT_ROOT, p) for p in ("fitness", "evo")]
    extra = _CUDA_READ if device.startswith("cuda") else ()
    return sorted(prefixes | paths) + harness + list(_SYSTEM_READ) + list(extra)


def _devices(device: str) -> list[str]:
    found = list(_DEVICES)
    if device.startswith("cuda"):
        found += sorted(os.path.join("/dev", n) for n in os.listdir("/dev") if n.startswith("nvidia"))
    return found


def isolate(spec: dict, device: str, layers: dict) -> None:
    """In the worker (process 1 of its namespaces), after its data is loaded and CUDA initialised:
    filesystem, user, landlock, seccomp; adds each to `layers`."""
    roots = read_roots(device)
    if layers.get("namespaces", {}).get("active"):
        try:
            from fitness.namespaces import private_mounts

            layers["filesystem"] = _layer(True, private_mounts(spec["scratch"], spec["scratch_mb"],
                                                               spec["scratch_inodes"], roots))
        except OSError as e:
            layers["filesystem"] = _layer(False, str(e))
    else:
        layers["filesystem"] = _layer(False, "needs the namespaces layer")
    os.chdir(spec["scratch"])  # the tmpfs, now mounted over it
    try:
        from fitness.namespaces import drop_privileges

        layers["user"] = _layer(True, drop_privileges())
    except OSError as e:
        layers["user"] = _layer(False, str(e))
    from fitness.forkserver import set_parent_death_signal

    set_parent_death_signal()  # a change of user clears it; seccomp keeps it from being cleared again
    proc = ["/proc"] if layers["filesystem"]["active"] else [f"/proc/{os.getpid()}"]
    try:
        from fitness.landlock import restrict

        layers["landlock"] = _layer(True, restrict(roots + proc, [spec["scratch"]], _devices(device)))
    except OSError as e:
        layers["landlock"] = _layer(False, str(e))
    try:
        from fitness.seccomp import restrict as restrict_syscalls

        layers["seccomp"] = _layer(True, restrict_syscalls())
    except Exception as e:  # noqa: BLE001 - pyseccomp raises RuntimeError when libseccomp is missing
        layers["seccomp"] = _layer(False, f"{type(e).__name__}: {e}")


def require(layers: dict, allowed_missing: list[str]) -> None:
    """Raise SandboxUnavailable for each layer that is inactive (or unreported) and not allowed missing."""
    missing = [name for name in LAYERS if not layers.get(name, {}).get("active") and name not in allowed_missing]
    if missing:
        details = "; ".join(f"{n}: {layers.get(n, {}).get('detail', 'not reported')}" for n in missing)
        raise SandboxUnavailable(
            f"the sandbox lacks containment layer(s) {', '.join(missing)} ({details}). Fix the machine, or run "
            f"without them explicitly: [fitness.sandbox] allow_missing = {sorted(set(allowed_missing) | set(missing))}")


def describe(layers: dict) -> str:
    """One line per layer: active or missing, and what it does."""
    return "\n".join(f"  {name:<11} {'on ' if layers.get(name, {}).get('active') else 'OFF'}  "
                     f"{layers.get(name, {}).get('detail', 'not reported')}" for name in LAYERS)


# ------------------------------------------------------------------------------------ self-test


def probe(spec: dict, canary: str) -> dict:
    """Inside the armed worker (trusted code, no genome): try what each layer must forbid.
    Returns {layer: (held, what was seen)}; `canary` is a file outside every allowed root."""
    out: dict[str, tuple[bool, str]] = {}

    def attempt(fn) -> str:
        try:
            fn()
            return "allowed"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    soft, _ = resource.getrlimit(resource.RLIMIT_CPU)
    out["rlimits"] = (soft == spec["cpu_s"], f"RLIMIT_CPU {soft}")
    try:
        with open("/proc/self/cgroup") as f:
            groups = f.read()
    except OSError as e:
        groups = str(e)
    name = spec.get("cgroup", {}).get("name", "?") if isinstance(spec.get("cgroup"), dict) else "?"
    out["cgroup"] = (name in groups, "in the evaluation's cgroup" if name in groups else "not in it")
    pid_ok = os.getpid() == 1
    try:
        with open("/proc/self/net/dev") as f:
            interfaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    except OSError:
        interfaces = ["?"]
    out["namespaces"] = (pid_ok and interfaces == ["lo"], f"pid {os.getpid()}, interfaces {interfaces}")

    def fill() -> None:  # files just under the file-size limit until the scratch quota stops them
        per_file = max(1, spec["file_size_mb"] - 1)
        for i in range(spec["scratch_mb"] // per_file + 2):
            with open(os.path.join(spec["scratch"], f"fill{i}"), "wb") as f:
                for _ in range(per_file):
                    f.write(b"\0" * 2 ** 20)

    full = attempt(fill)
    for name in os.listdir(spec["scratch"]):
        os.remove(os.path.join(spec["scratch"], name))
    visible = len([p for p in os.listdir("/proc") if p.isdigit()]) if os.path.isdir("/proc") else -1
    out["filesystem"] = (full == "ENOSPC" and visible == 1,
                         f"filling scratch: {full}; processes visible in /proc: {visible}")
    from fitness.namespaces import capabilities

    caps = capabilities()
    out["user"] = (caps == 0 and (os.geteuid() != 0 or _mapped()), f"euid {os.geteuid()}, capabilities {caps:#x}")
    read = attempt(lambda: open(canary, "rb").close())
    write = attempt(lambda: open(canary + ".w", "wb").close())
    out["landlock"] = (read == "EACCES" and write == "EACCES", f"read outside: {read}, write outside: {write}")
    import socket

    udp = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
    unix = attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())

    def fork() -> None:
        if os.fork() == 0:
            os._exit(0)

    forked = attempt(fork)
    out["seccomp"] = (udp == unix == forked == "EPERM", f"udp socket: {udp}, unix socket: {unix}, fork: {forked}")
    return out


def _mapped() -> bool:
    from fitness.namespaces import _in_user_namespace

    return _in_user_namespace()
