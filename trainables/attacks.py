"""White-box L-inf attacks in pixel space: FGSM, IFGSM (BIM) and PGD share one loop, `pgd()`.

Threat model: S = {delta : ||delta||_inf <= eps, x + delta in [0, 1]^d}. One step is

    x_{t+1} = clip_[0,1]( x + clip_[-eps,eps]( x_t + alpha * sign(grad_x L(f(x_t), y)) - x ) )

    FGSM   one step, alpha = eps, from x                    (Goodfellow et al. 2015, arXiv:1412.6572)
    IFGSM  `steps` steps of alpha from x                    (Kurakin et al. 2017, arXiv:1607.02533)
    PGD    `steps` steps of alpha from x + U(-eps, eps)     (Madry et al. 2018, arXiv:1706.06083)

Robust accuracy counts a sample as broken if *any* iterate fools the model (worst case over iterates). That
is never weaker than the last iterate, and it lets the loop stop spending compute on a sample as soon as the
forward pass it needs for its gradient shows it misclassified. `last_iterate=True` gives the classic number
and exactly the iterates of the textbook loop (IFGSM: those of the adversarial-robustness-toolbox's BIM).

`on_step` lets a caller watch the loop (the audit's loss trace): it gets the per-sample cross-entropy of every
iterate the loop evaluates, from the start (step 0) to the one after the last step (step `steps`).

Contract: `x` float [B, C, H, W] in [0, 1], `y` int64 [B], both on the model's device. The model runs in eval
mode during the attack and gets its previous mode back; gradients are taken w.r.t. the input only
(`torch.autograd.grad`), so parameters' `.grad` is untouched. Returned `x_adv` has x's shape/dtype/device,
stays in [0, 1] and within eps of x.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from trainables import perf
from trainables.config import AttackCfg, AttackName
from trainables.perf import Autocast

__all__ = ["AttackOutput", "AttackPlan", "Autocast", "LossFn", "StepHook", "eval_mode", "pgd", "project", "random_start", "run_attack", "attack_plan"]

# loss_fn(logits, idx) -> float [B']: the per-sample loss the attack ascends, for the B' samples still attacked
# (`idx` their rows in the batch); cross-entropy with the labels when None. TRADES ascends a KL divergence.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# on_step(step, loss, idx): `loss` float [B'] is the cross-entropy of iterate `step` (0 = the start) for the B'
# samples still attacked, `idx` int64 [B'] their rows in the attacked batch. Both are detached device tensors:
# reading them on the host is the caller's sync, not the loop's.
StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode and restore every submodule's previous train/eval flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the threat set: clip the perturbation to [-eps, eps], then the image to [0, 1]."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """x + U(-eps, eps) noise, clipped to [0, 1] (Madry et al.'s random start)."""
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    return (x + noise).clamp(0.0, 1.0)


@dataclasses.dataclass
class AttackOutput:
    x_adv: torch.Tensor  # the fooling iterate for broken samples, the final iterate for the others
    fooled: torch.Tensor  # bool [B]: some counted iterate is misclassified


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_init: bool = True,
    last_iterate: bool = False,
    generator: torch.Generator | None = None,
    autocast: Autocast = nullcontext,
    compact_every: int | None = None,
    on_step: StepHook | None = None,
    loss_fn: LossFn | None = None,
    start: torch.Tensor | None = None,
) -> AttackOutput:
    """L-inf PGD with per-sample early stopping; FGSM and IFGSM are special cases (see `run_attack`).

    Args:
        eps: budget in [0, 1] pixel units (e.g. 0.3 for F-MNIST, 8/255 for CIFAR-10).
        alpha: step size per iteration, pixel units.
        steps: gradient steps; the loop makes steps + 1 forward and steps input-backward passes at most.
        random_init: start from x + U(-eps, eps) (PGD) or from x (FGSM, IFGSM).
        last_iterate: count only the final iterate and attack every sample for all steps.
        generator: source of the random start (on x's device), for reproducible evaluations.
        compact_every: drop fooled samples from the batch after steps 1 and 2 and then every this many steps
            (default: 1 on CPU, 4 on GPU; the result is the same, only host syncs and wasted steps trade off).
            0: never; every sample steps to the end and the loop makes no host sync, so a CUDA graph can
            capture it (trainables/graphs.py). Still worst case over iterates.
        on_step: called with (step, loss, idx) for each iterate the loop evaluates, steps + 1 of them (see
            `StepHook`); samples leave `idx` once dropped as fooled, and the call for the final iterate is
            skipped if none is left. With last_iterate every sample is there at every step. Costs one extra
            loss on the final forward pass, nothing when None.
        loss_fn: the loss to ascend instead of cross-entropy (see `LossFn`); `on_step` then sees it too.
        start: the first iterate, drawn by the caller (a captured graph cannot draw it); overrides random_init.
    """
    if compact_every is None:
        compact_every = perf.compact_every(x.device)
    with eval_mode(model), torch.enable_grad():
        x = x.detach()
        if start is None:
            start = random_start(x, eps, generator) if random_init else x.clone()
        x_adv = start.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        # Working copies hold only the samples still being attacked (`idx` maps them back). Samples fooled since
        # the last compaction keep stepping, but `best` holds the iterate that fooled them first; compaction needs
        # one host sync, so on GPU it happens only at a few steps (every step on CPU).
        idx = torch.arange(x.shape[0], device=x.device)
        xa, xo, ya, best = start, x, y, start
        hit_so_far = torch.zeros_like(fooled)
        for step in range(steps):
            xa = xa.detach().requires_grad_(True)
            with autocast():
                logits = model(xa)
            loss = (F.cross_entropy(logits.float(), ya, reduction="none") if loss_fn is None
                    else loss_fn(logits.float(), idx))
            if on_step is not None:
                on_step(step, loss.detach(), idx)
            (grad,) = torch.autograd.grad(loss.sum(), xa)  # sum: per-sample grads independent of the batch
            if not last_iterate:
                hit = logits.argmax(1) != ya
                best = torch.where((hit & ~hit_so_far).view(-1, *([1] * (x.dim() - 1))), xa.detach(), best)
                hit_so_far = hit_so_far | hit
                # Most samples an attack breaks fall at the first steps: compact after steps 1 and 2, then every
                # `compact_every` steps.
                if compact_every and (step < 2 or (step + 1) % compact_every == 0) and bool(hit_so_far.any()):
                    fooled[idx[hit_so_far]] = True
                    x_adv[idx[hit_so_far]] = best[hit_so_far]
                    stay = ~hit_so_far
                    idx, xa, xo, ya, grad, best = idx[stay], xa[stay], xo[stay], ya[stay], grad[stay], best[stay]
                    hit_so_far = hit_so_far[stay]
                    if idx.numel() == 0:
                        return AttackOutput(x_adv, fooled)
            xa = project(xo, xa.detach() + alpha * grad.sign(), eps)
        with torch.no_grad():
            with autocast():
                logits = model(xa)
            if on_step is not None:
                on_step(steps, F.cross_entropy(logits.float(), ya, reduction="none") if loss_fn is None
                        else loss_fn(logits.float(), idx), idx)
            hit = logits.argmax(1) != ya
        already = hit_so_far.view(-1, *([1] * (x.dim() - 1)))
        fooled[idx] = hit_so_far | hit
        x_adv[idx] = torch.where(already, best, xa.detach())
        return AttackOutput(x_adv, fooled)


