"""`patchtune run`, `resume`, `status` and `report`: a study (or a reproduction's report) from start to finish."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from study.cli.flags import Flags, say
from study.options import RunOptions
from study.settings import RayOptions
from study.spec import RUN_OVERRIDES, StudySpec, preset_names


def add(sub: Any) -> None:
    p = sub.add_parser("run", help="run a hyperparameter study (Ray Tune + Optuna) from a preset or spec file")
    p.add_argument("spec", metavar="PRESET_OR_FILE", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    run_flags = Flags(p, "run")
    for keyword, path in RUN_OVERRIDES.items():
        run_flags.add(StudySpec, path, "--" + keyword.replace("_", "-"),
                      default="the spec's" + (" (needs MLflow's client: pip install 'patchtune[mlflow]')"
                                              if keyword == "mlflow" else ""))
    ray_flags(run_flags, dashboard_host=True)
    run_flags.add(RunOptions, "dry_run")
    p.set_defaults(run=lambda args: run(run_flags, args))

    p = sub.add_parser("resume", help="continue an interrupted study")
    p.add_argument("study_dir", metavar="DIR")
    resume_flags = Flags(p, "resume")
    ray_flags(resume_flags)
    p.set_defaults(run=lambda args: resume(resume_flags, args))

    p = sub.add_parser("status", help="summarise a study's trials (works while it runs)")
    p.add_argument("study_dir", metavar="DIR")
    p.set_defaults(run=status)

    p = sub.add_parser("report", help="write every plot (PNG + SVG), report.md and report.html into DIR/report/")
    p.add_argument("study_dir", metavar="DIR")
    p.set_defaults(run=report)


def ray_flags(flags: Flags, *, dashboard_host: bool = False) -> None:
    flags.add(RayOptions, "address", default="$RAY_ADDRESS, else a fresh local Ray")
    flags.add(RayOptions, "dashboard")
    if dashboard_host:
        flags.add(RayOptions, "dashboard_host")


def ray_options(flags: Flags, args: argparse.Namespace) -> RayOptions:
    ray = flags.build(args, RayOptions)
    return ray if ray.address else ray.replace(address=os.environ.get("RAY_ADDRESS") or None)


def run(flags: Flags, args: argparse.Namespace) -> int:
    from study import api

    overrides = {k: getattr(args, k) for k in RUN_OVERRIDES}
    spec = api.load_spec(args.spec, **overrides)
    ray = ray_options(flags, args)
    if flags.build(args, RunOptions).dry_run:
        from study.preflight import preflight

        prep = preflight(spec)
        print(prep.spec.to_yaml(), end="")
        base = f"checkpoint {prep.base_path}" if prep.base_path else (
            f"pretrain first (cached: {prep.base_cache})" if not prep.base_cache.is_file() else f"cached {prep.base_cache}")
        say(f"dry run OK: {len(prep.data.train)} train / {len(prep.data.val)} val images ({prep.data.source}); "
            f"base: {base}; study directory {spec.study_dir()} (not created)")
        return 0
    if ray.dashboard_host != "127.0.0.1":
        say(f"warning: the Ray dashboard will listen on {ray.dashboard_host}: anyone who reaches it can run code "
            "on this machine unless RAY_AUTH_MODE=token is set")
    study = api.run(spec, address=ray.address, dashboard=ray.dashboard, dashboard_host=ray.dashboard_host)
    print(summary(study.path))
    return 0


def resume(flags: Flags, args: argparse.Namespace) -> int:
    from study import api

    ray = ray_options(flags, args)
    print(summary(api.resume(args.study_dir, address=ray.address, dashboard=ray.dashboard).path))
    return 0


def status(args: argparse.Namespace) -> int:
    from study import api

    print(api.status(args.study_dir).text)
    return 0


def report(args: argparse.Namespace) -> int:
    from study import api

    written = api.report(args.study_dir)
    print(f"wrote {written.markdown}, {written.html} (one page, figures embedded) and {len(written.figures)} figures")
    return 0


def summary(study_dir: Path) -> str:
    from study.results import status_table

    written = [p for p in (study_dir / "results.parquet", study_dir / "best.json") if p.is_file()]
    return status_table(study_dir) + (f"\nresults: {', '.join(map(str, written))}" if written else "")
