"""Base models: pretrained once as a Ray task (on a GPU worker when the cluster has one) and cached by everything
that determines them, so studies and reproductions that ask for the same base share it. The one base cache: a
study's `base.pretrain` and each seed of `patchtune reproduce` come through `ensure_bases`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.cluster import gpus_for_task
from trainables.checkpoint import save_checkpoint
from trainables.config import DataCfg, Dataset, PretrainCfg


def base_cache_path(storage: str | Path, arch: str, data: DataCfg, pretrain: PretrainCfg,
                    weights: str | None = None) -> Path:
    """Where the base of (arch, its starting weights, data set and its splits, resolved pretraining settings) is
    cached. A tree's files and pretrained weights are in the key by what they hold (a changed tree, a library
    whose DEFAULT now names other weights: another base)."""
    from trainables.data import tree_digest
    from trainables.zoo import weights_identity

    key: dict[str, Any] = {"arch": arch, "data": {"dataset": data.dataset.value, **data.split_meta()},
                           "pretrain": pretrain.resolved(arch, finetune=False).to_json()}
    if weights is not None:  # absent otherwise, so that the bases cached before weights existed keep their keys
        key["weights"] = weights_identity(arch, weights)
    if data.dataset is Dataset.IMAGEFOLDER:
        key["tree"] = tree_digest(data)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = arch.replace("/", "-")
    return Path(storage).expanduser().resolve() / "_bases" / f"{data.dataset.value}-{name}-{digest}.pt"


def pretrain_base(arch: str, data: DataCfg, pretrain: PretrainCfg,
                  weights: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pretrain a base (runs as a Ray task on whichever node gets it): its weights (on the CPU) and metadata."""
    from trainables.data import load_data
    from trainables.perf import pick_device
    from trainables.pipeline import pretrain as run_pretrain

    cfg = data.replace(limit_train=pretrain.limit_train, limit_val=pretrain.limit_eval, limit_test=pretrain.limit_eval)
    train = pretrain.resolved(arch, finetune=False).train()
    model, meta = run_pretrain(arch, load_data(cfg), cfg, train, device=pick_device(), weights=weights, progress=False,
                               log=lambda line: print(line, flush=True))
    meta["seed"] = train.seed
    return {k: v.cpu() for k, v in model.state_dict().items()}, meta


def ensure_bases(storage: str | Path, arch: str, data: DataCfg, pretrains: Sequence[PretrainCfg], *,
                 weights: str | None = None, cpus: float = 1.0) -> list[Path]:
    """The cached bases, those not cached yet pretrained first (from `weights` where given), in parallel, as Ray
    tasks (needs a connected Ray)."""
    paths = [base_cache_path(storage, arch, data, p, weights) for p in pretrains]
    missing = [(p, path) for p, path in zip(pretrains, paths, strict=True) if not path.is_file()]
    if not missing:
        return paths
    import ray

    from trainables.checkpoint import Checkpoint
    from trainables.pipeline import accuracy_line

    for p, path in missing:
        print(f"pretraining the base {arch}{f' from {weights} weights' if weights else ''} on {data.dataset.value} "
              f"({p.resolved(arch, finetune=False).epochs} epochs, seed {p.seed}) as a Ray task; cached at {path}",
              flush=True)
    task = ray.remote(num_cpus=max(1.0, cpus), num_gpus=gpus_for_task())(pretrain_base)
    refs = [(path, task.remote(arch, data, p, weights)) for p, path in missing]  # the task sets the limits from `p`
    for path, ref in refs:
        state, meta = ray.get(ref)
        save_checkpoint(path, Checkpoint(meta, state).build(), meta)
        print(f"base model: {accuracy_line(meta)}", flush=True)
    return paths