@dataclasses.dataclass(frozen=True)
class AttackPlan:
    """What `pgd` runs for an AttackCfg: FGSM is one step of eps from x, IFGSM steps of alpha from x, PGD steps of
    alpha from a random start, `restarts` times. The one place an attack's name becomes loop parameters (the
    eager loop here and the CUDA-graphed one in trainables/graphs.py both read it)."""

    alpha: float
    steps: int
    random_init: bool
    restarts: int


def attack_plan(cfg: AttackCfg) -> AttackPlan:
    if cfg.name is AttackName.FGSM:
        return AttackPlan(alpha=cfg.eps, steps=1, random_init=False, restarts=1)
    if cfg.name is AttackName.IFGSM:
        return AttackPlan(alpha=cfg.alpha, steps=cfg.steps, random_init=False, restarts=1)
    return AttackPlan(alpha=cfg.alpha, steps=cfg.steps, random_init=True, restarts=cfg.restarts)


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackCfg,
    *,
    generator: torch.Generator | None = None,
    autocast: Autocast = nullcontext,
    on_step: StepHook | None = None,
) -> AttackOutput:
    """Run an AttackCfg (`attack_plan`); PGD restarts attack only the samples that survived earlier restarts.

    `on_step` is passed to `pgd` (never called for CLEAN); each restart runs its steps again from 0, with `idx`
    mapped back to rows of `x`.
    """
    if cfg.name is AttackName.CLEAN:
        with eval_mode(model), torch.no_grad(), autocast():
            return AttackOutput(x.clone(), model(x).argmax(1) != y)
    plan = attack_plan(cfg)

    def attack(rows: torch.Tensor | None) -> AttackOutput:
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        hook = on_step if rows is None or on_step is None else _reindexed(on_step, rows)
        return pgd(model, xs, ys, eps=cfg.eps, alpha=plan.alpha, steps=plan.steps, random_init=plan.random_init,
                   last_iterate=cfg.last_iterate, generator=generator, autocast=autocast, on_step=hook)

    out = attack(None)
    for _ in range(plan.restarts - 1):
        alive = (~out.fooled).nonzero().squeeze(1)
        if alive.numel() == 0:
            break
        again = attack(alive)
        out.fooled[alive] = again.fooled
        out.x_adv[alive] = again.x_adv
    return out


def _reindexed(on_step: StepHook, rows: torch.Tensor) -> StepHook:
    """`on_step` for an attack on x[rows]: its indices mapped back to rows of x."""
    def hook(step: int, loss: torch.Tensor, idx: torch.Tensor) -> None:
        on_step(step, loss, rows[idx])
    return hook
