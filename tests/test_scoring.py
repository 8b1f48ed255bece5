"""A study's objective (trainables/scoring.py): the attacks a trial runs each epoch and the per-sample scores the
comparison with the base pairs."""

from __future__ import annotations

import pytest
import torch

from trainables.config import AttackCfg, ObjectiveCfg
from trainables.evaluation import robust_masks
from trainables.scoring import objective_attacks, objective_samples, score_objective


@pytest.mark.parametrize("metric", ["pgd_acc", "robust_auc"])
def test_per_sample_objective_is_the_trials_objective_sample_by_sample(trained_cnn3, fmnist_small, device,
                                                                      metric: str) -> None:
    """The paired comparison with the base uses per-sample scores whose mean is exactly the trial's objective."""
    val = fmnist_small.val.take(slice(0, 64))
    objective = ObjectiveCfg(metric=metric, eps=0.1, alpha=0.05, steps=5, eps_grid=(0.02, 0.1))
    assert list(objective_attacks(objective)) == ["pgd", "eps0.02", "paper"]  # the grid's eps 0.1 is the objective's
    per_sample = objective_samples(trained_cnn3, val, objective, device=device, seed=3)
    scores = score_objective(trained_cnn3, val, objective, device=device, seed=3)
    assert len(per_sample) == 64 and sum(per_sample) / 64 == pytest.approx(scores["objective"], abs=1e-12)
    assert 0 < scores["objective"] < scores["val_clean_acc"]
    assert scores["val_pgd_acc_eps0.1"] == scores["val_pgd_acc"]
    masks = robust_masks(trained_cnn3, val, {"weak": AttackCfg(name="pgd", eps=0.02, alpha=0.01, steps=2)}, device=device)
    assert masks["clean"].dtype == torch.bool and masks["clean"].shape == (64,)
    assert not (masks["weak"] & ~masks["clean"]).any(), "robust only where clean-correct"
