"""The `evo` command line: run, resume, validate, evaluate, top, show."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evo.config import ConfigError, load_config


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    s = config.search
    limits = ", ".join(f"{k} {v}" for k, v in s.budget.model_dump(exclude_none=True).items())
    print(f"{args.config}: ok (strategy {s.strategy}, {s.mode}, {s.children} children per step, {limits}; "
          f"operator {config.operators.kind}" + (f", model {config.llm.model})" if config.operators.kind != "classic" else ")"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from evo.run import start_run

    config = load_config(args.config, args.set)
    name = args.name or Path(args.config).stem
    run_dir = start_run(config, name, overwrite=args.overwrite)
    print(f"run finished: {run_dir}\nsee: evo top {run_dir}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from evo.run import resume_run

    run_dir = resume_run(Path(args.run_dir))
    print(f"run finished: {run_dir}\nsee: evo top {run_dir}")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from evo.summary import print_top

    if args.pareto:
        from evo.summary import print_pareto

        print_pareto(Path(args.run_dir))
    else:
        print_top(Path(args.run_dir), args.n)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from evo.summary import print_genome

    print_genome(Path(args.run_dir), args.genome_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evo", description="LLM-driven evolutionary search for sequence mixers")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start a search from a TOML config")
    p.add_argument("config")
    p.add_argument("--name", help="run name (default: config file stem); the run lives in <runs_dir>/<name>")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("validate", help="check a config and exit non-zero naming every bad key")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    from evo.evaluate_cmd import add_parser as add_evaluate_parser

    add_evaluate_parser(sub)

    p = sub.add_parser("top", help="leaderboard of a run")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--pareto", action="store_true", help="the Pareto front of the last checkpoint instead")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("show", help="one genome: code, lineage, evaluations")
    p.add_argument("run_dir")
    p.add_argument("genome_id")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fitness.containment import SandboxUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, SandboxUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with: evo resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
