"""The `evo` command line: run, resume, validate, evaluate, top, show, bench, report, check-report."""
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


def cmd_bench(args: argparse.Namespace) -> int:
    from evo.bench.config import load_bench
    from evo.bench.runner import run_bench

    bench = load_bench(args.config, args.out)
    out = run_bench(bench, resume=args.resume, allow_changed=args.allow_changed)
    print(f"bench finished: {bench.folder}\nreport: {out / 'index.html'} (and report.md, events.jsonl, ioh/)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if (path / "matrix.json").exists():
        from evo.bench.report import write_bench_report

        page = write_bench_report(path) / "index.html"
    else:
        from evo.run_report import write_run_report

        page = write_run_report(path)
    print(f"report: {page}")
    return check(page, None) if args.check else 0


def cmd_check_report(args: argparse.Namespace) -> int:
    return check(Path(args.page), Path(args.screenshot) if args.screenshot else None)


def check(page: Path, screenshot: Path | None) -> int:
    """Open `page` in headless Chromium; 0 when it shows no console error and every plot draws."""
    from evo.browser_check import check_page

    try:
        result = check_page(page, screenshot or page.with_suffix(".png"))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{page}: {result.plots} plots drawn; console errors: {result.console_errors or 'none'}; "
          f"broken or missing plots: {result.broken or 'none'}; screenshot: {result.screenshot}")
    return 0 if result.ok else 1


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

    p = sub.add_parser("bench", help="compare strategies on paired seeds at an equal budget (see README)")
    p.add_argument("config")
    p.add_argument("--out", help="the bench folder (default: bench.out, else runs/bench/<file stem>)")
    p.add_argument("--resume", action="store_true", help="finish a bench started before (kill -9 safe)")
    p.add_argument("--allow-changed", action="store_true", help="with --resume: accept a changed matrix and "
                   "restart the runs whose config changed")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="HTML report of a run folder or a bench folder")
    p.add_argument("path")
    p.add_argument("--check", action="store_true", help="then open it in headless Chromium (evo check-report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("check-report", help="open an HTML report in headless Chromium; fail on console errors "
                       "or missing plots")
    p.add_argument("page")
    p.add_argument("--screenshot", help="where to save the screenshot (default: beside the page)")
    p.set_defaults(func=cmd_check_report)
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
