"""One study trial, Ray-free: fine-tune the base with the trial's method and hyperparameters through the one
training loop, scoring the objective on the validation subset after every epoch. `trainables.trainable` connects
it to Ray Tune; the tests and benchmarks call it directly."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from trainables.config import ObjectiveCfg, trial_cfgs
from trainables.data import DatasetInfo, Split, place
from trainables.methods import adversary_of, training_cost
from trainables.models import InputSpec, build_model
from trainables.perf import configure_backends, pick_device, prepare_model
from trainables.scoring import score_objective
from trainables.training import DivergedError, EpochStats, fit, make_optimizer


@dataclasses.dataclass
class TrialSetup:
    """Everything a study trial needs besides its config; shared read-only through Ray's object store."""

    arch: str
    info: DatasetInfo
    train: Split
    val: Split  # the validation subset the objective is scored on
    base_state: dict[str, torch.Tensor]
    objective: ObjectiveCfg  # resolved
    jitter: int = 0
    channels: int | None = None  # the network's input channels, where they differ from the images' (the base's)


TrialState = dict[str, Any]  # {"model": state_dict, "optimizer": state_dict, "epoch": epochs done}
ReportFn = Callable[[dict[str, Any], TrialState | None], None]


def run_trial(config: Mapping[str, Any], setup: TrialSetup, *, report: ReportFn, resume: TrialState | None = None,
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
    adversary = adversary_of(method, setup.objective.pgd().eps)
    device = device or pick_device()
    autocast = configure_backends(device)
    model = build_model(setup.arch, InputSpec.of(setup.info), channels=setup.channels)
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

    done = start  # epochs finished: a divergence is reported as the epoch after them

    def on_epoch(stats: EpochStats) -> None:
        nonlocal device_s, done
        device_s += stats.train_seconds
        done = stats.epoch
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
        report(failure_metrics(str(exc), done, extra), None)


def failure_metrics(reason: str, epoch: int, extra: Mapping[str, str]) -> dict[str, Any]:
    """Every key the searcher and scheduler read, with finite values: NaN would leave Optuna trials RUNNING."""
    return {"objective": 0.0, "val_clean_acc": 0.0, "val_pgd_acc": 0.0, "val_paper_pgd_acc": 0.0, "val_robust_auc": 0.0,
            "cost_fwd_passes": 0.0, "cost_bwd_passes": 0.0, "train_loss": float("inf"), "epoch": epoch + 1,
            "epoch_time_s": 0.0, "train_time_s": 0.0, "score_time_s": 0.0, **extra, "error": reason}
