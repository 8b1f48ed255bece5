"""Optuna define-by-run search space (trial -> params). No computation here: OptunaSearch warns after 1 s.

Module-level so the searcher pickles with the stdlib (Tune checkpoints it); bind the spec with
`functools.partial(define_space, search=..., constants=...)`. The returned keys are the trial config's
(`trainables.config.TRIAL_CONFIG_KEYS`), each the name of the setting it configures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from study.settings import SearchCfg
from trainables.vocab import METHODS, Method, Optimizer


def define_space(trial: optuna.Trial, search: SearchCfg, constants: Mapping[str, Any]) -> dict[str, Any]:
    """Suggest the fine-tuning method and its own parameters, the optimizer and its lr (log scale, per-optimizer
    range), the batch size, and, when the patch augmentation is on, patch size/count and pool (`search` resolved).

    Returns the constants plus the keys the trainable reads (`method`, `augment`, `at_steps`, `beta`, `lr`,
    `pool`, ...); Optuna keeps the suggested parameters themselves (`pgd_at_at_steps`, `lr_adam`, `op_rotate`,
    ...), each sampled only where it means something: a method's parameters when that method is drawn,
    patch parameters when the augmentation is on.
    """
    names = sorted(m.value for m in search.methods)
    method = Method(trial.suggest_categorical("method", names) if len(names) > 1 else names[0])
    ranges = search.methods[method]
    reads = METHODS[method].params
    out: dict[str, Any] = {"method": method.value}
    if ranges.at_steps is not None:
        out["at_steps"] = _int(trial, f"{method.value}_at_steps", ranges.at_steps)
    if ranges.beta is not None:
        out["beta"] = _float(trial, f"{method.value}_beta", ranges.beta)
    choices = ranges.augment_choices(method)
    augment = bool(trial.suggest_categorical(f"{method.value}_augment", list(choices)) if len(choices) > 1 else choices[0])
    out["augment"] = augment
    if search.train_eps is not None and "train_eps" in reads:
        out["train_eps"] = search.train_eps
    if search.eps_warmup > 0 and "eps_warmup" in reads:
        out["eps_warmup"] = search.eps_warmup

    optimizer = trial.suggest_categorical("optimizer", sorted(o.value for o in search.lr))
    out["lr"] = _float(trial, f"lr_{optimizer}", search.lr[Optimizer(optimizer)])
    trial.suggest_categorical("batch_size", list(search.batch_size))
    if augment:
        out.update(_patch_space(trial, search))
    return {**out, **constants}


def _patch_space(trial: optuna.Trial, search: SearchCfg) -> dict[str, Any]:
    trial.suggest_int("patch_size", *search.patch_size)
    out: dict[str, Any] = {}
    if search.num_patches[0] < search.num_patches[1]:
        trial.suggest_int("num_patches", *search.num_patches)
    else:
        out["num_patches"] = search.num_patches[0]
    ops = [op.value for op in search.ops]
    if search.search_pool and len(ops) > 1:
        pool = [op for op in ops if trial.suggest_categorical(f"op_{op}", [True, False])]
        if not pool:  # at least one op stays on
            pool = [trial.suggest_categorical("op_fallback", ops)]
    else:
        pool = ops
    out["pool"] = ",".join(pool)
    return out


def _int(trial: optuna.Trial, name: str, bounds: tuple[int, int]) -> int:
    return trial.suggest_int(name, *bounds) if bounds[0] < bounds[1] else bounds[0]


def _float(trial: optuna.Trial, name: str, bounds: tuple[float, float]) -> float:
    return trial.suggest_float(name, *bounds, log=True) if bounds[0] < bounds[1] else bounds[0]
