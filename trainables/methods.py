"""What one fine-tuning step trains on: the paper's clean (+) patch-modified batch, or adversarial examples of it.

An `Adversary` turns a batch into its training loss. Cross-entropy adversarial training (FGSM-RS, PGD-AT, and
the paper's FGSM-/IFGSM-/PGD-AT baselines at alpha 0.01) trains on the examples of one attack; TRADES trains
on CE(clean) + beta * KL(f(x) || f(x_adv)), its examples maximising the KL. Examples are crafted by the one
attack loop (`attacks.pgd`), against the current weights in eval mode, counting the last iterate. With the
patch augmentation on, the adversary attacks the clean and the patch-modified halves alike. An eps warm-up
(`Adversary.eps_warmup`) grows the budget linearly over the first share of the run's steps: at a large eps (0.3
on F-MNIST) full-strength examples from the first step can drive a clean base to a constant prediction.

Cost per training image, in passes through the model (an input-gradient pass counts as a backward pass):
plain fine-tuning 1 forward + 1 backward; an attack of k steps adds k forward + k backward; TRADES adds one
forward for the clean probabilities and trains on twice the images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks import Autocast, eval_mode, pgd, run_attack
from trainables.config import AttackCfg, AttackName, MethodCfg
from trainables.vocab import METHODS, Method

__all__ = ["Adversary", "Passes", "adversary_of", "batch_loss", "passes_per_image", "training_cost"]


@dataclasses.dataclass(frozen=True)
class Adversary:
    attack: AttackCfg  # crafts the training examples (restarts are ignored: one start, last iterate)
    beta: float | None = None  # TRADES: the weight of the KL term; None = CE on the examples
    eps_warmup: float = 0.0  # share of the run's steps over which eps and alpha grow linearly to the attack's

    def describe(self) -> dict[str, Any]:
        out = self.attack.describe()
        if self.beta is not None:
            out["beta"] = self.beta
        if self.eps_warmup > 0:
            out["eps_warmup"] = self.eps_warmup
        return out

    def at(self, progress: float) -> Adversary:
        """The adversary of the step that ends `progress` (in (0, 1]) of the run: during the warm-up eps and
        alpha are scaled by progress / eps_warmup, so alpha x steps keeps its ratio to eps."""
        if self.eps_warmup <= 0 or progress >= self.eps_warmup:
            return self
        scale = max(progress, 1e-6) / self.eps_warmup
        attack = self.attack.replace(eps=self.attack.eps * scale, alpha=self.attack.alpha * scale)
        return dataclasses.replace(self, attack=attack)


def adversary_of(method: MethodCfg, default_eps: float) -> Adversary | None:
    """The adversary of a fine-tuning method (None for `patch`); unset parameters take their defaults."""
    resolved = method.resolved(default_eps)
    attack = resolved.attack()
    if attack is None:
        return None
    return Adversary(attack, beta=resolved.beta if resolved.method is Method.TRADES else None,
                     eps_warmup=resolved.eps_warmup if "eps_warmup" in METHODS[resolved.method].params else 0.0)


@dataclasses.dataclass(frozen=True)
class Passes:
    """Passes through the model per training image (forward, backward)."""

    forward: int
    backward: int


def training_cost(adversary: Adversary | None, train_images: int, *, augment: bool, epochs: int,
                  device_s: float) -> dict[str, Any]:
    """A run's training compute as results record it: `cost_device_s` (seconds on the device, training only) and
    `cost_fwd_passes` / `cost_bwd_passes` over `epochs` epochs of `train_images` (twice that with the patch
    augmentation, which adds a modified copy of each)."""
    images = train_images * (2 if augment else 1) * epochs
    passes = passes_per_image(adversary)
    return {"cost_device_s": device_s, "cost_fwd_passes": images * passes.forward,
            "cost_bwd_passes": images * passes.backward}


def passes_per_image(adversary: Adversary | None) -> Passes:
    if adversary is None:
        return Passes(1, 1)
    k = 1 if adversary.attack.name is AttackName.FGSM else adversary.attack.steps
    if adversary.beta is not None:
        return Passes(forward=1 + k + 2, backward=k + 2)
    return Passes(forward=k + 1, backward=k + 1)


def batch_loss(
    model: nn.Module,
    step_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adversary: Adversary | None,
    *,
    generator: torch.Generator | None,
    autocast: Autocast = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, logits, their labels) of one training step. `step_model` is what the step calls (a compiled
    view of `model`); attacks use `model`."""
    if adversary is None:
        with autocast():
            logits = step_model(x)
        return F.cross_entropy(logits.float(), y), logits, y
    if adversary.beta is None:
        attack = adversary.attack.replace(last_iterate=True, restarts=1)
        x_adv = run_attack(model, x, y, attack, generator=generator, autocast=autocast).x_adv
        with autocast():
            logits = step_model(x_adv)
        return F.cross_entropy(logits.float(), y), logits, y
    x_adv = _trades_examples(model, x, y, adversary.attack, generator, autocast)
    with autocast():
        logits = step_model(torch.cat([x, x_adv])).float()
    clean, adv = logits.split(x.shape[0])
    kl = F.kl_div(F.log_softmax(adv, 1), F.log_softmax(clean, 1), reduction="batchmean", log_target=True)
    return F.cross_entropy(clean, y) + adversary.beta * kl, logits, torch.cat([y, y])


def _trades_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackCfg,
                     generator: torch.Generator | None, autocast: Autocast) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x')) (from a U(-eps, eps) start, where Zhang et al.
    start at x + 0.001 N(0, 1))."""
    with eval_mode(model), torch.no_grad(), autocast():
        log_p_clean = F.log_softmax(model(x).float(), 1)

    def kl_to_clean(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        target = log_p_clean[idx]
        return (target.exp() * (target - F.log_softmax(logits, 1))).sum(1)

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_to_clean
    return pgd(model, x, y, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, random_init=True,
               last_iterate=True, generator=generator, autocast=autocast, loss_fn=loss).x_adv
