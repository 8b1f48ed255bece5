"""AutoAttack's components (trainables/autoattack) against what can be computed exactly: on a linear classifier
the smallest L-inf perturbation that flips class y to t is known in closed form,

    opt = (z_y - z_t) / ||w_y - w_t||_1     (where the [0, 1] box does not bind),

so each attack must break exactly the samples with opt < eps, and FAB must return a perturbation of size opt.
(Their cross-check against torchattacks, example for example, is in docs/record/2026-12-06-attack-library.md.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.autoattack import apgd_ce, apgd_targeted, fab_targeted, square
from trainables.autoattack.apgd import dlr_targeted
from trainables.autoattack.square import p_schedule


def _linear(classes: int, seed: int = 0, n: int = 64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear classifier on 1x6x6 images in [0.35, 0.65] (the box never binds below eps 0.35), labelled with
    its own predictions, so every sample starts correctly classified."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, 36, generator=g))
        model[1].bias.zero_()
    model.eval().requires_grad_(False)
    x = 0.35 + 0.3 * torch.rand(n, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _opt(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    w = model[1].weight
    with torch.no_grad():
        z = model(x)
    u = torch.arange(len(y))
    return (z[u, y] - z[u, t]) / (w[y] - w[t]).abs().sum(1)


def _fooled(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def _eps_between(opt: torch.Tensor) -> float:
    """A budget half-way up the samples' distances, away from every one of them (so float rounding cannot
    decide a sample)."""
    s = opt.sort()[0]
    i = len(s) // 2
    return float(s[i - 1] + s[i]) / 2


def test_apgd_ce_breaks_exactly_the_samples_within_eps() -> None:
    model, x, y = _linear(2)
    opt = _opt(model, x, y, 1 - y)
    eps = _eps_between(opt)
    fooled = _fooled(model, x, apgd_ce(model, x, y, eps=eps, steps=20), y, eps)
    assert torch.equal(fooled, opt < eps) and 0 < int(fooled.sum()) < len(y)


def test_apgd_targeted_reaches_the_optimum_with_two_classes() -> None:
    """With two classes the DLR ratio is +-1 everywhere (no gradient); the margin stands in, and APGD-T still
    breaks exactly the samples within eps."""
    model, x, y = _linear(2, seed=1)
    opt = _opt(model, x, y, 1 - y)
    eps = _eps_between(opt)
    fooled = _fooled(model, x, apgd_targeted(model, x, y, eps=eps, steps=20, targets=1), y, eps)
    assert torch.equal(fooled, opt < eps)


def test_dlr_targeted_is_the_reference_ratio_and_scale_invariant() -> None:
    z = torch.tensor([[5.0, 3.0, 1.0, 0.0, -2.0]])
    y, t = torch.tensor([0]), torch.tensor([1])
    assert dlr_targeted(z, y, t).item() == pytest.approx(-(5 - 3) / (5 - 0.5 * 1 - 0.5 * 0))
    assert dlr_targeted(1e4 * z + 7, y, t).item() == pytest.approx(dlr_targeted(z, y, t).item(), rel=1e-4)
    assert dlr_targeted(z[:, :3], y, t).item() == pytest.approx(-(5 - 3) / (5 - 1))  # 3 classes: z_(3) for z_(4)


def test_apgd_targeted_on_many_classes_finds_the_nearest_wrong_class() -> None:
    """Ten classes: a sample can be broken only if some class t is within eps pairwise (a lower bound on the
    true distance); APGD-T over all 9 targets breaks at least what APGD-CE breaks, and nothing impossible."""
    model, x, y = _linear(10, seed=2)
    nearest = torch.stack([_opt(model, x, y, torch.full_like(y, t)) for t in range(10)], 1)
    nearest[torch.arange(len(y)), y] = float("inf")
    eps = _eps_between(nearest.min(1)[0])
    ce = _fooled(model, x, apgd_ce(model, x, y, eps=eps, steps=30), y, eps)
    dlr = _fooled(model, x, apgd_targeted(model, x, y, eps=eps, steps=30, targets=9), y, eps)
    assert not dlr[nearest.min(1)[0] > eps].any()
    assert int(dlr.sum()) >= int(ce.sum()) > 0


def test_fab_returns_the_minimal_perturbation() -> None:
    """FAB-T projects onto the linearised boundary, which for a linear model is the boundary: the perturbation
    it returns is opt, up to its overshoot eta = 1.05, and it breaks every sample with opt < eps."""
    model, x, y = _linear(2, seed=3)
    opt = _opt(model, x, y, 1 - y)
    eps = 0.3
    x_adv = fab_targeted(model, x, y, eps=eps, steps=30, targets=1)
    fooled = _fooled(model, x, x_adv, y, eps)
    size = (x_adv - x).flatten(1).abs().max(1)[0]
    assert torch.equal(fooled, opt < eps) or torch.equal(fooled, opt * 1.05 < eps)
    assert fooled.any()
    assert (size[fooled] >= opt[fooled] - 1e-5).all() and (size[fooled] <= 1.05 * opt[fooled] + 1e-5).all()
    assert torch.equal(fab_targeted(model, x, y, eps=eps, steps=30, targets=1), x_adv)  # no randomness


def test_square_finds_the_corner_without_gradients() -> None:
    """Random search on the margin, with no gradient at all: it breaks the samples with opt clearly below eps
    (the optimum is a corner of the ball, which its +-eps squares build) and nothing beyond eps."""
    model, x, y = _linear(2, seed=4)
    with torch.no_grad():  # the reference draws a window's offset in [0, h - s): at s = 1 it never reaches the
        model[1].weight.view(2, 6, 6)[:, 5, :] = 0  # last row or column, so let those pixels not matter
        model[1].weight.view(2, 6, 6)[:, :, 5] = 0
        y = model(x).argmax(1)
    opt = _opt(model, x, y, 1 - y)
    eps = _eps_between(opt)
    x_adv = square(model, x, y, eps=eps, queries=2000, seed=0)
    fooled = _fooled(model, x, x_adv, y, eps)
    assert fooled[opt < 0.8 * eps].all() and not fooled[opt > eps].any()
    assert torch.equal(square(model, x, y, eps=eps, queries=2000, seed=0), x_adv)  # the seed decides
    assert not torch.equal(square(model, x, y, eps=eps, queries=2000, seed=1), x_adv)


def test_square_p_schedule_is_the_reference_one() -> None:
    assert [p_schedule(q, 0.8) for q in (0, 10, 11, 50, 51, 200, 201, 8000, 8001, 20000)] == \
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 256, 0.8 / 512, 0.8 / 512]


def test_apgd_is_deterministic_per_seed_and_draws_from_no_global_rng() -> None:
    model, x, y = _linear(10, seed=5)
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    a = apgd_ce(model, x, y, eps=0.05, steps=10, seed=3)
    assert torch.equal(torch.rand(2), expected)
    assert torch.equal(apgd_ce(model, x, y, eps=0.05, steps=10, seed=3), a)
