"""The search benchmark's table: patchtune's own `quick` space, every configuration of a fixed design trained at full
fidelity once, so that searchers and schedulers can be replayed against it in seconds (benchmarks/search_replay.py).

    .venv/bin/python -m benchmarks.search_table            # 96 configs x 4 epochs + 16 at a second seed, 2 workers
    .venv/bin/python -m benchmarks.search_table --configs 8 --epochs 2 --noise 2 --out /tmp/t.parquet   # a small one

The design: `--configs` draws of Optuna's RandomSampler (seed `--design-seed`) through the study's own search space
(`study.spaces.define_space` on the preset's resolved `search`), so the table holds exactly what a study of that
preset can propose: every method, with and without the patch augmentation, both optimizers, lr, batch size, patch
size/count and pool. Each configuration runs the study trial itself (`trainables.trial.run_trial`, one torch thread as a
1-CPU Ray trial) from the preset's cached base, for `--epochs` epochs, and records per epoch what the trial reports:
the objective (the preset's PGD on its validation images), clean accuracy, the paper's PGD-10, the cost (device
seconds, forward and backward passes) and the wall seconds of training and scoring. After the last epoch the same
validation images are scored by a strong attack (PGD-50, 3 restarts, Madry's step at the objective's eps), to ask
whether the cheap per-epoch objective ranks configurations as a strong one does. The first `--noise` configurations
run again at seed 1: the table's measure of training noise.

Resumable: each (configuration, seed) is written to `--work` when it finishes, and a rerun skips those done. The parquet
(`--out`, kept in the repo) and its build record (`.json` beside it) are rewritten after every job.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from trainables.atomic import atomic_open, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).with_name("search_table.parquet")

# What each table row holds besides the configuration: the per-epoch report of a study trial, and the strong score.
EPOCH_COLUMNS = ("objective", "val_clean_acc", "val_pgd_acc", "val_paper_pgd_acc", "cost_device_s", "cost_fwd_passes",
                 "cost_bwd_passes", "train_time_s", "score_time_s")
CONFIG_COLUMNS = ("method", "augment", "optimizer", "lr", "batch_size", "at_steps", "patch_size", "num_patches", "pool")
STRONG_STEPS, STRONG_RESTARTS = 50, 3


class OtherDesign(ValueError):
    """The work directory holds jobs of another design: resuming there would mix two tables."""


@dataclasses.dataclass(frozen=True)
class Job:
    config_id: int
    seed: int
    config: dict[str, Any]  # the trial config (Tune's: Optuna's parameters and define_space's keys)

    @property
    def name(self) -> str:
        return f"c{self.config_id:03d}-s{self.seed}"


Overrides = dict[str, Any]  # dotted spec keys, as `study.spec.load_spec` takes them ({"data.limit_train": 200})


def design(preset: str, n: int, seed: int, epochs: int, overrides: Overrides | None = None
           ) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """`n` configurations of the preset's space, as Optuna's RandomSampler(seed) draws them through the study's own
    define-by-run space: (trial config, Optuna's distributions as JSON) each."""
    from study.spaces import define_space
    from study.spec import load_spec

    spec = load_spec(preset, overrides).resolved()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        keys = define_space(trial, search=spec.search, constants={"epochs": epochs})
        config = {**trial.params, **keys}
        dists = {k: optuna.distributions.distribution_to_json(d) for k, d in trial.distributions.items()}
        out.append((config, dists))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # nothing to learn from: the design is random
    return out


# ------------------------------------------------------------------------------------------- one job (a worker)

_WORKER: dict[str, Any] = {}


def _init_worker(preset: str, overrides: Overrides, base: str) -> None:
    import torch

    torch.set_num_threads(1)  # as a 1-CPU Ray trial runs
    from study.spec import load_spec
    from trainables.checkpoint import load_checkpoint
    from trainables.data import load_data

    spec = load_spec(preset, overrides).resolved()
    _WORKER.update(spec=spec, data=load_data(spec.data), base=load_checkpoint(base, arch=spec.arch,
                                                                            dataset=spec.data.dataset))


def run_job(job: Job) -> list[dict[str, Any]]:
    """One configuration at one seed through the study trial; its per-epoch rows, the strong score on the last."""
    import torch

    from trainables.config import strong_pgd
    from trainables.evaluation import evaluate
    from trainables.models import InputSpec, build_model
    from trainables.trial import TrialSetup, TrialState, run_trial

    spec, data, base = _WORKER["spec"], _WORKER["data"], _WORKER["base"]
    setup = TrialSetup(arch=spec.arch, info=data.info, train=data.train, val=data.val, base_state=base.state_dict,
                       objective=spec.objective, jitter=spec.search.jitter, channels=base.channels)
    rows: list[dict[str, Any]] = []
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], state: TrialState | None) -> None:
        rows.append({"epoch": len(rows) + 1, "error": metrics["error"],
                     **{k: float(metrics.get(k, float("nan"))) for k in EPOCH_COLUMNS}})
        if state is not None:
            last["model"] = state["model"]

    device = torch.device("cpu")
    t0 = time.perf_counter()
    run_trial({**job.config, "seed": job.seed}, setup, report=report, device=device)
    strong = float("nan")
    if last and not rows[-1]["error"]:
        model = build_model(spec.arch, InputSpec.of(data.info), channels=base.channels)
        model.load_state_dict(last["model"])
        attack = strong_pgd(spec.objective.eps, STRONG_STEPS, STRONG_RESTARTS)
        strong = evaluate(model.eval(), data.val, [attack], device=device, seed=job.seed)[attack.label]
    wall = time.perf_counter() - t0
    for row in rows:
        row.update(config_id=job.config_id, seed=job.seed, job_wall_s=wall,
                   strong_acc=strong if row is rows[-1] else float("nan"))
    return rows


