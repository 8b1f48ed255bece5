"""A synthetic `patchtune reproduce` results frame: scores plus the per-row metadata the analysis reads.

The metadata comes from the reproduction grid itself (trainables/cells.py), as study/reproduce.py writes it; the
analysis must never need the cell names themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from trainables.cells import reproduction_grid
from trainables.vocab import AttackName, Setting, values

GRID = {cell.cell: cell for cell in reproduction_grid()}
CELLS = tuple(GRID)
ATTACKS = tuple(a for a in values(AttackName) if a != AttackName.CLEAN.value)


def metadata(cell: str) -> dict[str, Any]:
    """The columns `patchtune reproduce` writes about the cell."""
    return GRID[cell].columns()


# Robust fine-tuning cells: PGD-AT with RMSProp 6 pt above Adam, SGD 10 pt below; FGSM-RS alike at 0.2.
ROBUST_LEVELS = {"pgd_at_adam": 0.30, "pgd_at_rmsprop": 0.36, "pgd_at_sgd": 0.20,
                 "fgsm_rs_adam": 0.20, "fgsm_rs_rmsprop": 0.20, "fgsm_rs_sgd": 0.20}


def repro_frame(seeds: int = 3, rmsprop_gain: float = 0.05, cells: Sequence[str] = CELLS,
                shuffle: bool = False, strong: bool = False) -> pd.DataFrame:
    """One row per (seed, cell): clean 0.9, every `<setting>/<attack>` near a per-cell level (undefended
    0.02, patch + Adam 0.10, patch + RMSProp 0.10 + `rmsprop_gain`, the robust fine-tunes ROBUST_LEVELS, the
    rest 0.3), `normeps/pgd` of patch + Adam at 0.53 (near the paper's F-MNIST 53.72 %), the training compute,
    and with `strong` a strong PGD 8 pt under PGD-10. `shuffle` puts the rows in a random order, as a frame
    sorted by anything but the grid would be."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for m in cells:
            base = {"undefended": 0.02, "patch_adam": 0.10, "patch_rmsprop": 0.10 + rmsprop_gain,
                    **ROBUST_LEVELS}.get(m, 0.3)
            fwd = 0 if m == "undefended" else (6 if m.startswith("pgd_at_") else 2) * 20000
            row: dict[str, Any] = {"seed": seed, **metadata(m), "clean": 0.9, "ttt/clean": 0.88,
                                   "cost_device_s": fwd / 1000 + seed * (fwd > 0),
                                   "cost_fwd_passes": fwd, "cost_bwd_passes": fwd}
            for setting in values(Setting):
                for attack in ATTACKS:
                    row[f"{setting}/{attack}"] = base + rng.normal(0, 0.002)
            if m == "patch_adam":
                row["normeps/pgd"] = 0.53
            if strong:
                row["strong/pgd"] = max(0.0, row["whitebox/pgd"] - 0.08)
                row["strong_steps"], row["strong_restarts"] = 100, 5
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1, random_state=1).reset_index(drop=True) if shuffle else frame
