"""Training and evaluation loops (no Ray): device and autocast come in as arguments.

`fit` is both pretraining (no augmentation, the paper's "adaptive learning rate" = ReduceLROnPlateau on
validation loss) and the paper's fine-tuning (clean (+) patch-modified batches at a fixed learning rate).
`evaluate` returns clean and robust accuracy; attacks only run on the samples the model gets right, so a
sample counts as robust only if it is correct on the clean image and on every attack iterate.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trainables import perf
from trainables.attacks import Autocast, eval_mode, run_attack
from trainables.augment import clean_plus_modified, make_generator
from trainables.config import AttackCfg, AttackName, AugCfg, ObjectiveCfg, Optimizer, TrainCfg
from trainables.data import Split, iterate_batches, place
from trainables.graphs import graphed
from trainables.methods import Adversary, batch_loss
from trainables.vocab import PAPER_ALPHA, PAPER_STEPS, Objective


class DivergedError(RuntimeError):
    """Training produced a non-finite loss (e.g. a learning rate far too large)."""


# ------------------------------------------------------------------------------------------- device set-up


def pick_device(name: str | None = None) -> torch.device:
    """`auto`/None -> the first CUDA device when present, else CPU. `$TORCH_DEVICE` overrides `auto`."""
    import os

    name = name or os.environ.get("TORCH_DEVICE") or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def configure_backends(device: torch.device, *, exact: bool = False) -> Autocast:
    """All global speed switches (see `trainables.perf`); returns the autocast factory for `device`.

    `exact`: fp32 throughout (no bf16 autocast, no TF32), for the numbers a report quotes (the test split, the
    audit). bf16 input gradients move attacks' per-sample outcomes: PGD-100 at eps 0.3 on 1000 F-MNIST test
    images of an eps-0.3 PGD-AT cnn3, with CPU bf16 autocast, left 19 samples robust that fp32 broke and broke 7
    that fp32 left (66.4 vs 65.2 %; 8 and 13 on another). A search can afford that noise; a final number need
    not carry it."""
    cfg = perf.PerfCfg.from_env()
    if exact:
        cfg = dataclasses.replace(cfg, bf16=False, tf32=False)
    return perf.configure(device, cfg)


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


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)


# ------------------------------------------------------------------------------------------- training


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainCfg, device: torch.device | None = None) -> torch.optim.Optimizer:
    """Optimizer by name; fused single-kernel steps on GPU where torch has them, foreach otherwise."""
    fast: dict[str, Any] = dict(perf.optimizer_kwargs(device or torch.device("cpu")))
    kw: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
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


@torch.no_grad()
def evaluate_clean(
    model: nn.Module, data: Split, *, batch_size: int, device: torch.device, autocast: Autocast = nullcontext
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on `data`, in eval mode."""
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    data = place(data, device)
    with eval_mode(model):
        for x, y in iterate_batches(data, batch_size, device):
            with autocast():
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = max(len(data), 1)
    return float(loss_sum) / n, int(correct) / n


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
    """Train `model` for epochs `start_epoch` .. `cfg.epochs - 1`; `schedule` turns on ReduceLROnPlateau on
    validation loss. The one training loop: pretraining, the CLI's fine-tuning, study trials and the
    reproduction all come through here.

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
    epochs = range(start_epoch, cfg.epochs)
    bar = tqdm(epochs, desc="epochs", unit="ep", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, train, optimizer, step_model=step_model, batch_size=cfg.batch_size, device=device,
            generator=epoch_generator(cfg.seed, epoch, Stream.BATCH_ORDER),
            augment=augment, aug_generator=epoch_generator(cfg.seed, epoch, Stream.AUGMENT, device),
            autocast=autocast, progress=progress, desc=f"epoch {epoch + 1}", adversarial=adversarial,
            run_steps=(epoch * per_epoch, cfg.epochs * per_epoch),
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


# ------------------------------------------------------------------------------------------- evaluation


def robust_masks(
    model: nn.Module,
    data: Split,
    attacks: dict[str, AttackCfg],
    *,
    device: torch.device,
    batch_size: int | None = None,
    seed: int = 0,
    autocast: Autocast = nullcontext,
    progress: bool = False,
    nested: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """Per sample (bool [N], on the CPU): `clean` correct, and robust under each named attack.

    Attacks run only on the clean-correct samples: a sample is robust iff it is correct on the clean image
    and no counted iterate fools the model, so robust <= clean sample by sample. `batch_size` defaults to
    `perf.eval_batch` (500 on CPU, thousands on GPU). With CUDA graphs on, full batches are attacked whole by
    a replayed graph (trainables/graphs.py) and the result ANDed with clean correctness.

    `nested`: keys of L-inf attacks that form one accuracy-vs-eps curve. They run in ascending eps, and a
    sample broken at a smaller eps counts as broken at every larger one without being attacked again (its
    adversarial example lies in every larger ball): only the survivors are attacked. Each such mask is then
    the worst case over its own attack and every smaller-eps one, never weaker than the attack alone.
    """
    generator = make_generator(seed, device)
    graphs = perf.use_graphs(device)
    data = place(data, device)
    batch_size = batch_size or perf.eval_batch(device, math.prod(data.x.shape[1:]))
    unknown = set(nested) - set(attacks)
    if unknown:
        raise ValueError(f"nested keys {sorted(unknown)} are not among the attacks {list(attacks)}")
    # The chain first, smallest eps first; the order also fixes which random starts each attack draws.
    order = sorted((k for k in attacks if k in nested), key=lambda k: attacks[k].eps)
    order += [k for k in attacks if k not in nested]
    masks: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", *attacks)}
    with eval_mode(model):
        total = math.ceil(len(data) / batch_size)
        for x, y in tqdm(iterate_batches(data, batch_size, device), total=total, desc="eval", unit="batch",
                         leave=False, disable=not progress):
            with torch.no_grad(), autocast():
                ok = model(x).argmax(1) == y
            masks["clean"].append(ok)
            broken = ~ok  # along the chain: clean-wrong, or broken at a smaller eps
            for key in order:
                attack, chained = attacks[key], key in nested
                alive = ok & ~broken if chained else ok
                if graphs and x.shape[0] == batch_size:
                    robust = alive & ~graphed(model, attack, x, autocast)(x, y, generator)
                else:
                    robust = torch.zeros_like(ok)
                    rows = alive.nonzero().squeeze(1)
                    if rows.numel():
                        robust[rows] = ~run_attack(model, x[rows], y[rows], attack, generator=generator,
                                                   autocast=autocast).fooled
                if chained:
                    broken |= alive & ~robust
                masks[key].append(robust)
    empty = torch.zeros(0, dtype=torch.bool)
    return {k: torch.cat(v).cpu() if v else empty for k, v in masks.items()}  # one sync, at the end


def robust_accuracy(
    model: nn.Module,
    data: Split,
    attacks: dict[str, AttackCfg],
    *,
    device: torch.device,
    batch_size: int | None = None,
    seed: int = 0,
    autocast: Autocast = nullcontext,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy in [0, 1] under each named attack, plus `clean` (the means of `robust_masks`)."""
    return accuracies(robust_masks(model, data, attacks, device=device, batch_size=batch_size, seed=seed,
                                   autocast=autocast, progress=progress))