# ------------------------------------------------------------------------------------------------- the table


def ensure_base(preset: str) -> Path:
    """The preset's base, as a study caches it (`runs/studies/_bases/`); pretrained here, without Ray, if absent."""
    from study.bases import base_cache_path, pretrain_base
    from study.spec import load_spec
    from trainables.checkpoint import Checkpoint, save_checkpoint

    spec = load_spec(preset).resolved()
    assert spec.model.arch is not None and spec.base.pretrain is not None
    path = base_cache_path(spec.storage, spec.model.arch, spec.data, spec.base.pretrain)
    if not path.is_file():
        print(f"pretraining the {preset} preset's base (cached at {path})", flush=True)
        state, meta = pretrain_base(spec.model.arch, spec.data, spec.base.pretrain)
        save_checkpoint(path, Checkpoint(meta, state).build(), meta)
    return path


def jobs_of(designed: Sequence[tuple[dict[str, Any], dict[str, str]]], noise: int) -> list[Job]:
    """Seed 0 of every configuration first (a partial table is already a table), then seed 1 of the first `noise`."""
    return ([Job(i, 0, c) for i, (c, _) in enumerate(designed)]
            + [Job(i, 1, c) for i, (c, _) in enumerate(designed[:noise])])


def collate(work: Path, designed: Sequence[tuple[dict[str, Any], dict[str, str]]]) -> pd.DataFrame:
    """Every finished job's rows with their configuration's columns (the trial config's keys, and Optuna's
    parameters and distributions as JSON for the replay)."""
    frames = []
    for part in sorted(work.glob("c*-s*.json")):
        rows = json.loads(part.read_text())
        for i, r in enumerate(rows):  # numbered as Tune numbers results: a diverged epoch reports epoch 1 (run_trial)
            r["epoch"] = i + 1
        config, dists = designed[rows[0]["config_id"]]
        fixed = {k: config.get(k) for k in CONFIG_COLUMNS}
        fixed["at_steps"] = fixed["at_steps"] if fixed["at_steps"] is not None else 0
        params = {k: v for k, v in config.items() if k in dists}
        frames.append(pd.DataFrame([{**fixed, "params": json.dumps(params, sort_keys=True),
                                     "distributions": json.dumps(dists, sort_keys=True), **r} for r in rows]))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    for k in ("patch_size", "num_patches"):
        table[k] = table[k].astype("Int64")
    lead = ["config_id", "seed", "epoch"]
    return table[lead + [c for c in table.columns if c not in lead]].sort_values(lead, ignore_index=True)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build(*, preset: str, configs: int, epochs: int, noise: int, design_seed: int, workers: int, out: Path,
          work: Path, limit: int | None = None, overrides: Overrides | None = None,
          base: Path | None = None) -> pd.DataFrame:
    """Run the jobs not yet in `work` (at most `limit` of them), rewriting `out` and its record after each. One
    worker runs them in this process; more, each in its own process."""
    from benchmarks.bench_common import machine

    overrides = dict(overrides or {})
    designed = design(preset, configs, design_seed, epochs, overrides)
    work.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"preset": preset, "configs": configs, "epochs": epochs, "noise_configs": noise,
                            "design_seed": design_seed, **({"overrides": overrides} if overrides else {})}
    stamp = work / "design.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != meta:
        raise OtherDesign(f"--work {str(work)!r} holds the jobs of another design ({stamp.read_text().strip()}): "
                          f"use another --work, or remove it")
    atomic_write_text(stamp, json.dumps(meta))
    left = [j for j in jobs_of(designed, noise) if not (work / f"{j.name}.json").is_file()]
    todo, total = left[:limit], len(jobs_of(designed, noise))
    print(f"search table: {total} jobs ({configs} configs x seed 0, {noise} x seed 1; {epochs} epochs each), "
          f"{total - len(left)} done, "
          f"running {len(todo)} on {workers} workers", flush=True)
    started = time.perf_counter()
    base = base or ensure_base(preset)
    done = 0

    def record(table: pd.DataFrame) -> None:
        with atomic_open(out) as f:
            table.to_parquet(f, index=False)
        build_s = float(table.groupby(["config_id", "seed"])["job_wall_s"].first().sum()) if len(table) else 0.0
        atomic_write_text(out.with_suffix(".json"), json.dumps({
            **meta, "jobs_done": int(table.groupby(["config_id", "seed"]).ngroups) if len(table) else 0,
            "jobs": total, "workers": workers, "job_seconds_sum": round(build_s, 1),
            "strong_attack": f"PGD-{STRONG_STEPS} x{STRONG_RESTARTS} (Madry's step) at the objective's eps",
            "machine": machine(), "commit": _commit(), "built": time.strftime("%Y-%m-%d %H:%M")}, indent=1) + "\n")

    def finished(job: Job, rows: list[dict[str, Any]]) -> None:
        nonlocal done
        atomic_write_text(work / f"{job.name}.json", json.dumps(rows))
        done += 1
        last = rows[-1]
        print(f"[{done}/{len(todo)}, {time.perf_counter() - started:.0f} s] {job.name} {job.config['method']}"
              f"{'+aug' if job.config.get('augment') else ''} {job.config['optimizer']} lr {job.config['lr']:.2g}: "
              f"objective {last['objective']:.3f} strong {last['strong_acc']:.3f} ({last['job_wall_s']:.0f} s)"
              f"{' ' + last['error'] if last['error'] else ''}", flush=True)
        record(collate(work, designed))

    init = (preset, overrides, str(base))
    if workers == 1:
        _init_worker(*init)
        for job in todo:
            finished(job, run_job(job))
    else:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
            for job, rows in zip(todo, pool.map(run_job, todo), strict=True):
                finished(job, rows)
    table = collate(work, designed)
    if len(table):
        record(table)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", help="the study preset whose space and data are tabulated")
    parser.add_argument("--configs", type=int, default=96, help="configurations in the design")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per configuration (the table's full fidelity)")
    parser.add_argument("--noise", type=int, default=16, help="the first N configurations run at a second seed too")
    parser.add_argument("--design-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--limit", type=int, help="run at most this many of the jobs left (the rest on a rerun)")
    parser.add_argument("--out", type=Path, default=TABLE)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "search_table",
                        help="where finished jobs are kept, so that a rerun resumes")
    parser.add_argument("--base", type=Path, help="the base checkpoint (default: the preset's, pretrained if not cached)")
    parser.add_argument("--limit-train", type=int, help="training images (default: the preset's)")
    parser.add_argument("--limit-val", type=int, help="validation images scored (default: the preset's)")
    args = parser.parse_args(argv)
    for name in ("configs", "epochs", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.noise <= args.configs:
        parser.error(f"--noise must be between 0 and --configs ({args.configs}), got {args.noise}")
    if args.base is not None and not args.base.is_file():
        parser.error(f"--base {str(args.base)!r}: no such file")
    overrides = {f"data.{k}": getattr(args, k) for k in ("limit_train", "limit_val") if getattr(args, k) is not None}
    from study.spec import load_spec
    from trainables.vocab import ConfigError

    try:
        load_spec(args.preset, overrides)
    except (ConfigError, OSError) as exc:
        parser.error(f"--preset {args.preset!r}: {exc}")
    t0 = time.perf_counter()
    try:
        table = build(preset=args.preset, configs=args.configs, epochs=args.epochs, noise=args.noise,
                      design_seed=args.design_seed, workers=args.workers, out=args.out, work=args.work,
                      limit=args.limit,
                      overrides=overrides, base=args.base)
    except OtherDesign as exc:
        parser.error(str(exc))
    print(f"{args.out}: {len(table)} rows, {table.groupby(['config_id', 'seed']).ngroups if len(table) else 0} jobs "
          f"({time.perf_counter() - t0:.0f} s this run; {platform.node()})")


if __name__ == "__main__":
    main(sys.argv[1:])
