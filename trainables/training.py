"""The one training loop, `fit` (no Ray): pretraining, the CLI's fine-tuning, study trials and the reproduction
all come through it. Device and autocast come in as arguments.

`fit` is both pretraining (no augmentation, the paper's "adaptive learning rate" = ReduceLROnPlateau on
validation loss) and fine-tuning at a fixed learning rate: on clean (+) patch-modified batches (the paper's
defense), on adversarial examples (trainables/methods.py), or both. Its randomness per epoch comes from
`epoch_generator(seed, epoch, stream)`, so an epoch replays exactly after a resume.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainables import perf
from trainables.augment import clean_plus_modified, make_generator
from trainables.config import AugCfg, Optimizer, TrainCfg
from trainables.data import Split, iterate_batches, place
from trainables.evaluation import evaluate_clean
from trainables.methods import Adversary, batch_loss
from trainables.perf import Autocast


class DivergedError(RuntimeError):
    """Training produced a non-finite loss (e.g. a learning rate far too large)."""


class Stream(enum.IntEnum):
    """Independent random streams of one training epoch."""

    BATCH_ORDER = 0  # the shuffle, drawn on the CPU so a seed gives the same order on every device
    AUGMENT = 1  # patch draws and adversarial-training random starts, on the training device


def epoch_generator(seed: int, epoch: int, stream: Stream, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of `stream` in `epoch` (0-based) of a run seeded `seed`.

    Derived from (seed, epoch, stream) alone, through numpy's SeedSequence (well-mixed, so nearby seeds and
    epochs give unrelated streams): an epoch replays exactly whether the run started at epoch 0 or resumed
    there, and `patchtune finetune` and a study trial with the same hyperparameters train the same weights.
    """
    state = np.random.SeedSequence([seed % 2**32, epoch, int(stream)]).generate_state(2, dtype=np.uint32)
    return make_generator(int(state[0]) << 32 | int(state[1]), device)


# ------------------------------------------------------------------------------------------- training


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainCfg, device: torch.device | None = None) -> torch.optim.Optimizer:
    """Optimizer by name; fused single-kernel steps on GPU where torch has them, foreach otherwise."""
    fast: dict[str, Any] = dict(perf.optimizer_kwargs(device or torch.device("cpu")))
    kw: dict[str, Any] = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay}
    if cfg.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(params, **kw, **fast)
    if cfg.optimizer is Optimizer.ADAMW:
        return torch.optim.AdamW(params, **kw, **fast)
    if cfg.optimizer is Optimizer.RMSPROP:  # torch has no fused RMSprop
        return torch.optim.RMSprop(params, momentum=0.0, foreach=True, **kw)
    return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.momentum > 0, **kw, **fast)


@dataclasses.dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float  # on the batches trained on (clean + modified when augmenting)
    val_loss: float
    val_acc: float
    lr: float
    seconds: float  # the whole epoch: training and the clean validation pass
    train_seconds: float  # training alone (ends with a host sync, so device time is counted on GPU too)


def train_one_epoch(
    model: nn.Module,
    data: Split,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    augment: AugCfg | None = None,
    aug_generator: torch.Generator | None = None,
    autocast: Autocast = nullcontext,
    progress: bool = False,
    desc: str = "train",
    adversarial: Adversary | None = None,
    step_model: nn.Module | None = None,
    drop_last: bool = False,
    run_steps: tuple[int, int] | None = None,
) -> tuple[float, float]:
    """One pass over `data`; returns (mean loss, accuracy). Raises DivergedError on a non-finite loss.

    `augment`: the paper's defense (clean (+) patch-modified batches). `adversarial`: adversarial training
    (trainables/methods.py) on the batch, patch-modified copies included when `augment` is set.
    `step_model`: what the training step calls (a compiled view of `model` sharing its parameters); the
    attacks always use `model`. `run_steps`: (steps taken before this epoch, steps in the whole run), which
    places each step in an adversary's eps warm-up (a function of the global step, so resuming repeats it).
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    batches = iterate_batches(data, batch_size, device, shuffle=True, generator=generator, drop_last=drop_last)
    total = math.ceil(len(data) / batch_size)
    done, run_total = run_steps or (0, total)
    for step, (x, y) in enumerate(tqdm(batches, total=total, desc=desc, unit="batch", leave=False, disable=not progress)):
        if augment is not None:
            assert aug_generator is not None
            x, y = clean_plus_modified(x, y, augment, aug_generator)
        adversary = adversarial.at((done + step + 1) / max(run_total, 1)) if adversarial is not None else None
        loss, logits, y = batch_loss(model, step_model or model, x, y, adversary, generator=aug_generator,
                                     autocast=autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        # Accumulate on device: no host sync per step. A NaN anywhere poisons the sum and is caught below.
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    mean_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise DivergedError(f"training loss became {mean_loss} (lr {optimizer.param_groups[0]['lr']:g})")
    return mean_loss, int(correct) / max(seen, 1)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainCfg,
    *,
    device: torch.device,
    augment: AugCfg | None = None,
    schedule: bool = False,
    autocast: Autocast = nullcontext,
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    start_epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    adversarial: Adversary | None = None,
) -> list[EpochStats]:
    """Train `model` for epochs `start_epoch` .. `cfg.epochs - 1` (resolved settings); `schedule` turns on
    ReduceLROnPlateau on validation loss.

    Randomness per epoch comes from `epoch_generator(cfg.seed, epoch, stream)`. `on_epoch` sees each epoch's
    stats after the epoch (a study trial scores, reports and checkpoints there); `optimizer` passes one whose
    state was restored from a checkpoint.
    """
    optimizer = optimizer or make_optimizer(model.parameters(), cfg, device)
    train, val = place(train, device), place(val, device)
    step_model = perf.maybe_compile(model, device)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
        if schedule and cfg.plateau_patience > 0
        else None
    )
    history: list[EpochStats] = []
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    epochs = range(start_epoch, cfg.num_epochs)
    bar = tqdm(epochs, desc="epochs", unit="ep", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, train, optimizer, step_model=step_model, batch_size=cfg.batch_size, device=device,
            generator=epoch_generator(cfg.seed, epoch, Stream.BATCH_ORDER),
            augment=augment, aug_generator=epoch_generator(cfg.seed, epoch, Stream.AUGMENT, device),
            autocast=autocast, progress=progress, desc=f"epoch {epoch + 1}", adversarial=adversarial,
            run_steps=(epoch * per_epoch, cfg.num_epochs * per_epoch),
        )
        train_seconds = time.perf_counter() - t0
        val_loss, val_acc = evaluate_clean(model, val, batch_size=max(cfg.batch_size, 256), device=device, autocast=autocast)
        if scheduler is not None:
            scheduler.step(val_loss)
        stats = EpochStats(epoch + 1, train_loss, train_acc, val_loss, val_acc, optimizer.param_groups[0]["lr"],
                           time.perf_counter() - t0, train_seconds)
        history.append(stats)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.4f}")
        if on_epoch is not None:
            on_epoch(stats)
    return history
