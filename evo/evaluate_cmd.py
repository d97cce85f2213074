"""`evo evaluate GENOME.py`: evaluate one genome file exactly as the search would.

Self-test of the sandbox (which containment layers hold here), then static policy, sandboxed
worker, structural checks, training, engine-side scoring and complexity probe with the config's
stage settings and training seeds (the first at stage 1, all at stage 2, like the search; or
the one given with --seed). The test set comes from your secret (~/.cache/evoarch/secret.key),
so scores compare between your evaluations. Prints the layers, status, reason, score,
parameters and timings, or one JSON object with --json. Exit code 0 when every evaluation is
ok, 1 when any is rejected or failed, 2 for a bad config, an unreadable file or a sandbox that
lacks a required layer.

The lead wires it into evo/cli.py with `add_parser(subparsers)`; it also runs alone as
`python -m evo.evaluate_cmd GENOME.py ...`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.toml"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("evaluate", help="evaluate one genome file exactly as the search would",
                              description=__doc__.split("\n\n")[1])
    _add_arguments(p)
    p.set_defaults(func=main_evaluate)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("genome", help="a Python file defining `class Mixer(nn.Module)`")
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="TOML config whose [fitness] section is used (default: configs/quickstart.toml)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1, help="fidelity: 1 exploration, 2 verification")
    p.add_argument("--seed", type=int, default=None,
                   help="one training seed (default, like the search: the stage's first seed at stage 1, "
                   "every seed of the stage at stage 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. fitness.stage1.steps=20")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _timings(ev) -> dict:
    m = ev.metrics
    out = {"wall_s": round(ev.wall_s, 2)}
    for key in ("train_wall_s", "cpu_s"):
        if isinstance(m.get(key), (int, float)):
            out[key] = round(m[key], 2)
    return out


def _summary(path: str, gid: str, stage: int, evals: list, containment: dict) -> dict:
    ok = all(e.ok for e in evals)
    first_bad = next((e for e in evals if not e.ok), None)
    scores = [e.score for e in evals if e.ok and e.score is not None]
    return {
        "genome": path, "genome_id": gid, "stage": stage,
        "status": "ok" if ok else first_bad.status,
        "reason": "" if ok else first_bad.reason,
        "score": statistics.fmean(scores) if ok and scores else None,
        "score_std": statistics.pstdev(scores) if ok and len(scores) > 1 else None,
        "params": next((e.params for e in evals if e.params is not None), None),
        "wall_s": round(sum(e.wall_s for e in evals), 2),
        "containment": containment,
        "evaluations": [{
            "seed": e.seed, "status": e.status, "score": e.score, "reason": e.reason, "params": e.params,
            "timings": _timings(e),
            "metrics": {k: v for k, v in e.metrics.items() if k != "log_tail"},
        } for e in evals],
    }


def _print_text(s: dict, evals: list) -> None:
    from fitness.selftest import describe

    print("containment (sandbox self-test):\n" + describe(s["containment"]))
    print(f"genome {s['genome']} (id {s['genome_id']}), stage {s['stage']}")
    for e in evals:
        t = _timings(e)
        parts = [f"  seed {e.seed}: {e.status}"]
        if e.ok:
            parts.append(f"score {e.score:.4f}")
        if e.params is not None:
            parts.append(f"params {e.params:,}")
        parts.append("time " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items()))
        print("  ".join(parts))
        if not e.ok:
            print(f"    reason: {e.reason}")
        c = e.metrics.get("complexity")
        if isinstance(c, dict):
            print(f"    complexity: T**{c.get('scaling_exponent')} (memory {c.get('memory_exponent')}, "
                  f"time {c.get('time_exponent')}); forward ms {c.get('forward_ms')}, activation MiB {c.get('activation_mib')}")
    if s["status"] == "ok":
        spread = f" +- {s['score_std']:.4f}" if s["score_std"] is not None else ""
        print(f"status ok: score {s['score']:.4f}{spread}, params {s['params']:,}, wall {s['wall_s']:.1f} s")
    else:
        print(f"status {s['status']}: {s['reason']}")


def main_evaluate(args: argparse.Namespace) -> int:
    """Evaluate args.genome; print the result; 0 if ok, 1 if rejected/failed, 2 on bad input."""
    from evo.config import ConfigError, load_config
    from fitness import SandboxUnavailable, evaluate, self_test
    from fitness.device import resolve_device
    from fitness.secret import default_secret
    from fitness.selftest import require_held

    try:
        code = Path(args.genome).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"error: cannot read {args.genome}: {e}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fs = config.fitness
    stage = fs.stage(args.stage)
    # as the search: stage 1 trains with the stage's first seed, stage 2 with every seed
    seeds = [args.seed] if args.seed is not None else list(stage.seeds[:1] if args.stage == 1 else stage.seeds)
    gid = hashlib.sha256(code.encode()).hexdigest()[:12]
    try:
        device = resolve_device(fs.device)
        containment = self_test(fs, device)
        require_held(containment, fs.sandbox.allow_missing)
        evals = [evaluate(gid, code, args.stage, stage, seed, fs, default_secret(), device=device) for seed in seeds]
    except SandboxUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = _summary(args.genome, gid, args.stage, evals, containment)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_text(summary, evals)
    return 0 if summary["status"] == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evo evaluate", description=__doc__.split("\n\n")[1])
    _add_arguments(parser)
    return main_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
