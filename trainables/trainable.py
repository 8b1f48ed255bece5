"""The Ray Tune edge of the pure layer: one function trainable that fine-tunes a base model for one trial.

The trial itself is `trainables.pipeline.run_trial` (Ray-free, through the one training loop `engine.fit`);
this module only connects it to Tune: `tune.report(metrics, checkpoint=...)` each epoch, resuming from
`tune.get_checkpoint()`. Data and base weights arrive once per worker through `tune.with_parameters` (the
object store), not re-read per trial. A diverged trial reports its reason under `error` (the searcher marks
it FAIL in Optuna) and stops, instead of leaving NaN behind.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables.config import AttackCfg, AugCfg, MethodCfg, TrainCfg
from trainables.data import DatasetInfo, Split, place
from trainables.engine import configure_backends, fit, pick_device, robust_masks
from trainables.methods import Adversary, adversary_of, passes_per_image
from trainables.models import InputSpec, build_model
from trainables.perf import prepare_model
from trainables.pipeline import TrialSetup, TrialState, run_trial
from trainables.variants import variant_masks


def finetune_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """A study trial: `pipeline.run_trial`, reporting to Tune and resuming from Tune's last checkpoint."""
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    device = pick_device()

    def report(metrics: dict[str, Any], state: TrialState | None) -> None:
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(config, setup, report=report, resume=resume, device=device, where=_where(device))


def _where(device: torch.device) -> dict[str, str]:
    import ray

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "device": f"{device} ({name})", "pid": str(os.getpid())}


# ------------------------------------------------------------------------------------------- reproduction

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
    eps: float = 0.3  # the paper's eps: the robust fine-tuning cells train at it


def reproduce_trial(config: dict[str, Any], setup: ReproSetup) -> None:
    """One (seed, cell) of the paper's tables: make the cell's model from the seed's base (`config["cell"]`, a
    `study.grid.Cell.recipe()`), score every evaluation setting on the test split."""
    seed, cell = int(config["seed"]), config["cell"]
    device = pick_device()
    autocast = configure_backends(device)
    i = setup.info
    spec = InputSpec.of(i)
    base = build_model(setup.arch, spec)
    base.load_state_dict(setup.bases[seed])
    model = prepare_model(copy.deepcopy(base), device)
    prepare_model(base, device)
    t0 = time.perf_counter()
    adversarial, augment = None, bool(cell["augment"])
    if cell["optimizer"] is not None:
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
        passes, images = passes_per_image(adversarial), len(setup.train) * epochs * (2 if augment else 1)
        cost = {"cost_device_s": sum(s.train_seconds for s in history), "cost_fwd_passes": images * passes.forward,
                "cost_bwd_passes": images * passes.backward}
    else:
        cost = {"cost_device_s": 0.0, "cost_fwd_passes": 0, "cost_bwd_passes": 0}
    train_s = time.perf_counter() - t0
    test = place(setup.test, device)
    masks = variant_masks(model, base, test, setup.attacks, aug=setup.aug,
                          pixel_std=sum(i.std) / len(i.std), device=device, seed=seed, eot_draws=setup.eot_draws)
    if setup.strong is not None:
        strong = robust_masks(model, test, {"pgd": setup.strong}, device=device, seed=seed, autocast=autocast)
        masks["strong/pgd"] = strong["pgd"].cpu()
    n = max(len(setup.test), 1)
    scores = {k: int(m.sum()) / n for k, m in masks.items()}
    # Every seed scores the same test images, so findings can pair per image as well as per seed
    # (analysis.stats.seeds_x_images): one "0101..." string per key, in test-split order, as one JSON metric.
    per_image = json.dumps({k: "".join("1" if v else "0" for v in m.tolist()) for k, m in masks.items()})
    tune.report({**scores, **cost, "per_image": per_image, "train_s": train_s,
                 "eval_s": time.perf_counter() - t0 - train_s, **_where(device)})
