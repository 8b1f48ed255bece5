"""End-to-end steps shared by the CLI, the Ray trainables and the reproduction: pretrain, fine-tune, evaluate.

Each step takes validated configs and a device and returns a model plus its checkpoint metadata; nothing
here parses arguments or knows about Ray.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from trainables.audit import AuditCfg, run_audit
from trainables.config import (
    AttackCfg,
    AugCfg,
    DataCfg,
    Dataset,
    ObjectiveCfg,
    Optimizer,
    TrainCfg,
    as_jsonable,
    trial_cfgs,
)
from trainables.data import DataBundle, DatasetInfo, Split, place
from trainables.engine import (
    DivergedError,
    EpochStats,
    configure_backends,
    evaluate,
    evaluate_clean,
    fit,
    make_optimizer,
    objective_masks,
    objective_per_sample,
    pick_device,
    score_objective,
    seed_everything,
)
from trainables.methods import Adversary, adversary_of, training_cost
from trainables.models import InputSpec, build_model
from trainables.perf import prepare_model
from trainables.vocab import ARCHS, Arch, parse_enum

FINETUNE_EPOCHS = 2  # the paper fine-tunes for "a few epochs"


def input_spec(data: DataBundle) -> InputSpec:
    return InputSpec.of(data.info)


def data_meta(cfg: DataCfg) -> dict[str, Any]:
    """The part of a DataCfg that defines the splits (limits excluded: they are per-command choices)."""
    return {"val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed, "image_size": cfg.image_size}


def accuracy_line(meta: dict[str, Any]) -> str:
    """A trained model's accuracies, each with the number of images it was measured on."""
    return (f"val acc {meta['val_acc']:.4f} ({meta['val_size']} images), "
            f"test acc {meta['test_acc']:.4f} ({meta['test_size']} images)")


def pretrain(
    arch: str, data: DataBundle, data_cfg: DataCfg, cfg: TrainCfg, *, device: torch.device, progress: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `arch` from scratch on the training split with ReduceLROnPlateau on validation loss."""
    seed_everything(cfg.seed)
    model = prepare_model(build_model(arch, input_spec(data)), device)
    meta = {
        "kind": "pretrain",
        "arch": arch,
        "dataset": data.info.name.value,
        "image_size": data.info.height if data.info.name is Dataset.IMAGENETTE else None,
        "data": data_meta(data_cfg),
        **_train_and_score(model, data, cfg, device=device, progress=progress, schedule=True),
    }
    return model, meta


def finetune(
    base: nn.Module,
    base_meta: dict[str, Any],
    data: DataBundle,
    cfg: TrainCfg,
    aug: AugCfg | None,
    *,
    device: torch.device,
    progress: bool = True,
    adversary: Adversary | None = None,
    defense: str = "patch",
    from_scratch: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune `base` at a fixed learning rate: on clean (+) patch-modified images (`aug`, the paper's defense),
    on adversarial examples (`adversary`: FGSM-RS, PGD-AT, TRADES, or the paper's AT baselines), or on
    adversarial examples of clean (+) patch-modified images (both). `defense` names the method in the metadata.
    `from_scratch`: train a fresh initialisation (drawn from `cfg.seed`) of `base`'s architecture instead of its
    weights, as robust-training recipes that start from nothing do; `base` still names the model it is compared to.
    """
    if aug is not None:
        aug.check_fits(data.info.height, data.info.width)
    seed_everything(cfg.seed)
    if from_scratch:
        for module in base.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    model = prepare_model(base, device)
    meta = {
        **{k: base_meta[k] for k in ("arch", "dataset", "image_size", "data")},
        "kind": "finetune",
        "init": "scratch" if from_scratch else "base",
        "defense": defense,
        "augment": as_jsonable(aug) if aug is not None else None,
        "adversarial": adversary.describe() if adversary else None,
        "base": {k: base_meta.get(k) for k in ("kind", "train", "test_acc", "created")},
        **_train_and_score(model, data, cfg, device=device, progress=progress, augment=aug, adversarial=adversary),
    }
    return model, meta


def _train_and_score(model: nn.Module, data: DataBundle, cfg: TrainCfg, *, device: torch.device, progress: bool,
                     **fit_kwargs: Any) -> dict[str, Any]:
    """`fit` on the training split, then clean accuracy on the test split: what a checkpoint's metadata records
    about its training (the config, accuracies, the sizes of the splits they were measured on, the history)."""
    autocast = configure_backends(device)
    history = fit(model, data.train, data.val, cfg, device=device, autocast=autocast, progress=progress, **fit_kwargs)
    _, test_acc = evaluate_clean(model, data.test, batch_size=500, device=device, autocast=autocast)
    return {"train": as_jsonable(cfg), "val_acc": history[-1].val_acc, "test_acc": test_acc,
            "train_size": len(data.train), "val_size": len(data.val), "test_size": len(data.test),
            "history": [dataclasses.asdict(h) for h in history]}


@dataclasses.dataclass
class TrialSetup:
    """Everything a study trial needs besides its config; shared read-only through Ray's object store."""

    arch: str
    info: DatasetInfo
    train: Split
    val: Split  # the validation subset the objective is scored on
    base_state: dict[str, torch.Tensor]
    objective: ObjectiveCfg
    jitter: int = 0


TrialState = dict[str, Any]  # {"model": state_dict, "optimizer": state_dict, "epoch": epochs done}
Report = Callable[[dict[str, Any], TrialState | None], None]


def run_trial(config: Mapping[str, Any], setup: TrialSetup, *, report: Report, resume: TrialState | None = None,
              device: torch.device | None = None, where: Mapping[str, str] | None = None) -> None:
    """One study trial: fine-tune the base with the trial's method and hyperparameters through `fit`, scoring
    the objective on the validation subset after every epoch and passing (metrics, state to checkpoint) to
    `report`. `resume` continues from a checkpointed state. A diverged run reports its reason under `error`
    (with finite values everywhere, which the searcher needs) and stops.

    Every report carries the training compute so far: `cost_device_s` (seconds on the trial's device, training
    only: validation scoring excluded) and `cost_fwd_passes` / `cost_bwd_passes` (passes of one image through the
    model, attack steps included; trainables/methods.py), and the epoch's wall time split into `train_time_s` and
    `score_time_s` (validation scoring), which show where a trial's time goes.
    """
    train_cfg, aug, method = trial_cfgs(config, jitter=setup.jitter)
    adversary = adversary_of(method, setup.objective.eps)
    device = device or pick_device()
    autocast = configure_backends(device)
    model = build_model(setup.arch, InputSpec.of(setup.info))
    model.load_state_dict(setup.base_state)
    prepare_model(model, device)
    optimizer = make_optimizer(model.parameters(), train_cfg, device)
    start, device_s = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start, device_s = int(resume["epoch"]), float(resume.get("device_s", 0.0))
    val = place(setup.val, device)
    extra = {**dict(where or {}), "method": method.method.value}

    def on_epoch(stats: EpochStats) -> None:
        nonlocal device_s
        device_s += stats.train_seconds
        t0 = time.perf_counter()
        scores = score_objective(model, val, setup.objective, device=device, seed=train_cfg.seed, autocast=autocast)
        score_s = time.perf_counter() - t0
        metrics = {**scores, "train_loss": stats.train_loss, "epoch": stats.epoch,
                   "epoch_time_s": stats.seconds + score_s, "train_time_s": stats.train_seconds, "score_time_s": score_s,
                   **training_cost(adversary, len(setup.train), augment=aug is not None, epochs=stats.epoch,
                                   device_s=device_s), **extra, "error": ""}
        report(metrics, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": stats.epoch,
                         "device_s": device_s})

    try:
        fit(model, setup.train, val, train_cfg, device=device, augment=aug, adversarial=adversary, autocast=autocast,
            progress=False, on_epoch=on_epoch, start_epoch=start, optimizer=optimizer)
    except DivergedError as exc:
        report(failure_metrics(str(exc), start, extra), None)


