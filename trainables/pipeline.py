"""End-to-end steps shared by the CLI, the study and the reproduction: pretrain, fine-tune, evaluate, audit.

Each step takes resolved settings and a device and returns a model plus its checkpoint metadata (or scores);
nothing here parses arguments or knows about Ray. The numbers a report quotes (`evaluate_model`, `audit_model`)
are computed in fp32 (`perf.configure_backends(exact=True)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from trainables.audit import run_audit
from trainables.checkpoint import input_meta
from trainables.config import AttackCfg, AuditCfg, AugCfg, DataCfg, MethodCfg, TrainCfg
from trainables.data import DataBundle, Split
from trainables.evaluation import Probe, by_label, evaluate_clean, robust_masks
from trainables.methods import adversary_of
from trainables.models import InputSpec, fresh_model, model_with_weights
from trainables.perf import configure_backends, prepare_model
from trainables.training import fit


def input_spec(data: DataBundle) -> InputSpec:
    return InputSpec.of(data.info)


def accuracy_line(meta: dict[str, Any]) -> str:
    """A trained model's accuracies, each with the number of images it was measured on."""
    return (f"val acc {meta['val_acc']:.4f} ({meta['val_size']} images), "
            f"test acc {meta['test_acc']:.4f} ({meta['test_size']} images)")


def pretrain(arch: str, data: DataBundle, data_cfg: DataCfg, cfg: TrainCfg, *, device: torch.device,
             weights: str | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train `arch` on the training split with ReduceLROnPlateau on validation loss: a fresh initialisation (from
    `cfg.seed`), or the library's pretrained `weights` (DEFAULT, a tag or a file) with a fresh head where their
    classes differ from the data set's."""
    torch.manual_seed(cfg.seed)
    model, loaded = model_with_weights(arch, input_spec(data), weights)
    line = loaded.head_line(arch, data.info.num_classes) if loaded is not None else None
    if line and log is not None:
        log(line)
    model = prepare_model(model, device)
    meta = {"arch": arch, "dataset": data.info.name.value, "image_size": data_cfg.resolved().image_size,
            "data": data_cfg.split_meta(), "input": input_meta(data.info, model), "kind": "pretrain",
            "weights": loaded.describe() if loaded is not None else None,
            **_train_and_score(model, data, cfg, device=device, progress=progress, schedule=True)}
    return model, meta


def finetune(base: nn.Module, base_meta: dict[str, Any], data: DataBundle, cfg: TrainCfg, method: MethodCfg,
             aug: AugCfg | None, *, default_eps: float, device: torch.device, progress: bool = True,
             from_scratch: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune `base` at a fixed learning rate with `method` (the paper's patch augmentation `aug`, adversarial
    examples at `method.train_eps`, default `default_eps`, or adversarial examples of patch-modified images).
    `from_scratch`: train a fresh initialisation (`models.fresh_model`, drawn from `cfg.seed`) of the base's
    architecture instead of its weights, as robust-training recipes that start from nothing do; `base` still
    names the model it is compared with."""
    method = method.resolved(default_eps)
    if aug is not None:
        aug = aug.resolved(data.info)
    adversary = adversary_of(method, default_eps)
    channels = getattr(base.get_submodule("0"), "channels", None)
    model = fresh_model(base_meta["arch"], input_spec(data), cfg.seed, channels=channels) if from_scratch else base
    torch.manual_seed(cfg.seed)
    model = prepare_model(model, device)
    meta = {
        "arch": base_meta["arch"], "dataset": data.info.name.value, "image_size": data.info.height
        if data.info.resizable else None, "data": base_meta.get("data"), "input": input_meta(data.info, model),
        "kind": "finetune",
        "init": "scratch" if from_scratch else "base",
        "method": method.describe(),
        "augment": aug.to_json() if aug is not None else None,
        "adversarial": adversary.describe() if adversary else None,
        "base": {k: base_meta.get(k) for k in ("kind", "train", "test_acc", "created", "source")},
        **_train_and_score(model, data, cfg, device=device, progress=progress, augment=aug, adversarial=adversary),
    }
    return model, meta


def _train_and_score(model: nn.Module, data: DataBundle, cfg: TrainCfg, *, device: torch.device, progress: bool,
                     **fit_kwargs: Any) -> dict[str, Any]:
    """`fit` on the training split, then clean accuracy on the test split: what a checkpoint's metadata records
    about its training (the settings, accuracies, the sizes of the splits they were measured on, the history)."""
    autocast = configure_backends(device)
    history = fit(model, data.train, data.val, cfg, device=device, autocast=autocast, progress=progress, **fit_kwargs)
    _, test_acc = evaluate_clean(model, data.test, batch_size=500, device=device, autocast=autocast)
    return {"train": cfg.to_json(), "val_acc": history[-1].val_acc, "test_acc": test_acc,
            "train_size": len(data.train), "val_size": len(data.val), "test_size": len(data.test),
            "history": [dataclasses.asdict(h) for h in history]}


def evaluate_model(model: nn.Module, split: Split, attacks: Sequence[AttackCfg] | dict[str, AttackCfg | Probe],
                   *, device: torch.device, batch_size: int | None = None, seed: int = 0,
                   generator: torch.Generator | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """The one evaluator of reported numbers: per-sample masks (`clean` and one per attack, keyed by its label or
    the given name) of `model` on `split`, in fp32. `patchtune eval`, a study's test-split scores and the
    reproduction's cells all come through here."""
    named = attacks if isinstance(attacks, dict) else by_label(attacks)
    return robust_masks(prepare_model(model, device), split, named, device=device, batch_size=batch_size, seed=seed,
                        generator=generator, autocast=configure_backends(device, exact=True), progress=progress)


def audit_model(model: nn.Module, data: DataBundle, cfg: AuditCfg, eps: Sequence[float], *, device: torch.device,
                base: nn.Module | None = None, checks: bool = True, progress: bool = True,
                log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """`run_audit` at each budget in `eps` on `cfg.split` (one report dict each), in fp32; `base` enables the
    transfer check; `checks=False` scores the attack rows and the worst case only (a base compared with)."""
    autocast = configure_backends(device, exact=True)
    model = prepare_model(model, device).eval()
    base = prepare_model(base, device).eval() if base is not None else None
    return [run_audit(model, data.split(cfg.split.value), cfg, e, device=device, base=base,
                      n_classes=data.info.num_classes, autocast=autocast, checks=checks, progress=progress,
                      log=log).as_dict() for e in eps]
