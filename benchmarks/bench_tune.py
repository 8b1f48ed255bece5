"""Tune overhead: N short trials through `patchtune run` vs the same trials in a bare Python loop.

    .venv/bin/python -m benchmarks.bench_tune [--trials 8] [--concurrency 2]   (also a row of `make bench`)

Both sides run the same trial configs (the ones the study's sampler chose), the same data, epochs and
validation scoring, at the same concurrency (a process pool of the same size, one torch thread per trial as
Ray gives a 1-CPU trial), and both end with the best trial's test evaluation. `patchtune run` is timed as a
whole command: CLI start, Ray start, the Tuner, result files. The base model is pretrained and cached first,
outside both timings. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.bench_common import publish
from study.bases import base_cache_path
from study.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Size:
    """What the benchmark runs: the row's sizes by default; the suite's smoke run shrinks them."""

    trials: int = 8
    concurrency: int = 2
    limit_train: int = 3000
    limit_val: int = 500
    epochs: int = 2
    base: Path | None = None  # a base checkpoint; None: pretrain the spec's (cached by a warm-up study first)


def bench_spec(storage: Path, name: str, trials: int, concurrency: int, size: Size = Size()) -> dict[str, Any]:
    base: dict[str, Any] = ({"checkpoint": str(size.base.resolve())} if size.base
                            else {"pretrain": {"epochs": 2, "limit_train": 10000}})
    return {
        "name": name, "storage": str(storage),
        "data": {"dataset": "fmnist", "limit_train": size.limit_train, "limit_val": size.limit_val,
                 "limit_test": size.limit_val},
        "base": base,
        "search": {"lr": {"adam": [1e-4, 1e-2], "rmsprop": [1e-4, 1e-2]}, "batch_size": [64, 128], "patch_size": [4, 12]},
        "epochs": size.epochs,
        "objective": {"metric": "robust_auc", "eps_grid": [0.02, 0.05, 0.1]},
        "num_samples": trials, "max_concurrent": concurrency,
        "scheduler": {"type": "fifo"}, "sampler": {"type": "random", "seed": 0},
    }


def _bare_trial(args: tuple[dict[str, Any], dict[str, Any], str]) -> float:
    """One trial without Ray: the same `trial.run_trial` the trainable runs, checkpointing to a temp dir."""
    import torch

    torch.set_num_threads(1)
    from trainables.checkpoint import load_checkpoint
    from trainables.data import load_data
    from trainables.trial import TrialSetup, TrialState, run_trial

    raw, config, base = args
    spec = parse_spec(raw).resolved()
    data = load_data(spec.data)
    setup = TrialSetup(arch=spec.arch, info=data.info, train=data.train, val=data.val,
                       base_state=load_checkpoint(base).state_dict, objective=spec.objective,
                       jitter=spec.search.jitter)
    scores: list[float] = []

    def report(metrics: dict[str, Any], state: TrialState | None) -> None:
        scores.append(float(metrics["objective"]))
        if state is not None:
            with tempfile.TemporaryDirectory() as d:  # the trainable checkpoints every epoch too
                torch.save(state, Path(d) / "state.pt")

    run_trial(config, setup, report=report, device=torch.device("cpu"))
    return scores[-1]


def _bare_test_eval(raw: dict[str, Any], base: str) -> None:
    import torch

    from trainables.checkpoint import load_checkpoint
    from trainables.config import paper_attacks
    from trainables.data import load_data
    from trainables.pipeline import evaluate_model

    spec = parse_spec(raw)
    data = load_data(spec.data)
    evaluate_model(load_checkpoint(base).build(), data.test, paper_attacks(spec.data.dataset), device=torch.device("cpu"))


def breakdown(study_dir: Path, t_command: float, concurrency: int, long_trials: int = 64,
              long_epochs: int = 50) -> list[dict[str, Any]]:
    """Where `patchtune run`'s time beyond the trials' own compute goes, from the study's own files: the phases
    of timings.json (fixed costs, once per study), and per trial (Tune's iteration times vs the trial's own
    training + scoring seconds): the first iteration's extra (actor start, data and base from the object store,
    model build) and every iteration's extra (checkpoint write, report, Tune bookkeeping). Then the same costs
    extrapolated to a long study (`long_trials` x `long_epochs` at the measured per-epoch compute)."""
    import json

    phases = json.loads((study_dir / "timings.json").read_text())
    ph, total = phases["phases_s"], phases["total_s"]
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    own = epochs["train_time_s"] + epochs["score_time_s"]
    extra = (epochs["time_this_iter_s"] - own).clip(lower=0)
    first = epochs["training_iteration"] == 1
    per_epoch = float(extra[~first].mean()) if (~first).any() else float(extra.mean())
    per_trial = max(0.0, float(extra[first].mean()) - per_epoch)
    compute = float(own.sum())
    in_trials = float(epochs.groupby("trial_id")["time_total_s"].max().sum())
    gaps = max(0.0, ph["trials"] - in_trials / concurrency)  # scheduling, searcher, snapshots between trials
    fixed = {"CLI start + imports": t_command - total, **{k: v for k, v in ph.items() if k != "trials"}}
    work = ("test_eval", "audit")  # evaluation work the bare peer does too (or that a long study also pays once)
    n_trials, n_epochs = epochs["trial_id"].nunique(), len(epochs)
    rows = [{"row": f"Tune overhead, where it goes ({n_trials} trials, {n_epochs} trial-epochs, concurrency {concurrency})",
             "ours": "; ".join(f"{k} {v:.1f} s" for k, v in fixed.items())
                     + f"; per trial {per_trial:.2f} s (actor, object store, model), per epoch {per_epoch:.2f} s "
                       f"(checkpoint, report), gaps between trials {gaps:.1f} s",
             "peer": f"trials' own compute {compute:.1f} s ({compute / concurrency:.1f} s over {concurrency} slots)",
             "ratio": t_command / (compute / concurrency), "measure": "command / own compute over the slots",
             "target": "-", "ok": True}]
    per_epoch_compute = compute / n_epochs
    long_compute = long_trials * long_epochs * per_epoch_compute / concurrency
    long_over = (sum(v for k, v in fixed.items() if k not in work) + gaps / n_trials * long_trials
                 + (per_trial * long_trials + per_epoch * long_trials * long_epochs) / concurrency)
    rows.append({"row": f"Tune overhead extrapolated to a long study ({long_trials} trials x {long_epochs} epochs at "
                        f"{per_epoch_compute:.1f} s of compute per epoch)",
                 "ours": f"{(long_compute + long_over) / 3600:.2f} h", "peer": f"compute {long_compute / 3600:.2f} h",
                 "ratio": (long_compute + long_over) / long_compute, "measure": "time / compute over the slots",
                 "target": "<= 1.10x", "ok": (long_compute + long_over) / long_compute <= 1.10})
    return rows


def _run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"patchtune {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def measure(trials: int = 8, concurrency: int = 2, size: Size = Size()) -> dict[str, Any]:
    """Time `patchtune run` and the bare loop on the same trial configs; one row for bench_core's table."""
    size = dataclasses.replace(size, trials=trials, concurrency=concurrency)
    storage = Path(tempfile.mkdtemp(prefix="patchtune-bench-"))

    if size.base is None:  # a warm-up study (1 trial) pretrains and caches the base, so neither timing includes it
        warm = storage / "warm.yaml"
        warm.write_text(yaml.safe_dump(bench_spec(storage, "warm", 1, 1, size)))
        _run(["run", str(warm)])

    raw = bench_spec(storage, "timed", trials, concurrency, size)
    spec_file = storage / "timed.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    _run(["run", str(spec_file)])
    t_tune = time.perf_counter() - t0

    results = pd.read_parquet(storage / "timed" / "results.parquet")
    spec = parse_spec(raw).resolved()
    assert spec.model.arch is not None
    if size.base is not None:
        base = str(size.base.resolve())
    else:
        assert spec.base.pretrain is not None
        base = str(base_cache_path(spec.storage, spec.model.arch, spec.data, spec.base.pretrain))
    configs = [{k: r[k] for k in ("optimizer", "lr", "batch_size", "patch_size", "num_patches", "pool", "epochs", "seed")}
               for r in results.to_dict("records")]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(concurrency) as pool:
        pool.map(_bare_trial, [(raw, c, base) for c in configs], chunksize=1)
    _bare_test_eval(raw, base)
    t_bare = time.perf_counter() - t0
    return {
        "breakdown": breakdown(storage / "timed", t_tune, concurrency),
        "row": f"Tune overhead: {trials} trials ({size.epochs} epochs, {size.limit_train} images, {size.limit_val} val "
               f"images scored), concurrency {concurrency}",
        "ours": f"`patchtune run` {t_tune:.1f} s",
        "peer": f"bare process-pool loop {t_bare:.1f} s",
        "ratio": t_tune / t_bare,
        "measure": "time ours / peer",
        "target": "<= 1.10x",
        "ok": t_tune / t_bare <= 1.10,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Size()
    parser.add_argument("--trials", type=int, default=default.trials)
    parser.add_argument("--concurrency", type=int, default=default.concurrency)
    parser.add_argument("--limit-train", type=int, default=default.limit_train)
    parser.add_argument("--limit-val", type=int, default=default.limit_val)
    parser.add_argument("--epochs", type=int, default=default.epochs)
    parser.add_argument("--base", type=Path, help="a base checkpoint (default: pretrain one, outside the timings)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    for name in ("trials", "concurrency", "limit_train", "limit_val", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.base is not None and not args.base.is_file():
        parser.error(f"--base {str(args.base)!r}: no such file")
    row = measure(args.trials, args.concurrency, Size(limit_train=args.limit_train, limit_val=args.limit_val,
                                                        epochs=args.epochs, base=args.base))
    publish([row, *row.pop("breakdown")], "bench_tune.py", record=not args.no_record)


if __name__ == "__main__":
    main()