def failure_metrics(reason: str, epoch: int, extra: Mapping[str, str]) -> dict[str, Any]:
    """Every key the searcher and scheduler read, with finite values: NaN would leave Optuna trials RUNNING."""
    return {"objective": 0.0, "val_clean_acc": 0.0, "val_pgd_acc": 0.0, "val_paper_pgd_acc": 0.0, "val_robust_auc": 0.0,
            "cost_fwd_passes": 0.0, "cost_bwd_passes": 0.0, "train_loss": float("inf"), "epoch": epoch + 1,
            "epoch_time_s": 0.0, "train_time_s": 0.0, "score_time_s": 0.0, **extra, "error": reason}


def evaluate_model(
    model: nn.Module,
    data: DataBundle,
    split: str,
    attacks: list[AttackCfg],
    *,
    device: torch.device,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    autocast = configure_backends(device, exact=True)
    return evaluate(prepare_model(model, device), data.split(split), attacks, device=device, batch_size=batch_size, seed=seed,
                    autocast=autocast, progress=progress)


def objective_samples(model: nn.Module, split: Split, objective: ObjectiveCfg, *, device: torch.device,
                      seed: int = 0) -> list[float]:
    """Each image's share of the objective, scored exactly as a trial scores its epochs (same attacks, order and
    seed, so the mean is the trial's objective): the per-sample side of a paired comparison between models."""
    autocast = configure_backends(device)
    masks = objective_masks(prepare_model(model, device), place(split, device), objective, device=device, seed=seed,
                            autocast=autocast)
    return [float(v) for v in objective_per_sample(masks, objective).tolist()]


def audit_model(
    model: nn.Module,
    data: DataBundle,
    split: str,
    cfgs: list[AuditCfg],
    *,
    device: torch.device,
    base: nn.Module | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """`run_audit` at each budget in `cfgs` (one report dict each), in fp32; `base` enables the transfer check."""
    autocast = configure_backends(device, exact=True)
    model = prepare_model(model, device).eval()
    base = prepare_model(base, device).eval() if base is not None else None
    return [run_audit(model, data.split(split), cfg, device=device, base=base, n_classes=data.info.num_classes,
                      autocast=autocast, progress=progress, log=log).as_dict() for cfg in cfgs]


def default_train_cfg(arch: str, *, finetune: bool, **overrides: Any) -> TrainCfg:
    """The paper's settings for `arch`, with explicit user choices (non-None overrides) on top."""
    paper = ARCHS[parse_enum(Arch, arch, "arch")]
    base: dict[str, Any] = {
        "optimizer": Optimizer.ADAM,
        "lr": paper.paper_lr,
        "epochs": FINETUNE_EPOCHS if finetune else paper.pretrain_epochs,
        "batch_size": 128,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainCfg(**base)

