"""The Ray Tune edge of the pure layer: one function trainable that fine-tunes a base model for one trial.

config (from Optuna) -> TrainCfg/AugCfg -> engine -> `tune.report(metrics, checkpoint=...)` each epoch.
Data and base weights arrive once per worker through `tune.with_parameters` (the object store), not
re-read per trial. A restarted trial resumes from `tune.get_checkpoint()`. A diverged trial reports its
reason under `error` (the searcher marks it FAIL in Optuna) and stops, instead of leaving NaN behind.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables.augment import make_generator
from trainables.config import AttackCfg, AugCfg, ObjectiveCfg, Optimizer, TrainCfg, trial_cfgs
from trainables.data import DatasetInfo, Split, place
from trainables.engine import (
    DivergedError,
    configure_backends,
    fit,
    make_optimizer,
    pick_device,
    robust_accuracy,
    score_objective,
    train_one_epoch,
)
from trainables.models import InputSpec, build_model
from trainables.perf import prepare_model
from trainables.variants import evaluate_variants


@dataclasses.dataclass
class TrialSetup:
    """Everything a trial needs besides its config; shared read-only through the object store."""

    arch: str
    info: DatasetInfo
    train: Split
    val: Split  # the validation subset the objective is scored on
    base_state: dict[str, torch.Tensor]
    objective: ObjectiveCfg
    jitter: int = 0


def finetune_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    train_cfg, aug = trial_cfgs(config, jitter=setup.jitter)
    device = pick_device()
    autocast = configure_backends(device)
    i = setup.info
    model = build_model(setup.arch, InputSpec(i.channels, i.height, i.width, i.num_classes, i.mean, i.std))
    model.load_state_dict(setup.base_state)
    prepare_model(model, device)
    optimizer = make_optimizer(model.parameters(), train_cfg, device)
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    train, val = place(setup.train, device), place(setup.val, device)  # device-resident when it fits
    for epoch in range(start, train_cfg.epochs):
        t0 = time.perf_counter()
        # Seeds per (trial seed, epoch): a resumed epoch replays the same batches and patches.
        seed = train_cfg.seed * 1000 + epoch
        try:
            loss, _ = train_one_epoch(model, train, optimizer, batch_size=train_cfg.batch_size, device=device,
                                      generator=torch.Generator().manual_seed(seed), augment=aug,
                                      aug_generator=make_generator(seed + 1, device), autocast=autocast)
        except DivergedError as exc:
            tune.report(_failure_metrics(str(exc), epoch, device))
            return
        scores = score_objective(model, val, setup.objective, device=device, seed=train_cfg.seed, autocast=autocast)
        metrics = {**scores, "train_loss": loss, "epoch": epoch + 1, "epoch_time_s": time.perf_counter() - t0,
                   **_where(device), "error": ""}
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                       Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _where(device: torch.device) -> dict[str, str]:
    import ray

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "device": f"{device} ({name})", "pid": str(os.getpid())}


def _failure_metrics(reason: str, epoch: int, device: torch.device) -> dict[str, Any]:
    """Every key the searcher and scheduler read, with finite values: NaN would leave Optuna trials RUNNING."""
    return {"objective": 0.0, "val_clean_acc": 0.0, "val_pgd_acc": 0.0, "val_robust_auc": 0.0,
            "train_loss": float("inf"), "epoch": epoch + 1, "epoch_time_s": 0.0, **_where(device), "error": reason}


# ------------------------------------------------------------------------------------------- reproduction

REPRO_METHODS = ("undefended", "patch_adam", "patch_rmsprop", "patch_adam_long", "patch_rmsprop_long",
                 "fgsm_at", "ifgsm_at", "pgd_at")


@dataclasses.dataclass
class ReproSetup:
    """Shared read-only inputs of the reproduction grid (one base model per seed)."""

    arch: str
    info: DatasetInfo
    train: Split
    val: Split  # monitored during fine-tuning only (fixed lr: no decisions are taken on it)
    test: Split
    bases: dict[int, dict[str, torch.Tensor]]
    lr: float  # the paper's fine-tuning lr for the arch
    epochs: int
    batch_size: int
    aug: AugCfg
    attacks: list[AttackCfg]  # FGSM, IFGSM, PGD-10 at the paper's parameters
    eot_draws: int = 8
    long_epochs: int = 10  # the `*_long` cells: the paper fine-tuned for 20 GPU-minutes, far beyond 2 epochs
    at_from_scratch_epochs: int | None = None  # set: adversarial training starts from a fresh init, this long
    strong: AttackCfg | None = None  # a strong PGD (alpha * steps >= 2 eps, restarts) scored beside the paper's


def reproduce_trial(config: dict[str, Any], setup: ReproSetup) -> None:
    """One (seed, method) cell of the paper's tables: fine-tune the seed's base, score every setting on test."""
    seed, method = int(config["seed"]), str(config["method"])
    device = pick_device()
    autocast = configure_backends(device)
    i = setup.info
    spec = InputSpec(i.channels, i.height, i.width, i.num_classes, i.mean, i.std)
    base = build_model(setup.arch, spec)
    base.load_state_dict(setup.bases[seed])
    model = prepare_model(copy.deepcopy(base), device)
    prepare_model(base, device)
    t0 = time.perf_counter()
    if method != "undefended":
        optimizer = Optimizer.RMSPROP if method.startswith("patch_rmsprop") else Optimizer.ADAM
        epochs = setup.long_epochs if method.endswith("_long") else setup.epochs
        if method.endswith("_at") and setup.at_from_scratch_epochs:
            torch.manual_seed(seed)
            model, epochs = prepare_model(build_model(setup.arch, spec), device), setup.at_from_scratch_epochs
        cfg = TrainCfg(optimizer=optimizer, lr=setup.lr, batch_size=setup.batch_size, epochs=epochs, seed=seed)
        adversarial = {a.name.value: a for a in setup.attacks}.get(method.removesuffix("_at")) if method.endswith("_at") else None
        fit(model, setup.train, setup.val, cfg, device=device,
            augment=setup.aug if method.startswith("patch") else None, adversarial=adversarial, autocast=autocast,
            progress=False)
    train_s = time.perf_counter() - t0
    test = place(setup.test, device)
    scores = evaluate_variants(model, base, test, setup.attacks, aug=setup.aug,
                               pixel_std=sum(i.std) / len(i.std), device=device, seed=seed, eot_draws=setup.eot_draws)
    if setup.strong is not None:
        strong = robust_accuracy(model, test, {"pgd": setup.strong}, device=device, seed=seed, autocast=autocast)
        scores["strong/pgd"] = strong["pgd"]
    tune.report({**scores, "train_s": train_s, "eval_s": time.perf_counter() - t0 - train_s, **_where(device)})
