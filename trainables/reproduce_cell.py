"""One cell of the reproduction grid for one seed, Ray-free: make the cell's model from the seed's base, score
every evaluation setting on the test split. `trainables.trainable.reproduce_trial` reports it to Tune; tests
call it directly."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from typing import Any

import torch

from trainables.cells import Cell
from trainables.config import AttackCfg, AugCfg, TrainCfg
from trainables.data import DatasetInfo, Split, place
from trainables.evaluation import accuracies
from trainables.methods import adversary_of, training_cost
from trainables.models import InputSpec, build_model, fresh_model
from trainables.perf import configure_backends, prepare_model
from trainables.pipeline import evaluate_model
from trainables.training import fit
from trainables.variants import variant_probes
from trainables.vocab import METHODS, encode_outcomes


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
    aug: AugCfg  # resolved
    attacks: list[AttackCfg]  # FGSM, IFGSM, PGD-10 at the paper's parameters
    eps: float  # the paper's eps: the fine-tuning methods train at it
    strong: AttackCfg  # a strong PGD (alpha * steps >= 2 eps, restarts) scored beside the paper's attacks
    cells: dict[str, Cell] = dataclasses.field(default_factory=dict)  # by key
    eot_draws: int = 8
    long_epochs: int = 10  # the `*_long` cells: the paper fine-tuned for 20 GPU-minutes, far beyond 2 epochs
    at_from_scratch_epochs: int | None = None  # set: the paper's baselines train from a fresh init, this long


def run_cell(seed: int, cell: Cell, setup: ReproSetup, device: torch.device) -> dict[str, Any]:
    """The cell's scores (`clean`, `ttt/clean`, `<setting>/<attack>`, `strong/pgd`), its training compute
    (`cost_*`), `train_s` / `eval_s`, and `per_image`: every key's outcomes on the test split, in order, as one
    JSON object of `encode_outcomes` strings (every seed scores the same images, so findings can pair per image
    as well as per seed)."""
    spec = InputSpec.of(setup.info)
    base = build_model(setup.arch, spec)
    base.load_state_dict(setup.bases[seed])
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    cost = training_cost(None, len(setup.train), augment=False, epochs=0, device_s=0.0)  # the base itself
    if cell.method is not None:
        assert cell.optimizer is not None
        method = cell.method.resolved(setup.eps)
        adversary = adversary_of(method, setup.eps)
        epochs = setup.long_epochs if cell.long else setup.epochs
        if METHODS[method.method].paper_baseline and setup.at_from_scratch_epochs:
            model, epochs = fresh_model(setup.arch, spec, seed), setup.at_from_scratch_epochs
        cfg = TrainCfg(optimizer=cell.optimizer, lr=setup.lr, batch_size=setup.batch_size, epochs=epochs, seed=seed)
        prepare_model(model, device)
        history = fit(model, setup.train, setup.val, cfg, device=device,
                      augment=setup.aug if method.augmented else None, adversarial=adversary,
                      autocast=configure_backends(device), progress=False)
        cost = training_cost(adversary, len(setup.train), augment=method.augmented, epochs=epochs,
                             device_s=sum(s.train_seconds for s in history))
    train_s = time.perf_counter() - t0
    model, base = prepare_model(model, device), prepare_model(base, device)
    probes, generator = variant_probes(model, base, setup.attacks, aug=setup.aug,
                                       pixel_std=sum(setup.info.std) / len(setup.info.std), device=device, seed=seed,
                                       eot_draws=setup.eot_draws)
    masks = evaluate_model(model, place(setup.test, device), {**probes, "strong/pgd": setup.strong}, device=device,
                           batch_size=250, generator=generator)
    per_image = json.dumps({k: encode_outcomes(m.tolist()) for k, m in masks.items()})
    return {**accuracies(masks), **cost, "per_image": per_image, "train_s": train_s,
            "eval_s": time.perf_counter() - t0 - train_s}
