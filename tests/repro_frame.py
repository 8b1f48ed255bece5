"""A synthetic `patchtune reproduce` results frame: scores plus the per-row metadata the analysis reads.

The metadata comes from the reproduction grid itself (study/grid.py), as study/reproduce.py writes it; the
analysis must never need the method names themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.grid import REPRODUCTION_GRID
from trainables.vocab import AttackName, Setting, values

GRID = {cell.method: cell for cell in REPRODUCTION_GRID}
METHODS = tuple(GRID)
ATTACKS = tuple(a for a in values(AttackName) if a != AttackName.CLEAN.value)


def metadata(method: str) -> dict[str, Any]:
    """The columns `patchtune reproduce` writes about the cell (without `method` itself)."""
    return {k: v for k, v in GRID[method].columns().items() if k != "method"}


def repro_frame(seeds: int = 3, rmsprop_gain: float = 0.05, methods: Sequence[str] = METHODS,
                shuffle: bool = False) -> pd.DataFrame:
    """One row per (seed, method): clean 0.9, every `<setting>/<attack>` near a per-method level (undefended
    0.02, patch + Adam 0.10, patch + RMSProp 0.10 + `rmsprop_gain`, the rest 0.3), and `normeps/pgd` of
    patch + Adam at 0.53 (near the paper's F-MNIST 53.72 %). `shuffle` puts the rows in a random order, as
    a frame sorted by anything but the grid would be."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for m in methods:
            base = {"undefended": 0.02, "patch_adam": 0.10, "patch_rmsprop": 0.10 + rmsprop_gain}.get(m, 0.3)
            row: dict[str, Any] = {"seed": seed, "method": m, **metadata(m), "clean": 0.9, "ttt/clean": 0.88}
            for setting in values(Setting):
                for attack in ATTACKS:
                    row[f"{setting}/{attack}"] = base + rng.normal(0, 0.002)
            if m == "patch_adam":
                row["normeps/pgd"] = 0.53
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1, random_state=1).reset_index(drop=True) if shuffle else frame
