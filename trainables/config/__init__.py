"""The settings of the pure tensor layer, one pydantic model per concept (see `spine` for what they share):

    inputs   DataCfg (which images, splits, limits), ModelCfg (architecture), AugCfg (the patch augmentation)
    recipe   TrainCfg / PretrainCfg (the optimisation), MethodCfg (the fine-tuning method)
    threat   AttackCfg (one attack), ObjectiveCfg (a study's per-epoch objective), AuditCfg (the strong audit)

A study trial's Tune config is a flat view of three of them (`trial_cfgs`): its keys are their field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainables.config.inputs import AugCfg, DataCfg, ModelCfg
from trainables.config.recipe import FINETUNE_EPOCHS, ROBUST_AT_STEPS, MethodCfg, PretrainCfg, TrainCfg
from trainables.config.spine import Settings, as_jsonable, settings_fields, value_type
from trainables.config.threat import (
    AttackCfg,
    AuditCfg,
    ObjectiveCfg,
    madry_alpha,
    paper_attacks,
    reaches,
    strong_pgd,
)
from trainables.vocab import AttackName, ConfigError, Dataset, Method, Optimizer, PatchOp

__all__ = [
    "FINETUNE_EPOCHS", "ROBUST_AT_STEPS", "TRIAL_CONFIG_KEYS", "TRIAL_METHOD_KEYS", "AttackCfg", "AttackName",
    "AugCfg", "AuditCfg", "ConfigError", "DataCfg", "Dataset", "Method", "MethodCfg", "ModelCfg", "ObjectiveCfg",
    "Optimizer", "PatchOp", "PretrainCfg", "Settings", "TrainCfg", "as_jsonable", "madry_alpha", "paper_attacks",
    "reaches", "settings_fields", "strong_pgd", "trial_cfgs", "trial_config",
]

# The keys of a study trial's Tune config, each a field of the model it configures: the method's, then the
# optimisation's, then the patch augmentation's. Results tables and best.json carry exactly these.
TRIAL_METHOD_KEYS: tuple[str, ...] = tuple(MethodCfg.model_fields)
_TRIAL_TRAIN_KEYS = ("optimizer", "lr", "batch_size", "epochs", "seed")
_TRIAL_AUG_KEYS = ("patch_size", "num_patches", "pool")
TRIAL_CONFIG_KEYS: tuple[str, ...] = (*TRIAL_METHOD_KEYS, *_TRIAL_TRAIN_KEYS, *_TRIAL_AUG_KEYS)


def _integer_keys() -> frozenset[str]:
    models: dict[str, type[Settings]] = {**dict.fromkeys(TRIAL_METHOD_KEYS, MethodCfg),
                                         **dict.fromkeys(_TRIAL_TRAIN_KEYS, TrainCfg),
                                         **dict.fromkeys(_TRIAL_AUG_KEYS, AugCfg)}
    return frozenset(k for k, m in models.items() if value_type(m.model_fields[k].annotation) is int)


def trial_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's config read back from a results table: missing cells (NaN) as None, and the integers a column with
    gaps turned into floats (4.0) integers again."""
    out: dict[str, Any] = {}
    for key in TRIAL_CONFIG_KEYS:
        value: Any = row.get(key)
        if hasattr(value, "item"):  # numpy scalars
            value = value.item()
        if isinstance(value, float) and value != value:
            value = None
        if key in INTEGER_KEYS and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
    return out


def trial_cfgs(config: Mapping[str, Any], *, jitter: int = 0) -> tuple[TrainCfg, AugCfg | None, MethodCfg]:
    """A Tune trial's config dict -> (TrainCfg, AugCfg or None, MethodCfg); errors name the bad key and value.

    Keys absent (or None) take the models' defaults; the patch keys are read only when the method uses the
    augmentation. Trials keep a fixed learning rate (no plateau schedule)."""

    def given(keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: config[k] for k in keys if config.get(k) is not None}

    method = MethodCfg.parse(given(TRIAL_METHOD_KEYS), "trial config")
    train = TrainCfg.parse({**given(_TRIAL_TRAIN_KEYS), "plateau_patience": 0}, "trial config")
    aug = AugCfg.parse({**given(_TRIAL_AUG_KEYS), "jitter": jitter}, "trial config") if method.augmented else None
    return train, aug, method


INTEGER_KEYS = _integer_keys()
