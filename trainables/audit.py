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
    blackbox            Square (gradient-free) breaks no sample the white-box attacks could not
    transfer            examples transferred from the undefended base break no sample white-box could not
    noise               uniform noise of the same size breaks no sample white-box could not
    loss_rises          the attack's loss rises across PGD iterations
    gradients           input gradients are non-zero; outputs are logits; the model is deterministic
    loss_diversity      the DLR-loss attack (APGD-T) adds few breaks after the CE one (logit-scale masking)

The costlier checks run on the first `check_limit` images. Tolerances are one sample, 0.5 pt or two binomial
standard errors, whichever is largest, so noise alone does not raise a warning.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trainables.attacks import Autocast, eval_mode, pgd, random_start, run_attack
from trainables.augment import make_generator
from trainables.config import AttackCfg, AttackName, ConfigError
from trainables.data import Split, iterate_batches
from trainables.strong_attacks import COMPONENTS, AutoAttackCfg, auto_attack
from trainables.vocab import PAPER_ALPHA, PAPER_STEPS, encode_outcomes


class Status(str, enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclasses.dataclass(frozen=True)
class AuditCfg:
    eps: float
    strong_steps: int = 100
    strong_restarts: int = 5
    autoattack: bool = True
    components: tuple[str, ...] = COMPONENTS
    apgd_steps: int = 100  # reference AutoAttack; lower only for smoke tests
    square_queries: int = 5000  # reference AutoAttack
    eps_grid: tuple[float, ...] = ()  # () = (eps/4, eps/2, eps, 2 eps, 0.5), capped at 1
    sweep_steps: int = 50
    noise_draws: int = 100
    check_limit: int = 200  # images for the costlier checks (steps, restarts, sweep, noise, transfer)
    batch_size: int = 250
    seed: int = 0
    checks: bool = True  # False: the attack rows and the worst case only (e.g. the base a model is compared with)

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise ConfigError(f"eps must be in (0, 1], got {self.eps!r}")
        for name in ("strong_steps", "strong_restarts", "sweep_steps", "noise_draws", "check_limit", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        grid = tuple(float(e) for e in self.eps_grid)
        if any(not (0 < e <= 1) for e in grid):
            raise ConfigError(f"eps_grid values must be in (0, 1], got {list(self.eps_grid)}")
        object.__setattr__(self, "eps_grid", grid)
        self.autoattack_cfg()  # validates components and query counts

    def autoattack_cfg(self) -> AutoAttackCfg:
        return AutoAttackCfg(eps=self.eps, components=self.components, apgd_steps=self.apgd_steps,
                             fab_steps=self.apgd_steps, square_queries=self.square_queries, seed=self.seed)

    def grid(self) -> tuple[float, ...]:
        if self.eps_grid:
            return tuple(sorted(self.eps_grid))
        return tuple(sorted({round(min(1.0, e), 6) for e in (self.eps / 4, self.eps / 2, self.eps, 2 * self.eps, 0.5)}))

    def paper(self) -> dict[str, AttackCfg]:
        return {
            "paper_fgsm": AttackCfg(AttackName.FGSM, eps=self.eps, alpha=self.eps, steps=1),
            "paper_ifgsm10": AttackCfg(AttackName.IFGSM, eps=self.eps, alpha=PAPER_ALPHA, steps=PAPER_STEPS),
            "paper_pgd10": AttackCfg(AttackName.PGD, eps=self.eps, alpha=PAPER_ALPHA, steps=PAPER_STEPS),
        }

    def strong_pgd(self, steps: int | None = None, restarts: int | None = None, eps: float | None = None) -> AttackCfg:
        """Madry's step rule alpha = 2.5 eps / T: the iterates can cross the whole ball (alpha T >= 2 eps)."""
        steps = steps or self.strong_steps
        eps = eps or self.eps
        return AttackCfg(AttackName.PGD, eps=eps, alpha=min(1.0, 2.5 * eps / steps), steps=steps,
                         restarts=restarts or self.strong_restarts)


@dataclasses.dataclass
class Row:
    name: str
    params: dict[str, Any]
    robust: int  # samples correct on the clean image and not broken by this attack
    n: int
    max_linf: float  # largest |x_adv - x| over all returned examples
    survivor_max_linf: float | None  # largest |x_adv - x| over samples that survived (None if none did)
    seconds: float
    note: str = ""

    @property
    def acc(self) -> float:
        return self.robust / max(self.n, 1)

    def as_dict(self) -> dict[str, Any]:
        lo, hi = wilson(self.robust, self.n)
        return {**dataclasses.asdict(self), "acc": self.acc, "ci95": [lo, hi]}


@dataclasses.dataclass
class Check:
    name: str
    status: Status
    detail: str
    values: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "values": self.values}


@dataclasses.dataclass
class AuditReport:
    eps: float
    n: int
    clean: int
    rows: list[Row]
    checks: list[Check]
    worst_case: int  # robust to every row
    config: dict[str, Any]
    seconds: float
    broken_by: dict[str, int]  # AutoAttack: samples first broken by each component
    worst_mask: list[bool] = dataclasses.field(default_factory=list)  # per sample: robust to every row

    @property
    def verdict(self) -> Status:
        statuses = {c.status for c in self.checks}
        if not statuses:
            return Status.SKIP
        for s in (Status.FAIL, Status.WARN):
            if s in statuses:
                return s
        return Status.PASS

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def as_dict(self) -> dict[str, Any]:
        lo, hi = wilson(self.worst_case, self.n)
        return {
            "format": "patchtune-audit/1", "eps": self.eps, "n": self.n, "clean_acc": self.clean / max(self.n, 1),
            "worst_case_acc": self.worst_case / max(self.n, 1), "worst_case_ci95": [lo, hi],
            "verdict": self.verdict.value, "rows": [r.as_dict() for r in self.rows],
            "checks": [c.as_dict() for c in self.checks], "autoattack_broken_by": self.broken_by,
            "config": self.config, "seconds": self.seconds,
            # Per sample, in data order ("1" robust to every row): paired comparisons between models on these images.
            "worst_case_mask": encode_outcomes(self.worst_mask),
        }


def wilson(k: int, n: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (sensible at 0 % and 100 %); (0, 1) when n == 0."""
    if n == 0:
        return (0.0, 1.0)
    # imported here: every trial actor imports this module and never calls this
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence_level, method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def tolerance(p: float, n: int) -> float:
    """Differences below this are noise: one sample, 0.5 pt, or two binomial standard errors."""
    return max(1.0 / max(n, 1), 0.005, 2 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)))


# ------------------------------------------------------------------------------------------- per-sample runs


def _materialise(data: Split, device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*iterate_batches(data, batch_size, device), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _attack_row(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ok: torch.Tensor, cfg: AttackCfg,
                *, batch_size: int, generator: torch.Generator, autocast: Autocast, note: str = "",
                crafter: nn.Module | None = None) -> tuple[Row, torch.Tensor]:
    """Attack the clean-correct samples; returns the row and the per-sample robust mask [N].

    With `crafter` (transfer), examples are crafted on it (last iterate) and scored on `model`.
    """
    t0 = time.perf_counter()
    robust = ok.clone()
    max_linf, surv_max = 0.0, None
    idx = ok.nonzero().squeeze(1)
    for sl in _batches(idx.numel(), batch_size):
        b = idx[sl]
        if crafter is None:
            out = run_attack(model, x[b], y[b], cfg, generator=generator, autocast=autocast)
            x_adv, fooled = out.x_adv, out.fooled
        else:
            x_adv = run_attack(crafter, x[b], y[b], dataclasses.replace(cfg, last_iterate=True),
                               generator=generator, autocast=autocast).x_adv
            with torch.no_grad(), eval_mode(model):
                fooled = model(x_adv).argmax(1) != y[b]
        delta = (x_adv - x[b]).flatten(1).abs().amax(1)
        if not bool(torch.isfinite(x_adv).all()):
            max_linf = math.inf
        max_linf = max(max_linf, float(delta.max()))
        if bool((~fooled).any()):
            surv_max = max(surv_max or 0.0, float(delta[~fooled].max()))
        robust[b] = ~fooled
    row = Row(name, cfg.describe(), int(robust.sum()), x.shape[0], max_linf, surv_max, time.perf_counter() - t0, note)
    return row, robust


def _noise_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ok: torch.Tensor, eps: float, draws: int,
                  generator: torch.Generator, batch_size: int) -> torch.Tensor:
    """Per sample: correct on the clean image and on every one of `draws` uniform-noise images in the ball."""
    robust = ok.clone()
    with torch.no_grad(), eval_mode(model):
        for _ in range(draws):
            alive = robust.nonzero().squeeze(1)
            for sl in _batches(alive.numel(), batch_size):
                b = alive[sl]
                robust[b] &= model(random_start(x[b], eps, generator)).argmax(1) == y[b]
    return robust


def _gradient_health(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    with eval_mode(model), torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        (grad,) = torch.autograd.grad(F.cross_entropy(out.float(), y, reduction="sum"), xg)
        with torch.no_grad():
            again = model(x)
    zero = (grad.flatten(1).abs().amax(1) == 0).float().mean()
    outs = out.detach().float()
    probs_like = bool((outs >= 0).all() and torch.allclose(outs.sum(1), torch.ones_like(outs[:, 0]), atol=1e-3))
    return {
        "zero_grad_fraction": float(zero),
        "outputs_look_like_probabilities": probs_like,
        "deterministic": bool(torch.allclose(out.detach(), again, rtol=1e-4, atol=1e-5)),
    }


# ------------------------------------------------------------------------------------------- checks


def _paired_excess(weaker: torch.Tensor, stronger: torch.Tensor, n: int) -> tuple[int, float, bool]:
    """Robust masks of two attacks where `stronger` should break everything `weaker` breaks: the samples robust
    to `stronger` but broken by `weaker`, the tolerance (at `stronger`'s accuracy), and whether that count or
    the accuracy gap is beyond it."""
    extra = int((stronger & ~weaker).sum())
    acc_w, acc_s = _acc(weaker), _acc(stronger)
    tol = tolerance(acc_s, n)
    return extra, tol, extra / max(n, 1) > tol or acc_s > acc_w + tol


def _cmp_check(name: str, weaker: torch.Tensor, stronger: torch.Tensor, weaker_name: str, stronger_name: str,
               n: int, *, fail: bool = True) -> Check:
    """`stronger` should break (per sample) everything `weaker` breaks: count samples robust to `stronger`
    but broken by `weaker` among those both attacked (correct on clean)."""
    extra, tol, beyond = _paired_excess(weaker, stronger, n)
    acc_w, acc_s = _acc(weaker), _acc(stronger)
    values = {f"{weaker_name}_acc": acc_w, f"{stronger_name}_acc": acc_s, "only_broken_by_" + weaker_name: extra,
              "tolerance": tol}
    if beyond:
        status = Status.FAIL if fail else Status.WARN
        detail = (f"{weaker_name} breaks {extra} samples that {stronger_name} does not "
                  f"({100 * acc_w:.2f} % vs {100 * acc_s:.2f} %): the white-box attack is weakened, suspect gradient masking")
    elif extra:
        status = Status.WARN
        detail = f"{weaker_name} breaks {extra} samples {stronger_name} does not (within noise)"
    else:
        status = Status.PASS
        detail = f"{stronger_name} {100 * acc_s:.2f} % <= {weaker_name} {100 * acc_w:.2f} %, per sample"
    return Check(name, status, detail, values)


def run_audit(
    model: nn.Module,
    data: Split,
    cfg: AuditCfg,
    *,
    device: torch.device,
    base: nn.Module | None = None,
    n_classes: int = 10,
    autocast: Autocast = nullcontext,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> AuditReport:
    """Audit `model` on `data` (usually a test subset) at `cfg.eps`; `base` enables the transfer check."""
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    gen = make_generator(cfg.seed, device)
    x, y = _materialise(data, device, cfg.batch_size)
    n = x.shape[0]
    with torch.no_grad(), eval_mode(model):
        ok = torch.cat([model(x[sl]).argmax(1) == y[sl] for sl in _batches(n, cfg.batch_size)]) if n else \
            torch.zeros(0, dtype=torch.bool, device=device)
    rows: list[Row] = [Row("clean", {"name": "clean"}, int(ok.sum()), n, 0.0, 0.0, 0.0)]
    robust: dict[str, torch.Tensor] = {}
    kw = {"batch_size": cfg.batch_size, "generator": gen, "autocast": autocast}

    plan: list[tuple[str, AttackCfg, str]] = []
    for name, attack in cfg.paper().items():
        reach = attack.alpha * attack.steps
        need = 2 * attack.eps if attack.name is AttackName.PGD else attack.eps
        note = "" if reach >= need - 1e-9 else (
            f"cannot reach eps: alpha*steps = {reach:.3g} < {'2*eps' if attack.name is AttackName.PGD else 'eps'} "
            f"= {need:.3g}")
        plan.append((name, attack, note))
    strong = cfg.strong_pgd()
    plan.append((f"strong_pgd{strong.steps}x{strong.restarts}", strong, ""))
    bar = tqdm(total=len(plan) + int(cfg.autoattack), desc="audit", unit="attack", disable=not progress)
    for name, attack, note in plan:
        bar.set_postfix_str(name)
        row, robust[name] = _attack_row(name, model, x, y, ok, attack, note=note, **kw)  # type: ignore[arg-type]
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
        aa_cfg = cfg.autoattack_cfg()
        idx = ok.nonzero().squeeze(1)
        for sl in _batches(idx.numel(), cfg.batch_size):
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
        broken_by = {c: sum(1 for w in aa_by if w == c) for c in ("clean", *cfg.components)}
        robust["autoattack"] = aa_robust
        rows.append(Row("autoattack", aa_cfg.describe(), int(aa_robust.sum()), n,
                        max((s["raw_max_linf"] for s in aa_stats.values()), default=0.0), None,
                        time.perf_counter() - t0, "per-sample worst case over " + ", ".join(cfg.components)))
        say(f"autoattack: {100 * rows[-1].acc:.2f} %")
        bar.update()
    bar.close()

    worst = ok.clone()
    for mask in robust.values():
        worst &= mask

    checks = _checks(_CheckInputs(model, cfg, x, y, ok, robust, rows, strong_name, base, aa_stats, broken_by,
                                  n_classes, gen, autocast, square_found)) if cfg.checks else []
    config = {**dataclasses.asdict(cfg), "grid": list(cfg.grid()), "autoattack_cfg": cfg.autoattack_cfg().describe()}
    return AuditReport(cfg.eps, n, int(ok.sum()), rows, checks, int(worst.sum()), config,
                       time.perf_counter() - t_start, broken_by, worst.cpu().tolist())




@dataclasses.dataclass(frozen=True, eq=False)
class _CheckInputs:
    """What the checks share: the audited model and images, and the per-sample results of the attack rows."""

    model: nn.Module
    cfg: AuditCfg
    x: torch.Tensor
    y: torch.Tensor
    ok: torch.Tensor  # bool [N]: correct on the clean image
    robust: Mapping[str, torch.Tensor]  # row name -> bool [N]: correct and not broken by that row's attack
    rows: Sequence[Row]
    strong_name: str
    base: nn.Module | None
    aa_stats: Mapping[str, Mapping[str, float]]
    broken_by: Mapping[str, int]
    n_classes: int
    gen: torch.Generator
    autocast: Autocast
    square_found: Mapping[int, torch.Tensor]  # sample -> Square's example, for the samples only Square broke

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def m(self) -> int:
        """Size of the check subset (the first `check_limit` images), where the costlier checks run."""
        return min(self.n, self.cfg.check_limit)

    @property
    def xs(self) -> torch.Tensor:
        return self.x[: self.m]

    @property
    def ys(self) -> torch.Tensor:
        return self.y[: self.m]

    @property
    def oks(self) -> torch.Tensor:
        return self.ok[: self.m]

    def subset_robust(self, name: str, attack: AttackCfg, crafter: nn.Module | None = None) -> torch.Tensor:
        """Per-sample robust mask [m] of `attack` on the check subset (crafted on `crafter`, if given)."""
        _, robust = _attack_row(name, self.model, self.xs, self.ys, self.oks, attack, batch_size=self.cfg.batch_size,
                                generator=self.gen, autocast=self.autocast, crafter=crafter)
        return robust


def _acc(robust: torch.Tensor) -> float:
    return float(robust.float().mean())


def _checks(inp: _CheckInputs) -> list[Check]:
    """Every check, in report order. The attacks behind them draw their random starts from one generator, so
    they run in a fixed order (steps, eps sweep, noise, transfer, loss trace) and the report is reproducible."""
    r_t1 = inp.subset_robust("t1", inp.cfg.strong_pgd(restarts=1))
    steps = _check_steps(inp, r_t1)
    sweep = _eps_sweep(inp)
    whitebox = inp.robust[inp.strong_name].clone()
    for k in ("paper_fgsm", "paper_ifgsm10", "paper_pgd10"):
        whitebox &= inp.robust[k]
    noise = _noise_robust(inp.model, inp.xs, inp.ys, inp.oks, inp.cfg.eps, inp.cfg.noise_draws, inp.gen,
                          inp.cfg.batch_size)
    transfer = _check_transfer(inp, whitebox[: inp.m], noise)
    return [
        _check_budget(inp),
        _check_iterative_vs_single(inp),
        steps,
        _check_restarts(inp, r_t1),
        _check_eps_monotone(sweep, inp.m),
        _check_chance_at_large_eps([(e, _acc(r)) for e, r in sweep], inp.m, inp.n_classes),
        _check_blackbox(inp),
        transfer,
        _check_noise(noise, whitebox[: inp.m], inp.m, inp.cfg.noise_draws),
        _check_loss_rises(inp),
        _check_gradients(inp),
        _check_loss_diversity(inp.broken_by, inp.n),
    ]


def _check_budget(inp: _CheckInputs) -> Check:
    """Every returned example lies in the threat set; strong attacks' survivors were pushed to its edge."""
    eps = inp.cfg.eps
    over = {r.name: r.max_linf for r in inp.rows if not (r.max_linf <= eps + 1e-6)}
    aa_over = {c: s["raw_max_linf"] for c, s in inp.aa_stats.items()
               if s["raw_max_linf"] > eps + 1e-6 or s["nonfinite"]}
    measured = {r.name: r.max_linf for r in inp.rows if r.name != "clean"}
    short = {r.name: r.survivor_max_linf for r in inp.rows
             if r.survivor_max_linf is not None and r.survivor_max_linf < 0.9 * eps and r.name.startswith("strong")}
    if over:
        return Check("budget", Status.FAIL, f"examples outside the eps={eps:g} ball: {over}", {"max_linf": measured})
    if aa_over:
        return Check("budget", Status.WARN, f"AutoAttack components returned out-of-budget or non-finite "
                     f"examples (projected before scoring): {aa_over}", {"max_linf": measured, "raw": aa_over})
    if short:
        return Check("budget", Status.WARN, f"strong attacks left survivors well inside the ball: {short}",
                     {"max_linf": measured})
    return Check("budget", Status.PASS, f"every example within eps={eps:g} and [0, 1]; measured max |delta| "
                 + ", ".join(f"{k} {v:.3g}" for k, v in measured.items()), {"max_linf": measured})


def _check_iterative_vs_single(inp: _CheckInputs) -> Check:
    """Strong PGD breaks, per sample, everything FGSM breaks."""
    robust, n = inp.robust, inp.n
    chk = _cmp_check("iterative_vs_single", robust["paper_fgsm"], robust[inp.strong_name], "fgsm", "strong_pgd", n)
    weak_paper = [k for k in ("paper_ifgsm10", "paper_pgd10")
                  if _acc(robust[k]) > _acc(robust["paper_fgsm"]) + tolerance(_acc(robust[k]), n)]
    if weak_paper:
        # A property of the paper's attack settings, not of the model: noted, and the rows carry the reason.
        chk.detail += (f" (note: the paper's {', '.join(w.removeprefix('paper_') for w in weak_paper)} is weaker than "
                       "FGSM here: alpha*steps cannot reach eps, so it is no robust-accuracy number)")
        chk.values["paper_iterative_weaker_than_fgsm"] = weak_paper
    return chk


def _check_steps(inp: _CheckInputs, r_t1: torch.Tensor) -> Check:
    """Doubling the steps of one-restart strong PGD (robust mask `r_t1` on the check subset) changes nothing."""
    cfg, m = inp.cfg, inp.m
    steps = cfg.strong_pgd(restarts=1).steps
    r_2t1 = inp.subset_robust("2t1", cfg.strong_pgd(steps=2 * cfg.strong_steps, restarts=1))
    acc_t1, acc_2t1 = _acc(r_t1), _acc(r_2t1)
    tol = tolerance(acc_t1, m)
    values: dict[str, Any] = {f"pgd{steps}_acc": acc_t1, f"pgd{2 * steps}_acc": acc_2t1, "n": m, "tolerance": tol}
    if acc_2t1 > acc_t1 + tol:
        return Check("steps", Status.FAIL, f"doubling PGD steps raised accuracy {100 * acc_t1:.2f} -> "
                     f"{100 * acc_2t1:.2f} %: the attack is unreliable on this model", values)
    if acc_2t1 < acc_t1 - tol:
        return Check("steps", Status.WARN, f"doubling PGD steps lowered accuracy {100 * acc_t1:.2f} -> "
                     f"{100 * acc_2t1:.2f} %: not converged; raise strong_steps", values)
    return Check("steps", Status.PASS, f"PGD-{steps} {100 * acc_t1:.2f} % vs PGD-{2 * steps} "
                 f"{100 * acc_2t1:.2f} % (converged)", values)


def _check_restarts(inp: _CheckInputs, r_t1: torch.Tensor) -> Check:
    """The strong row's restarts lower accuracy at most by noise against one restart (`r_t1`)."""
    cfg, m = inp.cfg, inp.m
    acc_t1, acc_r = _acc(r_t1), _acc(inp.robust[inp.strong_name][:m])
    tol = tolerance(acc_t1, m)
    values = {"restarts_1_acc": acc_t1, f"restarts_{cfg.strong_restarts}_acc": acc_r, "n": m, "tolerance": tol}
    if acc_r < acc_t1 - tol:
        return Check("restarts", Status.WARN, f"{cfg.strong_restarts} restarts lowered accuracy "
                     f"{100 * acc_t1:.2f} -> {100 * acc_r:.2f} %: raise strong_restarts", values)
    return Check("restarts", Status.PASS, f"1 restart {100 * acc_t1:.2f} % vs {cfg.strong_restarts} "
                 f"{100 * acc_r:.2f} %", values)


def _eps_sweep(inp: _CheckInputs) -> list[tuple[float, torch.Tensor]]:
    """(eps, per-sample robust mask on the check subset) under one-restart PGD of `sweep_steps`, by increasing
    eps."""
    cfg = inp.cfg
    sweep = {e: inp.subset_robust(f"eps{e:g}", cfg.strong_pgd(steps=cfg.sweep_steps, restarts=1, eps=e))
             for e in cfg.grid()}
    return sorted(sweep.items())


def _curve_values(curve: Sequence[tuple[float, float]], m: int) -> dict[str, Any]:
    return {"curve": {f"{e:g}": a for e, a in curve}, "n": m}


def _check_eps_monotone(sweep: Sequence[tuple[float, torch.Tensor]], m: int) -> Check:
    """A larger eps breaks, per sample, what a smaller one breaks (its examples lie in the larger ball), up to
    noise: paired per sample, like `iterative_vs_single`, for each neighbouring pair of the sweep. A rise of two
    samples at a 1 % floor is one random start's luck; ten samples robust only at the larger eps are not."""
    curve = [(e, _acc(r)) for e, r in sweep]
    values = _curve_values(curve, m)
    for (a, ra), (b, rb) in zip(sweep, sweep[1:], strict=False):
        missed, tol, beyond = _paired_excess(ra, rb, m)  # missed: broken at eps a, robust at the larger eps b
        if beyond:
            values.update(rise_from=a, rise_to=b, robust_only_at_larger_eps=missed, tolerance=tol)
            return Check("eps_monotone", Status.FAIL,
                         f"from eps {a:g} to {b:g}, {missed} samples broken at the smaller survive the larger "
                         f"({100 * _acc(ra):.1f} -> {100 * _acc(rb):.1f} %): the attack weakens as eps grows",
                         values)
    return Check("eps_monotone", Status.PASS, "accuracy non-increasing in eps, per sample up to noise: "
                 + ", ".join(f"{e:g}: {100 * a:.1f} %" for e, a in curve), values)


def _check_chance_at_large_eps(curve: Sequence[tuple[float, float]], m: int, n_classes: int) -> Check:
    """At eps 0.5 any image can become grey, so an attack that works leaves at most chance accuracy."""
    big_eps, big_acc = curve[-1]
    chance = 1.0 / n_classes
    if big_eps < 0.5:
        return Check("chance_at_large_eps", Status.SKIP, f"largest eps in the grid is {big_eps:g} < 0.5",
                     _curve_values(curve, m))
    ok_chance = big_acc <= chance + tolerance(chance, m)
    return Check("chance_at_large_eps", Status.PASS if ok_chance else Status.FAIL,
                 f"accuracy at eps {big_eps:g} is {100 * big_acc:.2f} % (chance {100 * chance:.0f} %)"
                 + ("" if ok_chance else ": an unbounded attack must win; gradients are masked"),
                 {"eps": big_eps, "acc": big_acc, "chance": chance})


def _check_blackbox(inp: _CheckInputs) -> Check:
    """Square (gradient-free, run after the gradient components) breaks nothing the white-box attacks left."""
    if "square" not in inp.broken_by:
        return Check("blackbox", Status.SKIP, "Square not run (autoattack off or square not in components)", {})
    n, sq = inp.n, inp.broken_by["square"]
    attacked = int(inp.aa_stats.get("square", {}).get("attacked", 0))
    values = {"square_breaks_whitebox_survivors": sq, "square_attacked": attacked, "n": n}
    tol = tolerance(sq / max(n, 1), n)
    status = Status.FAIL if sq / max(n, 1) > tol else (Status.WARN if sq else Status.PASS)
    detail = f"Square broke {sq} of {attacked} samples the gradient attacks left"
    if sq:
        from_image, from_halfway = _pgd_towards_square(inp)
        values.update(pgd_from_image=from_image, pgd_from_halfway=from_halfway)
        hidden = (from_halfway - from_image) / sq > tolerance(from_image / sq, sq)
        detail += (f": black-box beats white-box, suspect gradient masking; PGD-{inp.cfg.strong_steps} re-finds "
                   f"{from_image} of them from the image, {from_halfway} from halfway along Square's perturbation"
                   + (" (they are there, but gradient ascent does not lead to them)" if hidden else ""))
    return Check("blackbox", status, detail, values)


def _pgd_towards_square(inp: _CheckInputs) -> tuple[int, int]:
    """How many of Square's extra examples one PGD run finds when started at the clean image and when started
    halfway along Square's perturbation: far more from halfway means the loss surface hides them from gradient
    ascent (masking), not that PGD had too few steps."""
    order = sorted(inp.square_found)
    strong = inp.cfg.strong_pgd(restarts=1)
    counts = [0, 0]
    for sl in _batches(len(order), inp.cfg.batch_size):
        idx = torch.tensor(order[sl], device=inp.x.device)
        x, y = inp.x[idx], inp.y[idx]
        found = torch.stack([inp.square_found[i] for i in order[sl]])
        for k, start in enumerate((x, x + 0.5 * (found - x))):
            out = pgd(inp.model, x, y, eps=strong.eps, alpha=strong.alpha, steps=strong.steps, start=start,
                      autocast=inp.autocast)
            counts[k] += int(out.fooled.sum())
    return counts[0], counts[1]


def _check_transfer(inp: _CheckInputs, whitebox: torch.Tensor, noise: torch.Tensor) -> Check:
    """Examples crafted on the undefended base break nothing white-box could not, and beat uniform noise.

    `whitebox` and `noise` are robust masks on the check subset.
    """
    if inp.base is None:
        return Check("transfer", Status.SKIP, "no undefended base model given to transfer from", {})
    m = inp.m
    tr = inp.subset_robust("transfer", inp.cfg.strong_pgd(restarts=1), crafter=inp.base)
    chk = _cmp_check("transfer", tr, whitebox, "transfer", "whitebox", m)
    acc_tr, acc_noise = _acc(tr), _acc(noise)
    chk.values["noise_acc"] = acc_noise
    if chk.status is Status.PASS and acc_tr > acc_noise + tolerance(acc_noise, m):
        return Check("transfer", Status.WARN, chk.detail + f"; but transfer ({100 * acc_tr:.2f} %) is weaker than "
                     f"noise ({100 * acc_noise:.2f} %)", chk.values)
    return chk


def _check_noise(noise: torch.Tensor, whitebox: torch.Tensor, m: int, draws: int) -> Check:
    """Uniform noise in the ball (robust mask `noise`) breaks nothing white-box could not (`whitebox`)."""
    chk = _cmp_check("noise", noise, whitebox, "noise", "whitebox", m)
    chk.values["draws"] = draws
    return chk


def _live(inp: _CheckInputs) -> torch.Tensor:
    """Indices of the check subset's clean-correct samples."""
    return inp.oks.nonzero().squeeze(1)


_NO_LIVE = "no correctly classified sample in the check subset"


def _check_loss_rises(inp: _CheckInputs) -> Check:
    """Mean cross-entropy of one-restart PGD (at most 20 steps, every sample attacked to the last step) rises
    from the random start to the final iterate."""
    live = _live(inp)
    if not live.numel():
        return Check("loss_rises", Status.SKIP, _NO_LIVE, {})
    attack = inp.cfg.strong_pgd(steps=min(inp.cfg.strong_steps, 20), restarts=1)
    means: list[torch.Tensor] = []
    run_attack(inp.model, inp.xs[live], inp.ys[live], dataclasses.replace(attack, last_iterate=True),
               generator=inp.gen, on_step=lambda _step, loss, _idx: means.append(loss.mean()))
    trace = [float(v) for v in torch.stack(means).tolist()]  # the start, then after each step
    finite = all(math.isfinite(v) for v in trace)
    up = finite and trace[-1] > trace[0] + 1e-6
    return Check("loss_rises", Status.PASS if up else (Status.FAIL if not finite else Status.WARN),
                 f"mean CE {trace[0]:.4g} at the start -> {trace[-1]:.4g} after {len(trace) - 1} steps"
                 + ("" if up else ": the attack does not climb the loss"), {"trace": trace})


def _check_gradients(inp: _CheckInputs) -> Check:
    """Input gradients are non-zero, the outputs are logits and the model is deterministic."""
    live = _live(inp)
    if not live.numel():
        return Check("gradients", Status.SKIP, _NO_LIVE, {})
    health = _gradient_health(inp.model, inp.xs[live], inp.ys[live])
    problems = []
    if health["zero_grad_fraction"] > 0:
        problems.append(f"{100 * health['zero_grad_fraction']:.1f} % of samples have an all-zero input gradient")
    if health["outputs_look_like_probabilities"]:
        problems.append("the model outputs probabilities, not logits")
    if not health["deterministic"]:
        problems.append("two forward passes differ (randomised model: use EOT)")
    status = Status.PASS if not problems else (
        Status.FAIL if health["zero_grad_fraction"] > tolerance(0.0, live.numel()) else Status.WARN)
    return Check("gradients", status, "; ".join(problems) or "non-zero input gradients, logits, deterministic", health)


def _check_loss_diversity(broken_by: Mapping[str, int], n: int) -> Check:
    """APGD-T (DLR loss, scale-invariant) adds few breaks after APGD-CE; many means the CE loss is blunted."""
    if "apgd-t" not in broken_by or "apgd-ce" not in broken_by:
        return Check("loss_diversity", Status.SKIP, "needs AutoAttack with apgd-ce and apgd-t", {})
    extra = broken_by["apgd-t"]
    tol = tolerance(extra / max(n, 1), n)
    values = {"apgd_t_after_apgd_ce": extra, "n": n, "tolerance": tol}
    status = Status.WARN if extra / max(n, 1) > tol else Status.PASS
    return Check("loss_diversity", status, f"APGD-T (DLR loss) broke {extra} samples APGD-CE left"
                 + (": cross-entropy attacks are blunted (logit scale?); trust the DLR number"
                    if status is Status.WARN else ""), values)
