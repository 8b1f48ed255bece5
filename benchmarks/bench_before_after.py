"""The same study trials through today's code and through the code of an earlier commit, on this machine.

    .venv/bin/python -m benchmarks.bench_before_after [--before 6ce4ed8] [--base BASE.pt] [--no-record]

Issue 14 measured a trial of the `quick` preset as it was then (patch fine-tuning on 6,000 images, 2 epochs,
scored every epoch on 500 validation images for robust_auc over eps 0.01/0.02/0.05/0.1) and asked for its trial
phase to get >= 1.5x faster "for the same trials and results". This runs exactly those trials, one spec and four
fixed configs spanning that preset's space, through the study trial (`run_trial`) of both versions: the old one
from `git archive <before>` in a temp dir, today's from this checkout. Each config runs old and new at the same
time, one torch thread each (a 1-CPU Ray trial), so both see the same machine load. The base is the same file
for both (the preset's base: 4 epochs on 20,000 images; pretrained here unless --base is given).

Rows: trial-epoch wall time (training + validation scoring), old / new, with the split; and the objective each
version scored, so "same results" is checked, not assumed (today's eps curve is the nested pass: never above
per-eps PGD beyond noise).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_common import publish

ROOT = Path(__file__).resolve().parents[1]

BEFORE = "6ce4ed8"  # main when issue 14 was filed (quick preset = 4a11572's)

# The quick preset of issue 14's measurement (4a11572), patch fine-tuning only.
SPEC: dict[str, Any] = {
    "name": "before-after", "dataset": "fmnist", "arch": "cnn3",
    "data": {"limit_train": 6000, "limit_test": 2000},
    "base": {"pretrain": {"optimizer": "adam", "epochs": 4, "limit_train": 20000, "seed": 0}},
    "search": {"lr": {"adam": [1e-4, 1e-2], "rmsprop": [1e-4, 1e-2]}, "batch_size": [64, 128, 256],
               "patch_size": [4, 14], "num_patches": [1, 2], "jitter": 3},
    "epochs": 2,
    "objective": {"metric": "robust_auc", "eps_grid": [0.01, 0.02, 0.05, 0.1], "val_limit": 500},
    "num_samples": 4, "max_concurrent": 2,
}
POOL = "rotate,translate,flip,noise,occlude"
CONFIGS: list[dict[str, Any]] = [
    {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "patch_size": 6, "num_patches": 1},
    {"optimizer": "rmsprop", "lr": 3e-4, "batch_size": 128, "patch_size": 10, "num_patches": 2},
    {"optimizer": "adam", "lr": 3e-3, "batch_size": 256, "patch_size": 14, "num_patches": 1},
    {"optimizer": "rmsprop", "lr": 1e-3, "batch_size": 128, "patch_size": 4, "num_patches": 1},
]

# The same spec in today's format (one section per settings model: the data set and the validation subset under
# `data`, the architecture under `model`).
SPEC_NOW: dict[str, Any] = {
    **{k: v for k, v in SPEC.items() if k not in ("dataset", "arch", "data", "objective")},
    "data": {"dataset": "fmnist", **SPEC["data"], "limit_val": 500}, "model": {"arch": "cnn3"},
    "objective": {k: v for k, v in SPEC["objective"].items() if k != "val_limit"},
}

# Runs inside the version's own tree (cwd and sys.path[0]): one trial, one JSON line per epoch. Each version builds
# its trial its own way: today's from the resolved spec, the earlier one from its spec's helpers.
WORKER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
import trainables
from study.spec import parse_spec
from trainables.checkpoint import load_checkpoint
from trainables.data import load_data
raw_then, raw_now, config = (json.loads(a) for a in sys.argv[1:4])
base = sys.argv[4]
try:
    from trainables.trial import TrialSetup, run_trial
    spec = parse_spec(raw_now).resolved()
    data = load_data(spec.data)
    setup = TrialSetup(arch=spec.arch, info=data.info, train=data.train, val=data.val,
                       base_state=load_checkpoint(base).state_dict, objective=spec.objective, jitter=spec.search.jitter)
except ImportError:
    from study.preflight import data_cfg, objective_cfg
    from trainables.pipeline import TrialSetup, run_trial
    spec = parse_spec(raw_then)
    data = load_data(data_cfg(spec))
    setup = TrialSetup(arch=spec.resolved_arch, info=data.info, train=data.train, val=data.val,
                       base_state=load_checkpoint(base).state_dict, objective=objective_cfg(spec),
                       jitter=spec.search.jitter)
last = {"t": time.perf_counter(), "device_s": 0.0}
def report(metrics, state):
    now = time.perf_counter()
    train = float(metrics["cost_device_s"]) - last["device_s"]
    print(json.dumps({"code": trainables.__file__, "epoch": int(metrics["epoch"]), "wall_s": now - last["t"],
                      "train_s": train, "objective": float(metrics["objective"]),
                      "clean_acc": float(metrics["val_clean_acc"])}), flush=True)
    last.update(t=now, device_s=float(metrics["cost_device_s"]))
run_trial(config, setup, report=report, device=torch.device("cpu"))
"""


