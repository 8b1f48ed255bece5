"""Robustness audit: paper-parameter vs strong attacks, and automatic gradient-masking checks (no Ray).

A robustness number is only as good as the attack behind it. The audit scores a model on one fixed set of
test images under the paper's attacks (FGSM, IFGSM and PGD-10 at alpha 0.01), a strong PGD (alpha =
2.5 eps / T, many steps, restarts) and AutoAttack (standard, reference parameters), and reports the
per-sample worst case over all of them as the headline. It then runs the sanity checks of Carlini et al.
2019 ("On Evaluating Adversarial Robustness", arXiv:1902.06705) and of AutoAttack's own flags, each with a
PASS / WARN / FAIL / SKIP status and the numbers behind it:

    budget              every returned example lies in the threat set (|delta| <= eps, in [0, 1], finite)
    iterative_vs_single strong PGD at least as strong as FGSM, overall and per sample
    steps               doubling PGD's steps does not change accuracy (converged; rising accuracy = broken attack)
    restarts            more random restarts do not lower accuracy much (converged)
    eps_monotone        accuracy falls (weakly) as eps grows, per sample up to noise
    chance_at_large_eps at eps 0.5 nothing is robust: accuracy <= chance
    blackbox            Square (gradient-free) breaks few samples the white-box attacks left, and a stronger
                        re-attack does not move the worst case (graded by size, as AutoAttack advises)
    transfer            examples transferred from the undefended base break no sample white-box could not
    noise               uniform noise of the same size breaks no sample white-box could not
    loss_rises          the attack's loss rises across PGD iterations
    gradients           input gradients are non-zero; outputs are logits; the model is deterministic
    loss_diversity      the DLR-loss attack (APGD-T) adds at most a quarter of the CE one's survivors

The costlier checks run on the first `check_limit` images. Tolerances are one sample, 0.5 pt or two binomial
standard errors, whichever is largest, so noise alone does not raise a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from tqdm import tqdm

from trainables.attacks import attack_plan, eval_mode
from trainables.audit.checks import CheckInputs, batches, run_checks
from trainables.audit.records import AuditReport, Check, CheckStatus, Row, tolerance
from trainables.augment import make_generator
from trainables.config import AttackCfg, AuditCfg, reaches
from trainables.data import Split, iterate_batches
from trainables.evaluation import Linf, robust_masks
from trainables.perf import Autocast
from trainables.strong_attacks import auto_attack, autoattack_cfg

__all__ = ["AuditReport", "Check", "CheckStatus", "Row", "run_audit", "tolerance"]


def _row(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackCfg, cfg: AuditCfg,
         generator: torch.Generator, autocast: Autocast, note: str = "") -> tuple[Row, torch.Tensor]:
    """One attack on every clean-correct image: its row and the per-sample robust mask [N] (on x's device)."""
    t0 = time.perf_counter()
    linf: dict[str, Linf] = {}
    robust = robust_masks(model, (x, y), {name: attack}, device=x.device, batch_size=cfg.batch_size,
                          generator=generator, autocast=autocast, linf=linf)[name].to(x.device)
    size = linf.get(name, Linf())
    return Row(name, attack.describe(), int(robust.sum()), x.shape[0], size.max_linf, size.survivor_max_linf,
               time.perf_counter() - t0, note), robust


def run_audit(
    model: nn.Module,
    data: Split,
    cfg: AuditCfg,
    eps: float,
    *,
    device: torch.device,
    base: nn.Module | None = None,
    n_classes: int = 10,
    autocast: Autocast = nullcontext,
    checks: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> AuditReport:
    """Audit `model` on `data` (usually a test subset) at `eps`; `base` enables the transfer check; `checks=False`
    scores the attack rows and the worst case only (e.g. the base a model is compared with)."""
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    gen = make_generator(cfg.seed, device)
    parts = list(iterate_batches(data, cfg.batch_size, device))
    x = torch.cat([p[0] for p in parts]) if parts else torch.zeros((0, *data.x.shape[1:]), device=device)
    y = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.long, device=device)
    n = x.shape[0]
    with torch.no_grad(), eval_mode(model):
        ok = torch.cat([model(x[sl]).argmax(1) == y[sl] for sl in batches(n, cfg.batch_size)]) if n else \
            torch.zeros(0, dtype=torch.bool, device=device)
    rows: list[Row] = [Row("clean", {"name": "clean"}, int(ok.sum()), n, 0.0, 0.0, 0.0)]
    robust: dict[str, torch.Tensor] = {}

    plan: list[tuple[str, AttackCfg, str]] = []
    for name, attack in cfg.paper(eps).items():
        # a random start lies anywhere in the ball: from there it takes 2 eps of travel to reach every corner of it
        run = attack_plan(attack)
        need = (2 if run.random_init else 1) * attack.eps
        note = "" if reaches(run.alpha, run.steps, need) else (
            f"cannot reach eps: alpha*steps = {run.alpha * run.steps:.3g} < {'2*eps' if run.random_init else 'eps'} "
            f"= {need:.3g}")
        plan.append((name, attack, note))
    strong = cfg.strong(eps)
    plan.append((f"strong_pgd{strong.steps}x{strong.restarts}", strong, ""))
    bar = tqdm(total=len(plan) + int(cfg.autoattack), desc="audit", unit="attack", disable=not progress)
    for name, attack, note in plan:
        bar.set_postfix_str(name)
        row, robust[name] = _row(name, model, x, y, attack, cfg, gen, autocast, note)
        rows.append(row)
        say(f"{name}: {100 * row.acc:.2f} %")
        bar.update()
    strong_name = plan[-1][0]

    broken_by: dict[str, int] = {}
    aa_stats: dict[str, dict[str, float]] = {}
    square_found: dict[int, torch.Tensor] = {}  # sample -> Square's example, where only Square broke it
    if cfg.autoattack:
        bar.set_postfix_str("autoattack")
        t0 = time.perf_counter()
        aa_robust = ok.clone()
        aa_by = ["clean" if not v else "" for v in ok.tolist()]
        aa_cfg = autoattack_cfg(cfg, eps)
        idx = ok.nonzero().squeeze(1)
        for sl in batches(idx.numel(), cfg.batch_size):
            b = idx[sl]
            res = auto_attack(model, x[b], y[b], aa_cfg, n_classes=n_classes)
            aa_robust[b] = ~res.fooled
            for j, (i, who) in enumerate(zip(b.tolist(), res.broken_by, strict=True)):
                aa_by[i] = who
                if who == "square":
                    square_found[i] = res.x_adv[j]
            for comp, st in res.stats.items():
                agg = aa_stats.setdefault(comp, {"attacked": 0, "broken": 0, "raw_max_linf": 0.0, "nonfinite": 0,
                                                 "seconds": 0.0})
                for k in ("attacked", "broken", "nonfinite", "seconds"):
                    agg[k] += st[k]
                agg["raw_max_linf"] = max(agg["raw_max_linf"], st["raw_max_linf"])
        broken_by = {c: sum(1 for w in aa_by if w == c) for c in ("clean", *(c.value for c in cfg.components))}
        robust["autoattack"] = aa_robust
        rows.append(Row("autoattack", aa_cfg.describe(), int(aa_robust.sum()), n,
                        max((s["raw_max_linf"] for s in aa_stats.values()), default=0.0), None,
                        time.perf_counter() - t0,
                        "per-sample worst case over " + ", ".join(c.value for c in cfg.components)))
        say(f"autoattack: {100 * rows[-1].acc:.2f} %")
        bar.update()
    bar.close()

    worst = ok.clone()
    for mask in robust.values():
        worst &= mask

    found = run_checks(CheckInputs(model, cfg, eps, x, y, ok, robust, rows, strong_name, base, aa_stats, broken_by,
                                   n_classes, gen, autocast, square_found)) if checks else []
    config = {**cfg.to_json(), "eps": eps, "sweep": list(cfg.sweep(eps)), "autoattack_cfg": autoattack_cfg(cfg, eps).describe()}
    return AuditReport(eps, n, int(ok.sum()), rows, found, int(worst.sum()), config,
                       time.perf_counter() - t_start, broken_by, worst.cpu().tolist())