def accuracies(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per key, the fraction of samples whose mask is True (0.0 on an empty split)."""
    return {k: int(m.sum()) / max(m.numel(), 1) for k, m in masks.items()}


def evaluate(
    model: nn.Module,
    data: Split,
    attacks: Sequence[AttackCfg],
    *,
    device: torch.device,
    batch_size: int | None = None,
    seed: int = 0,
    autocast: Autocast = nullcontext,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy in [0, 1] per attack label (`pgd10`, `fgsm`, ...); `clean` always included."""
    named = {a.label: a for a in attacks if a.name is not AttackName.CLEAN}
    return robust_accuracy(model, data, named, device=device, batch_size=batch_size, seed=seed, autocast=autocast,
                           progress=progress)


def objective_attacks(objective: ObjectiveCfg) -> dict[str, AttackCfg]:
    """What a trial runs on its validation subset each epoch, in this order (the order fixes the random starts).
    A grid budget identical to the objective's attack is not run twice (`grid_key` maps it to "pgd")."""
    paper = AttackCfg(name=AttackName.PGD, eps=objective.eps, alpha=PAPER_ALPHA, steps=PAPER_STEPS)
    attacks = {"pgd": objective.pgd(), **{grid_key(objective, a): a for a in objective.grid()}}
    if paper != objective.pgd():
        attacks["paper"] = paper
    return attacks


def objective_curve(objective: ObjectiveCfg) -> list[str]:
    """The keys of `objective_attacks` that form the accuracy-vs-eps curve (scored in one nested pass): the
    objective's PGD and the grid. The paper's PGD is not among them: it is reported as the paper ran it."""
    return ["pgd", *(grid_key(objective, a) for a in objective.grid() if grid_key(objective, a) != "pgd")]


def grid_key(objective: ObjectiveCfg, attack: AttackCfg) -> str:
    # A grid attack at the objective's eps but another alpha is a different attack: both run, under distinct keys.
    return "pgd" if attack == objective.pgd() else f"eps{attack.eps:g}"


def objective_per_sample(masks: dict[str, torch.Tensor], objective: ObjectiveCfg) -> torch.Tensor:
    """Each sample's share of the objective (float [N]; its mean is the objective): robust or not under the
    objective's PGD (pgd_acc), or the fraction of the eps grid it survives (robust_auc)."""
    if objective.metric is Objective.ROBUST_AUC:
        return torch.stack([masks[grid_key(objective, a)] for a in objective.grid()]).float().mean(0)
    return masks["pgd"].float()


def scores_from_masks(masks: dict[str, torch.Tensor], objective: ObjectiveCfg) -> dict[str, float]:
    def acc(key: str) -> float:
        return int(masks[key].sum()) / max(masks[key].numel(), 1)

    scores = {"val_clean_acc": acc("clean"), "val_pgd_acc": acc("pgd"),
              "val_paper_pgd_acc": acc("paper" if "paper" in masks else "pgd")}
    grid = objective.grid()
    for a in grid:
        scores[f"val_pgd_acc_eps{a.eps:g}"] = acc(grid_key(objective, a))
    scores["val_robust_auc"] = sum(scores[f"val_pgd_acc_eps{a.eps:g}"] for a in grid) / len(grid)
    scores["objective"] = scores["val_robust_auc"] if objective.metric is Objective.ROBUST_AUC else scores["val_pgd_acc"]
    return scores


def score_objective(
    model: nn.Module,
    data: Split,
    objective: ObjectiveCfg,
    *,
    device: torch.device,
    batch_size: int | None = None,
    seed: int = 0,
    autocast: Autocast = nullcontext,
) -> dict[str, float]:
    """Per-epoch validation scores: clean accuracy, PGD accuracy at the objective's eps, and robust AUC.

    Keys: val_clean_acc, val_pgd_acc (the objective's PGD), val_paper_pgd_acc (the paper's PGD-10 at the same eps,
    alpha 0.01: reported beside it, never optimised), val_robust_auc, val_pgd_acc_eps<e> for each grid eps, and
    `objective` (the one Optuna and the scheduler maximise).
    """
    masks = objective_masks(model, data, objective, device=device, batch_size=batch_size, seed=seed, autocast=autocast)
    return scores_from_masks(masks, objective)


def objective_masks(model: nn.Module, data: Split, objective: ObjectiveCfg, *, device: torch.device,
                    batch_size: int | None = None, seed: int = 0, autocast: Autocast = nullcontext) -> dict[str, torch.Tensor]:
    """`robust_masks` under `objective_attacks`, the eps curve in one nested pass: what every trial epoch runs."""
    return robust_masks(model, data, objective_attacks(objective), device=device, batch_size=batch_size, seed=seed,
                        autocast=autocast, nested=objective_curve(objective))
