"""One cell of the reproduction grid for one seed, Ray-free: make the cell's model from the seed's base, score
every evaluation setting on the test split. `trainables.trainable.reproduce_trial` reports it to Tune; tests
call it directly.

A cell is `study.grid.Cell.recipe()`: `optimizer` (None: the base itself), `augment` (the paper's patch
fine-tuning), `long` (the long fine-tune), `adversarial` (the paper's FGSM/IFGSM/PGD-AT baselines, by attack
name) or `robust` (a robust fine-tuning method's `MethodCfg` fields).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import torch

from trainables.config import AttackCfg, AugCfg, MethodCfg, TrainCfg
from trainables.data import DatasetInfo, Split, place
from trainables.engine import accuracies, configure_backends, fit, robust_masks
from trainables.methods import Adversary, adversary_of, training_cost
from trainables.models import InputSpec, build_model
from trainables.perf import prepare_model
from trainables.variants import variant_masks
from trainables.vocab import encode_outcomes


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
    eps: float  # the paper's eps: the robust fine-tuning cells train at it
    cells: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method -> the grid's recipe
    eot_draws: int = 8
    long_epochs: int = 10  # the `*_long` cells: the paper fine-tuned for 20 GPU-minutes, far beyond 2 epochs
    at_from_scratch_epochs: int | None = None  # set: adversarial training starts from a fresh init, this long
    strong: AttackCfg | None = None  # a strong PGD (alpha * steps >= 2 eps, restarts) scored beside the paper's


def run_cell(seed: int, cell: Mapping[str, Any], setup: ReproSetup, device: torch.device) -> dict[str, Any]:
    """The cell's scores (`clean`, `ttt/clean`, `<setting>/<attack>`, `strong/pgd`), its training compute
    (`cost_*`), `train_s` / `eval_s`, and `per_image`: every key's outcomes on the test split, in order, as one
    JSON object of `encode_outcomes` strings (every seed scores the same images, so findings can pair per image
    as well as per seed)."""
    autocast = configure_backends(device)
    spec = InputSpec.of(setup.info)
    base = build_model(setup.arch, spec)
    base.load_state_dict(setup.bases[seed])
    model = prepare_model(copy.deepcopy(base), device)
    prepare_model(base, device)
    t0 = time.perf_counter()
    cost = training_cost(None, len(setup.train), augment=False, epochs=0, device_s=0.0)  # the base itself
    if cell["optimizer"] is not None:
        adversarial, augment = None, bool(cell["augment"])
        epochs = setup.long_epochs if cell["long"] else setup.epochs
        if cell["robust"] is not None:
            method = MethodCfg(**cell["robust"])
            adversarial, augment = adversary_of(method, setup.eps), bool(method.augment)
        elif cell["adversarial"] is not None:
            adversarial = Adversary(next(a for a in setup.attacks if a.name.value == cell["adversarial"]))
            if setup.at_from_scratch_epochs:
                torch.manual_seed(seed)
                model, epochs = prepare_model(build_model(setup.arch, spec), device), setup.at_from_scratch_epochs
        cfg = TrainCfg(optimizer=cell["optimizer"], lr=setup.lr, batch_size=setup.batch_size, epochs=epochs, seed=seed)
        history = fit(model, setup.train, setup.val, cfg, device=device, augment=setup.aug if augment else None,
                      adversarial=adversarial, autocast=autocast, progress=False)
        cost = training_cost(adversarial, len(setup.train), augment=augment, epochs=epochs,
                             device_s=sum(s.train_seconds for s in history))
    train_s = time.perf_counter() - t0
    exact = configure_backends(device, exact=True)  # the cell's scores are reported numbers: fp32, no TF32
    test = place(setup.test, device)
    masks = variant_masks(model, base, test, setup.attacks, aug=setup.aug,
                          pixel_std=sum(setup.info.std) / len(setup.info.std), device=device, seed=seed,
                          eot_draws=setup.eot_draws)
    if setup.strong is not None:
        strong = robust_masks(model, test, {"pgd": setup.strong}, device=device, seed=seed, autocast=exact)
        masks["strong/pgd"] = strong["pgd"].cpu()
    per_image = json.dumps({k: encode_outcomes(m.tolist()) for k, m in masks.items()})
    return {**accuracies(masks), **cost, "per_image": per_image, "train_s": train_s,
            "eval_s": time.perf_counter() - t0 - train_s}
