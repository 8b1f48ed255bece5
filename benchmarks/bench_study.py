"""Where a user's minutes go: the `quick` study (`make run`'s job) timed phase by phase.

    .venv/bin/python -m benchmarks.bench_study        (also a row of `make bench`; ~7 min on 2 CPU cores)

Runs `patchtune run quick` into a fresh temporary storage (so the base is pretrained too, as on a fresh clone)
and reads back what the study recorded: `timings.json` (wall seconds per phase: preflight and data, Ray start,
base, trials, collecting results, the best trials' test evaluation, the audit) and `epochs.parquet` (each trial
epoch's training and validation-scoring seconds). Rows:
  - scoring share: validation scoring / (training + scoring), summed over trial epochs (target <= 20 %);
  - trial phase: its wall time against the trials' own training + scoring time spread over the concurrency
    (what a perfect scheduler would take; target <= 1.10x).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_quick(storage: Path, name: str = "bench-quick") -> tuple[Path, float]:
    cmd = [str(Path(sys.executable).with_name("patchtune")), "run", "quick", "--storage", str(storage), "--name", name]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
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


def measure() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="patchtune-bench-study-") as tmp:
        study_dir, wall = run_quick(Path(tmp))
        return study_rows(study_dir, wall)


if __name__ == "__main__":
    from benchmarks.bench_common import machine, render

    print(render(measure(), f"### `benchmarks/bench_study.py`\n\nMachine: {machine()}."))
