"""A study's objective, scored (no Ray): what every trial runs on its validation subset each epoch, and the
metric keys it reports (`objective`, `val_clean_acc`, `val_pgd_acc`, `val_paper_pgd_acc`, `val_robust_auc`,
`val_pgd_acc_eps<e>`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from trainables.config import AttackCfg, ObjectiveCfg
from trainables.data import Split, place
from trainables.evaluation import accuracies, robust_masks
from trainables.perf import Autocast, configure_backends, prepare_model
from trainables.vocab import Objective


def objective_attacks(objective: ObjectiveCfg) -> dict[str, AttackCfg]:
    """What a trial runs on its validation subset each epoch, in this order (the order fixes the random starts).
    A grid budget identical to the objective's attack is not run twice (`grid_key` maps it to "pgd")."""
    paper = objective.paper_pgd()
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
    acc = accuracies(masks)
    scores = {"val_clean_acc": acc["clean"], "val_pgd_acc": acc["pgd"],
              "val_paper_pgd_acc": acc["paper" if "paper" in masks else "pgd"]}
    grid = objective.grid()
    for a in grid:
        scores[f"val_pgd_acc_eps{a.eps:g}"] = acc[grid_key(objective, a)]
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


def objective_samples(model: nn.Module, split: Split, objective: ObjectiveCfg, *, device: torch.device,
                      seed: int = 0) -> list[float]:
    """Each image's share of the objective, scored exactly as a trial scores its epochs (same attacks, order and
    seed, so the mean is the trial's objective): the per-sample side of a paired comparison between models."""
    autocast = configure_backends(device)
    masks = objective_masks(prepare_model(model, device), place(split, device), objective, device=device, seed=seed,
                            autocast=autocast)
    return [float(v) for v in objective_per_sample(masks, objective).tolist()]
