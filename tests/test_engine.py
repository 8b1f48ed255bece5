from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import spec_of
from trainables.config import AttackCfg, AugCfg, Optimizer, TrainCfg, paper_attacks
from trainables.engine import (
    DivergedError,
    accuracies,
    evaluate,
    fit,
    make_optimizer,
    objective_attacks,
    robust_masks,
    score_objective,
)
from trainables.models import build_model


@pytest.mark.parametrize("name", list(Optimizer))
def test_optimizers_by_name(name: Optimizer) -> None:
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(p, TrainCfg(optimizer=name, lr=0.1))
    expected = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD", "adamw": "AdamW"}[name.value]
    assert type(opt).__name__ == expected and opt.param_groups[0]["lr"] == 0.1


def test_fit_learns_and_schedule_reduces_lr(fmnist_small, device) -> None:
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(fmnist_small)).to(device)
    cfg = TrainCfg(epochs=3, lr=1e-3, batch_size=64, plateau_patience=1)
    hist = fit(model, fmnist_small.train.take(slice(0, 1500)), fmnist_small.val, cfg, device=device, schedule=True,
               progress=False)
    assert len(hist) == 3 and hist[-1].train_loss < hist[0].train_loss
    assert hist[-1].val_acc > 0.6


def test_finetune_with_augmentation_keeps_accuracy(trained_cnn3, fmnist_small, device) -> None:
    import copy

    model = copy.deepcopy(trained_cnn3)
    base = evaluate(model, fmnist_small.test, [], device=device)["clean"]
    fit(model, fmnist_small.train.take(slice(0, 2000)), fmnist_small.val, TrainCfg(epochs=1, lr=1e-3, batch_size=64),
        device=device, augment=AugCfg(patch_size=8), progress=False)
    after = evaluate(model, fmnist_small.test, [], device=device)["clean"]
    assert after > base - 0.05


def test_absurd_lr_diverges_loudly(fmnist_small, device) -> None:
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(fmnist_small)).to(device)
    with pytest.raises(DivergedError, match="non-finite|nan|inf"):
        fit(model, fmnist_small.train.take(slice(0, 640)), fmnist_small.val, TrainCfg(epochs=2, lr=10.0, optimizer="sgd",
            batch_size=64), device=device, progress=False)


def test_evaluate_robust_at_most_clean_and_reproducible(trained_cnn3, fmnist_small, device) -> None:
    attacks = paper_attacks(fmnist_small.info.name) + [AttackCfg(name="pgd", eps=0.03, alpha=0.01, steps=5)]
    test = fmnist_small.test.take(slice(0, 120))
    a = evaluate(trained_cnn3, test, attacks, device=device, batch_size=64, seed=1)
    b = evaluate(trained_cnn3, test, attacks, device=device, batch_size=100, seed=1)
    assert set(a) == {"clean", "fgsm", "ifgsm10", "pgd10", "pgd5"}
    assert all(0 <= v <= a["clean"] for v in a.values())
    assert a["clean"] > 0.7 and a["pgd10"] < a["clean"] - 0.3 and a["pgd5"] < a["clean"]
    assert a["clean"] == b["clean"] and a["fgsm"] == b["fgsm"] and a["ifgsm10"] == b["ifgsm10"]


@pytest.mark.parametrize("metric", ["pgd_acc", "robust_auc"])
def test_per_sample_objective_is_the_trials_objective_sample_by_sample(trained_cnn3, fmnist_small, device,
                                                                      metric: str) -> None:
    """The paired comparison with the base uses per-sample scores whose mean is exactly the trial's objective."""
    from trainables.config import ObjectiveCfg
    from trainables.pipeline import objective_samples

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


def _counting(model: nn.Module) -> tuple[nn.Module, list[int]]:
    """`model` behind a counter of the images each forward pass sees."""
    seen: list[int] = []

    class Counted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return self.inner(x)

    return Counted(), seen


def test_nested_eps_curve_attacks_only_survivors_and_is_never_weaker(trained_cnn3, fmnist_small, device) -> None:
    """The eps grid in one pass: samples broken at a smaller eps are not attacked again at a larger one. The
    curve is the worst case over the chain, so it is never above per-eps PGD beyond sampling noise, is
    non-increasing in eps, and costs fewer forward passes."""
    val = fmnist_small.val.take(slice(0, 150))
    attacks = {f"eps{e:g}": AttackCfg(name="pgd", eps=e, alpha=2.5 * e / 5, steps=5) for e in (0.1, 0.02, 0.05)}
    runs = {}
    for nested in ((), tuple(attacks)):
        counted, seen = _counting(trained_cnn3)
        runs[bool(nested)] = accuracies(robust_masks(counted, val, attacks, device=device, seed=2, nested=nested)), sum(seen)
    (fast, fast_passes), (slow, slow_passes) = runs[True], runs[False]
    assert fast["eps0.02"] >= fast["eps0.05"] >= fast["eps0.1"]
    for key in attacks:
        assert fast[key] <= slow[key] + 0.04, (key, fast, slow)  # 150 images: a few flips of random starts
    assert slow["eps0.05"] > 0 and fast_passes < slow_passes, (fast_passes, slow_passes)
    with pytest.raises(ValueError, match="eps9"):
        robust_masks(trained_cnn3, val, attacks, device=device, nested=("eps9",))