def available(rev: str) -> bool:
    """Whether this clone holds `rev` (a shallow clone may not)."""
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}^{{commit}}"],
                          capture_output=True).returncode == 0


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` (committed files only), without touching this checkout."""
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


@dataclasses.dataclass(frozen=True)
class Size:
    """Issue 14's sizes by default; the suite's smoke run shrinks them."""

    configs: int = len(CONFIGS)
    limit_train: int = SPEC["data"]["limit_train"]
    limit_val: int = SPEC["objective"]["val_limit"]
    epochs: int = SPEC["epochs"]

    def specs(self, storage: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the earlier commit's spec, today's), at these sizes."""
        then = {**SPEC, "storage": str(storage), "epochs": self.epochs,
                "data": {**SPEC["data"], "limit_train": self.limit_train},
                "objective": {**SPEC["objective"], "val_limit": self.limit_val}}
        now = {**SPEC_NOW, "storage": str(storage), "epochs": self.epochs,
               "data": {**SPEC_NOW["data"], "limit_train": self.limit_train, "limit_val": self.limit_val}}
        return then, now


def run_one(tree: Path, config: dict[str, Any], base: Path, storage: Path, size: Size) -> list[dict[str, Any]]:
    then, now = size.specs(storage)
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(then), json.dumps(now), json.dumps(config), str(base)],
                         cwd=tree, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the trial in {tree} failed:\n{out.stderr[-3000:]}")
    epochs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if not epochs or not epochs[0]["code"].startswith(str(tree)):
        raise SystemExit(f"the worker in {tree} ran other code: {epochs[:1]}")
    return epochs


def pretrain(storage: Path) -> Path:
    base = storage / "base.pt"
    p = SPEC["base"]["pretrain"]
    subprocess.run([str(Path(sys.executable).with_name("patchtune")), "pretrain", "--epochs", str(p["epochs"]),
                    "--limit-train", str(p["limit_train"]), "--seed", str(p["seed"]), "--out", str(base), "--quiet"],
                   cwd=ROOT, check=True)
    return base


def measure(before: str, base: Path | None, size: Size = Size()) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="patchtune-before-after-") as d:
        tmp = Path(d)
        old_tree = export(before, tmp)
        base = base.resolve() if base else pretrain(tmp)  # absolute: the workers run in their own trees
        for i, c in enumerate(CONFIGS[: size.configs]):
            config = {**c, "pool": POOL, "epochs": size.epochs, "seed": i}
            with cf.ThreadPoolExecutor(2) as pool:  # old and new side by side: the same machine load for both
                futures = {k: pool.submit(run_one, tree, config, base, tmp / k, size)
                           for k, tree in (("before", old_tree), ("after", ROOT))}
                for k, f in futures.items():
                    runs[k].extend({**e, "config": i} for e in f.result())

    def totals(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
        wall = sum(r["wall_s"] for r in rows)
        train = sum(r["train_s"] for r in rows)
        return wall, train, wall - train

    (bw, bt, bs), (aw, at, as_) = totals(runs["before"]), totals(runs["after"])
    n = len(runs["after"])
    finals = {k: {r["config"]: r for r in v if r["epoch"] == size.epochs} for k, v in runs.items()}
    diffs = [finals["after"][i]["objective"] - finals["before"][i]["objective"] for i in finals["after"]]
    clean = [(finals["before"][i]["clean_acc"], finals["after"][i]["clean_acc"]) for i in finals["after"]]
    what = (f"{size.configs} patch trials x {size.epochs} epochs ({size.limit_train} images; robust_auc over eps "
            f"0.01-0.1 on {size.limit_val} val images), 1 thread each")
    return [
        {"row": f"trial phase, the same trials: {what}", "ours": f"today {aw / n:.1f} s per trial-epoch "
         f"(training {at / n:.1f} + scoring {as_ / n:.1f})", "peer": f"{before} {bw / n:.1f} s (training {bt / n:.1f} "
         f"+ scoring {bs / n:.1f})", "ratio": bw / aw, "measure": "speed-up (before / today)", "target": ">= 1.5x",
         "ok": bw / aw >= 1.5},
        {"row": "the same results: final-epoch val objective (robust_auc), today - before, per trial",
         "ours": ", ".join(f"{100 * d:+.1f} pt" for d in diffs),
         "peer": "clean " + ", ".join(f"{100 * b:.1f}/{100 * a:.1f} %" for b, a in clean) + " (before/today)",
         "ratio": sum(r["objective"] for r in finals["after"].values())
                  / sum(r["objective"] for r in finals["before"].values()),
         "measure": "mean objective today / before", "target": "today <= before + 3 pt per trial",
         "ok": all(d <= 0.03 for d in diffs)},
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Size()
    parser.add_argument("--before", default=BEFORE, help=f"the earlier commit (default {BEFORE})")
    parser.add_argument("--base", type=Path, help="a base checkpoint (default: pretrain the preset's base first)")
    parser.add_argument("--configs", type=int, default=default.configs, help=f"the first N of the {len(CONFIGS)} configs")
    parser.add_argument("--limit-train", type=int, default=default.limit_train)
    parser.add_argument("--limit-val", type=int, default=default.limit_val)
    parser.add_argument("--epochs", type=int, default=default.epochs)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.configs <= len(CONFIGS):
        parser.error(f"--configs must be between 1 and {len(CONFIGS)}, got {args.configs}")
    for name in ("limit_train", "limit_val", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.base is not None and not args.base.is_file():
        parser.error(f"--base {str(args.base)!r}: no such file")
    if not available(args.before):
        parser.error(f"--before {args.before!r}: no such commit in this clone (a shallow clone? git fetch --unshallow)")
    size = Size(configs=args.configs, limit_train=args.limit_train, limit_val=args.limit_val, epochs=args.epochs)
    publish(measure(args.before, args.base, size), "bench_before_after.py", record=not args.no_record)


if __name__ == "__main__":
    main()
