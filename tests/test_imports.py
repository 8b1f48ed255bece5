"""The pure tensor layer must stay importable without Ray (notebooks, CI, other projects)."""

from __future__ import annotations

import subprocess
import sys

PURE = ["trainables", "trainables.config", "trainables.data", "trainables.models", "trainables.augment",
        "trainables.attacks", "trainables.training", "trainables.evaluation", "trainables.scoring", "trainables.trial",
        "trainables.checkpoint", "trainables.pipeline", "trainables.visualize", "trainables.perf",
        "trainables.strong_attacks", "trainables.audit", "trainables.cells", "trainables.reproduce_cell",
        "trainables.vocab", "analysis", "analysis.paper", "analysis.audit_tables", "analysis.stats",
        "analysis.tables", "analysis.grid", "study.cli", "study.spec", "study.settings"]


def test_pure_modules_do_not_import_ray() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
