"""Strong L-inf attacks for the robustness audit: APGD-CE, APGD-T, FAB-T, Square, and AutoAttack (standard).

The components are `trainables.autoattack`, written from Croce & Hein's reference code (arXiv:2003.01690);
this module composes them with the reference settings of fra31/auto-attack's `version='standard'`:

    APGD-CE  100 iterations, 1 restart                 APGD-T  9 target classes x 100 iterations (DLR loss)
    FAB-T    9 target classes x 100 iterations         Square  5000 queries, p_init 0.8, no schedule rescaling

Each component attacks only the samples every earlier one failed to break, each from the clean image; a
sample counts as broken if any component fooled the model (the reference's per-sample worst case).

No component is trusted blindly: every returned example is checked against the threat set (the raw |delta| is
recorded for the audit's budget check), projected onto it, and re-scored by a forward pass of our own, so a
component that overshoots the budget or reports a success that is not one cannot lower the reported accuracy.
The components draw from private generators, never torch's global RNG; the weights are frozen meanwhile, so no
`.grad` is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from trainables import autoattack
from trainables.attacks import eval_mode, project
from trainables.config import AuditCfg
from trainables.vocab import Component, ConfigError, values

COMPONENTS = values(Component)


@dataclasses.dataclass(frozen=True)
class AutoAttackCfg:
    """AutoAttack's standard L-inf configuration for one budget. Built from the audit's settings (`autoattack_cfg`:
    components, iterations, queries, seed); the other values are the reference's, not settings."""

    eps: float
    components: tuple[str, ...]
    apgd_steps: int
    square_queries: int
    seed: int
    apgd_restarts: int = 1
    apgd_rho: float = 0.75
    target_classes: int = 9  # APGD-T and FAB-T: the 9 most likely wrong classes, one run each
    square_p_init: float = 0.8
    square_rescale_schedule: bool = False

    @property
    def fab_steps(self) -> int:
        return self.apgd_steps

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def autoattack_cfg(cfg: AuditCfg, eps: float) -> AutoAttackCfg:
    """The audit's AutoAttack at `eps`."""
    return AutoAttackCfg(eps=eps, components=tuple(c.value for c in cfg.components), apgd_steps=cfg.apgd_steps,
                         square_queries=cfg.square_queries, seed=cfg.seed)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters that do not require grad: the components differentiate w.r.t. the input only, and would
    otherwise spend ~25 % more time on weight gradients nobody reads."""
    params = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in params:
            p.requires_grad_(flag)


def component_attack(name: str, cfg: AutoAttackCfg, n_classes: int) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The component `name` with the reference parameters: (model, x, y) -> x_adv."""
    targets = max(1, min(cfg.target_classes, n_classes - 1))
    attacks: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "apgd-ce": partial(autoattack.apgd_ce, eps=cfg.eps, steps=cfg.apgd_steps, restarts=cfg.apgd_restarts,
                           rho=cfg.apgd_rho, seed=cfg.seed),
        "apgd-t": partial(autoattack.apgd_targeted, eps=cfg.eps, steps=cfg.apgd_steps, restarts=cfg.apgd_restarts,
                          targets=targets, rho=cfg.apgd_rho, seed=cfg.seed),
        "fab-t": partial(autoattack.fab_targeted, eps=cfg.eps, steps=cfg.fab_steps, targets=targets),
        "square": partial(autoattack.square, eps=cfg.eps, queries=cfg.square_queries, p_init=cfg.square_p_init,
                          seed=cfg.seed),
    }
    return attacks[name]


@dataclasses.dataclass
class ComponentResult:
    fooled: torch.Tensor  # bool [B], after projection and our own re-scoring
    x_adv: torch.Tensor  # projected onto the threat set
    raw_max_linf: float  # largest |x_adv - x| the component returned, before projection
    nonfinite: int  # samples whose returned example had NaN/Inf (replaced by x)
    seconds: float


def run_component(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AutoAttackCfg,
                  *, n_classes: int = 10) -> ComponentResult:
    """One AutoAttack component on (x, y), checked and re-scored; the model's train/eval flags are restored."""
    if name not in COMPONENTS:
        raise ConfigError(f"attack must be one of {', '.join(COMPONENTS)}, got {name!r}")
    t0 = time.perf_counter()
    with eval_mode(model), _frozen(model):
        x_raw = component_attack(name, cfg, n_classes)(model, x, y).detach()
        finite = torch.isfinite(x_raw.flatten(1)).all(1)
        x_raw = torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x_raw, x)
        raw_max = float((x_raw - x).abs().amax()) if x.numel() else 0.0
        x_adv = project(x, x_raw, cfg.eps)
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y
    return ComponentResult(fooled, x_adv, raw_max, int((~finite).sum()), time.perf_counter() - t0)


@dataclasses.dataclass
class AutoAttackResult:
    fooled: torch.Tensor  # bool [B]: clean-misclassified or broken by some component
    broken_by: list[str]  # per sample: "clean" (misclassified without attack), a component name, or "" (robust)
    x_adv: torch.Tensor
    stats: dict[str, dict[str, float]]  # per component: attacked, broken, raw_max_linf, nonfinite, seconds


def auto_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AutoAttackCfg,
                *, n_classes: int = 10) -> AutoAttackResult:
    """AutoAttack's sequential composition: each component attacks the survivors of the ones before it."""
    with eval_mode(model), torch.no_grad():
        fooled = model(x).argmax(1) != y
    broken_by = ["clean" if bool(f) else "" for f in fooled.tolist()]
    x_adv = x.clone()
    stats: dict[str, dict[str, float]] = {}
    for name in cfg.components:
        alive = (~fooled).nonzero().squeeze(1)
        if alive.numel() == 0:
            stats[name] = {"attacked": 0, "broken": 0, "raw_max_linf": 0.0, "nonfinite": 0, "seconds": 0.0}
            continue
        res = run_component(name, model, x[alive], y[alive], cfg, n_classes=n_classes)
        hit = alive[res.fooled]
        fooled[hit] = True
        x_adv[hit] = res.x_adv[res.fooled]
        for i in hit.tolist():
            broken_by[i] = name
        stats[name] = {"attacked": int(alive.numel()), "broken": int(hit.numel()), "raw_max_linf": res.raw_max_linf,
                       "nonfinite": res.nonfinite, "seconds": res.seconds}
    return AutoAttackResult(fooled, broken_by, x_adv, stats)
