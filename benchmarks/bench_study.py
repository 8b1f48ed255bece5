"""Where a user's minutes go: the `quick` study (`make run`'s job) timed phase by phase.

    .venv/bin/python -m benchmarks.bench_study [--spec quick] [--no-record]   (also a row of `make bench`; ~7 min)

Runs `patchtune run quick` into a fresh temporary storage (so the base is pretrained too, as on a fresh clone)
and reads back what the study recorded: `timings.json` (wall seconds per phase: preflight and data, Ray start,
base, trials, collecting results, the best trials' test evaluation, the audit) and `epochs.parquet` (each trial
epoch's training and validation-scoring seconds). Rows:
  - scoring share: validation scoring / (training + scoring), summed over trial epochs (target <= 20 %);
  - trial phase: its wall time against the trials' own training + scoring time spread over the concurrency
    (what a perfect scheduler would take; target <= 1.10x).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.bench_common import publish

ROOT = Path(__file__).resolve().parents[1]


def run_quick(storage: Path, name: str = "bench-quick", spec: str = "quick") -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "study.cli", "run", spec, "--storage", str(storage), "--name", name]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"patchtune run {spec} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return storage / name, time.perf_counter() - t0


def study_rows(study_dir: Path, wall: float) -> list[dict[str, Any]]:
    phases = json.loads((study_dir / "timings.json").read_text())["phases_s"]
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    spec_text = (study_dir / "spec.yaml").read_text()
    concurrency = int(next(line.split(":")[1] for line in spec_text.splitlines() if line.startswith("max_concurrent:")))
    train, score = float(epochs["train_time_s"].sum()), float(epochs["score_time_s"].sum())
    share = score / (train + score)
    ideal = (train + score) / concurrency
    split = ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
    return [
        {"row": f"quick study (`patchtune run quick`, fresh storage): wall time by phase ({len(epochs)} trial-epochs)",
         "ours": f"{wall:.0f} s: {split}", "peer": f"trials' own time: training {train:.0f} s + scoring {score:.0f} s",
         "ratio": share, "measure": "scoring share of trial time", "target": "<= 0.20", "ok": share <= 0.20},
        {"row": f"quick study: trial phase vs the trials' own training + scoring time over {concurrency} slots",
         "ours": f"{phases['trials']:.0f} s", "peer": f"{ideal:.0f} s", "ratio": phases["trials"] / ideal,
         "measure": "time ours / peer", "target": "<= 1.10x", "ok": phases["trials"] / ideal <= 1.10},
    ]


def measure(spec: str = "quick") -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="patchtune-bench-study-") as tmp:
        study_dir, wall = run_quick(Path(tmp), spec=spec)
        return study_rows(study_dir, wall)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="quick", help="the preset or spec file timed (default: quick, make run's)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/README.md")
    args = parser.parse_args(argv)
    from study.spec import load_spec
    from trainables.vocab import ConfigError

    try:
        load_spec(args.spec)
    except (ConfigError, OSError) as exc:
        parser.error(f"--spec {args.spec!r}: {exc}")
    publish(measure(args.spec), "bench_study.py", record=not args.no_record)


if __name__ == "__main__":
    main()
