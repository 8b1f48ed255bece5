"""Optuna define-by-run search space (trial -> params). No computation here: OptunaSearch warns after 1 s.

Module-level so the searcher pickles with the stdlib (Tune checkpoints it); bind the spec with
`functools.partial(define_space, search=..., constants=...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from study.spec import SearchSpec


def define_space(trial: optuna.Trial, search: SearchSpec, constants: Mapping[str, Any]) -> dict[str, Any]:
    """Suggest optimizer, its lr (log scale, per-optimizer range), batch size, patch size/count and pool.

    Returns the constants plus derived keys (`lr`, `pool`) that the trainable reads; Optuna keeps the
    suggested parameters themselves (`lr_adam`, `op_rotate`, ...), conditional where they should be.
    """
    optimizer = trial.suggest_categorical("optimizer", sorted(search.lr))
    low, high = search.lr[optimizer]
    lr = trial.suggest_float(f"lr_{optimizer}", low, high, log=True) if low < high else low
    trial.suggest_categorical("batch_size", list(search.batch_size))
    trial.suggest_int("patch_size", *search.patch_size)
    if search.num_patches[0] < search.num_patches[1]:
        trial.suggest_int("num_patches", *search.num_patches)
    ops = list(search.ops)
    if search.search_pool and len(ops) > 1:
        pool = [op for op in ops if trial.suggest_categorical(f"op_{op}", [True, False])]
        if not pool:  # at least one op stays on
            pool = [trial.suggest_categorical("op_fallback", ops)]
    else:
        pool = ops
    derived = {"lr": lr, "pool": ",".join(pool)}
    if search.num_patches[0] == search.num_patches[1]:
        derived["num_patches"] = search.num_patches[0]
    return {**derived, **constants}
