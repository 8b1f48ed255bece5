"""APGD, L-inf (Croce & Hein 2020, arXiv:2003.01690, Algorithm 1): PGD whose step size starts at 2 eps and is
halved per sample at checkpoints where the loss oscillated or stopped improving, with momentum 0.75.

    x_{k+1} = P_S( x_k + eta_k sign(grad) ),  then  x_{k+1} = P_S( x_k + 0.75 (x_{k+1} - x_k) + 0.25 (x_k - x_{k-1}) )

S = {x' : ||x' - x||_inf <= eps, x' in [0, 1]^d}. Checkpoints come after 22 % of the iterations, then ever closer
(by 3 % of them, down to 6 %). APGD-CE ascends cross-entropy; APGD-T ascends the targeted DLR loss towards the
`t`-th most likely class, for t = 2 .. targets + 1, each run on the samples no earlier target broke.

A sample counts as broken if any iterate fooled the model; that iterate is returned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# loss(logits, y, y_target) -> float [B], ascended
_Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _ce(logits: torch.Tensor, y: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """Targeted difference-of-logits ratio: -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2), invariant to the logits'
    scale and shift (so a saturated softmax does not hide the gradient). With 3 classes z_(3) stands in for the
    missing z_(4); with 2 the ratio would be constant (+-1, no gradient), so the margin itself is ascended."""
    s = logits.sort(dim=1)[0]
    u = torch.arange(logits.shape[0], device=logits.device)
    c = s.shape[1]
    spread = s[:, -1] - 0.5 * s[:, -min(3, c)] - 0.5 * s[:, -min(4, c)] if c >= 3 else torch.ones_like(s[:, 0])
    return -(logits[u, y] - logits[u, y_target]) / (spread + 1e-12)


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor,
                   loss_fn: _Loss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y, y_target)
        grad = torch.autograd.grad(loss.sum(), [x])[0]
    return logits.detach(), loss.detach(), grad.detach()


def _single_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor, eps: float,
                steps: int, rho: float, loss_fn: _Loss, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from a random start. Returns (fooled [B] bool, x_adv): the fooling iterate where one fooled,
    else the random start."""
    n, view = x.shape[0], (-1, *([1] * (x.dim() - 1)))
    steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    t = 2 * torch.rand(x.shape, generator=gen).to(x.device) - 1
    x_adv = (x + eps * t / t.reshape(n, -1).abs().max(dim=1, keepdim=True)[0].reshape(view)).clamp(0.0, 1.0)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    loss_steps = torch.zeros(steps, n)  # on the host, as the reference keeps them

    logits, loss, grad = _loss_and_grad(model, x_adv, y, y_target, loss_fn)
    grad_best = grad.clone()
    robust = logits.argmax(1) == y
    loss_best = loss.clone()

    step_size = torch.full((n, *([1] * (x.dim() - 1))), 2.0 * eps, device=x.device)
    x_adv_old = x_adv.clone()
    k, counter = steps_2, 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones(n, dtype=torch.bool)
    lo, hi = x - eps, x + eps
    for i in range(steps):
        with torch.no_grad():
            momentum = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            z = torch.clamp(torch.min(torch.max(x_adv + step_size * torch.sign(grad), lo), hi), 0.0, 1.0)
            x_adv = torch.clamp(torch.min(torch.max(x_adv + (z - x_adv) * a + momentum * (1 - a), lo), hi), 0.0, 1.0)

        logits, loss, grad = _loss_and_grad(model, x_adv, y, y_target, loss_fn)
        pred = logits.argmax(1) == y
        robust = robust & pred
        x_best_adv[~pred] = x_adv[~pred]

        with torch.no_grad():
            loss_steps[i] = loss.cpu()
            better = loss > loss_best
            x_best[better] = x_adv[better]
            grad_best[better] = grad[better]
            loss_best[better] = loss[better]

            counter += 1
            if counter == k:
                # the fraction of steps since the last checkpoint that raised the loss (index -1 wraps to the
                # last, still-zero row at the first checkpoint, as in the reference)
                rises = sum((loss_steps[i - j] > loss_steps[i - j - 1]).to(torch.float64) for j in range(k))
                oscillated = rises <= k * rho
                stalled = ~reduced_last_check & (loss_best_last_check.cpu() >= loss_best.cpu())
                reduce = oscillated | stalled
                reduced_last_check = reduce.clone()
                loss_best_last_check = loss_best.clone()
                if reduce.any():
                    r = reduce.to(x.device)
                    step_size[r] /= 2.0
                    x_adv[r] = x_best[r]
                    grad[r] = grad_best[r]
                counter = 0
                k = max(k - size_decr, steps_min)
    return ~robust, x_best_adv


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, restarts: int, rho: float,
            seed: int, targets: int) -> torch.Tensor:
    """Runs on the samples still classified correctly, restart after restart (and target after target)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    adv = x.clone()
    for target in range(2, targets + 2) if targets else [0]:
        for _ in range(restarts):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                return adv
            xs, ys = x[idx], y[idx]
            loss_fn: _Loss
            if targets:
                with torch.no_grad():
                    y_target = model(xs).sort(dim=1)[1][:, -target]
                loss_fn = dlr_targeted
            else:
                y_target, loss_fn = ys, _ce
            fooled, x_adv = _single_run(model, xs, ys, y_target, eps, steps, rho, loss_fn, gen)
            robust[idx[fooled]] = False
            adv[idx[fooled]] = x_adv[fooled]
    return adv


def apgd_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 100, restarts: int = 1,
            rho: float = 0.75, seed: int = 0) -> torch.Tensor:
    """APGD on the cross-entropy loss. x float [B, C, H, W] in [0, 1], y int64 [B]; returns x_adv like x."""
    return _attack(model, x, y, eps, steps, restarts, rho, seed, targets=0)


def apgd_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 100,
                  restarts: int = 1, targets: int = 9, rho: float = 0.75, seed: int = 0) -> torch.Tensor:
    """APGD-T: APGD on the targeted DLR loss, towards each of the `targets` most likely wrong classes in turn."""
    if targets < 1:
        raise ValueError(f"targets must be >= 1, got {targets}")
    return _attack(model, x, y, eps, steps, restarts, rho, seed, targets=targets)
