"""Does the sandbox hold on this machine? The self-test executors run before the first genome.

`self_test` starts one sandboxed worker exactly as an evaluation would (same launch path, same
limits), lets it report the layers it applied, then has it try, from inside and with no genome
loaded, what each layer must forbid (fitness.containment.probe: read and write a file outside
its roots, open UDP and Unix sockets, fork, fill its scratch dir, count the processes it can
see, ...). A layer counts only if it was applied and its probe was stopped. `require_held`
raises SandboxUnavailable naming every layer that does not hold and is not allowed missing.
"""
from __future__ import annotations

from fitness.containment import LAYERS, SandboxUnavailable, require
from fitness.forkserver import ForkServer
from fitness.sandbox import Channel, Closed, Deadline
from fitness.settings import FitnessSettings


def self_test(settings: FitnessSettings, device: str, env: dict[str, str] | None = None,
              server: ForkServer | None = None, timeout_s: float = 120.0) -> dict:
    """{layer: {"active": applied, "held": its probe was stopped, "detail": what it is, "seen": the probe}}."""
    from fitness.tasks import data_env

    job = {"probe": True, "device": device, "threads": settings.threads_per_worker,
           "gpu_memory_mb": settings.sandbox.gpu_memory_mb}
    channel = Channel(settings.sandbox, timeout_s, workers=1, trainer=False, threads=settings.threads_per_worker,
                      device=device, env={**data_env(), **(env or {})}, server=server)
    try:
        channel.send(job)
        armed, _ = channel.receive()
        channel.send({"op": "probe", "canary": channel.canary})
        probed, _ = channel.receive()
        channel.send({"op": "bye"})
    except (Closed, Deadline) as e:
        ended = channel.close()
        raise SandboxUnavailable(f"the sandbox self-test did not finish ({type(e).__name__}); worker log: "
                                 f"{ended.log_tail[-800:]}") from None
    finally:
        channel.close(2.0)
    layers, results = armed.get("layers", {}), probed.get("results", {})
    report = {}
    for name in LAYERS:
        layer, result = layers.get(name, {}), results.get(name, [False, "not probed"])
        report[name] = {"active": bool(layer.get("active")), "held": bool(layer.get("active")) and bool(result[0]),
                        "detail": layer.get("detail", "not reported"), "seen": result[1]}
    return report


def require_held(report: dict, allowed_missing: list[str]) -> None:
    """SandboxUnavailable unless every layer held or is allowed missing."""
    require({name: {"active": r["held"], "detail": f"{r['detail']}; self-test: {r['seen']}"}
             for name, r in report.items()}, allowed_missing)


def describe(report: dict) -> str:
    """One line per layer for people: held or not, what it does, what the probe saw."""
    return "\n".join(f"  {name:<11} {'held' if r['held'] else 'MISSING'}  {r['detail']}  [{r['seen']}]"
                     for name, r in report.items())
