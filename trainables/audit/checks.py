"""The audit's gradient-masking checks (Carlini et al. 2019, arXiv:1902.06705, and AutoAttack's own flags), each a
small function returning a `Check` with its PASS / WARN / FAIL / SKIP status and the numbers behind it. They
share the audited model, images and per-sample attack results through `CheckInputs`; the attacks behind them
run through the one robust-mask loop (`trainables.evaluation.robust_masks`), drawing their random starts from
one generator in a fixed order, so a report is reproducible."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks import eval_mode, pgd, random_start, run_attack
from trainables.audit.records import Check, CheckStatus, Row, tolerance
from trainables.config import AttackCfg, AuditCfg
from trainables.evaluation import Probe, robust_masks
from trainables.perf import Autocast
from trainables.strong_attacks import autoattack_cfg, run_component


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


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
        status = CheckStatus.FAIL if fail else CheckStatus.WARN
        detail = (f"{weaker_name} breaks {extra} samples that {stronger_name} does not "
                  f"({100 * acc_w:.2f} % vs {100 * acc_s:.2f} %): the white-box attack is weakened, suspect gradient masking")
    elif extra:
        status = CheckStatus.WARN
        detail = f"{weaker_name} breaks {extra} samples {stronger_name} does not (within noise)"
    else:
        status = CheckStatus.PASS
        detail = f"{stronger_name} {100 * acc_s:.2f} % <= {weaker_name} {100 * acc_w:.2f} %, per sample"
    return Check(name, status, detail, values)


@dataclasses.dataclass(frozen=True, eq=False)
class CheckInputs:
    """What the checks share: the audited model and images, and the per-sample results of the attack rows."""

    model: nn.Module
    cfg: AuditCfg
    eps: float
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
        probe = attack if crafter is None else Probe(attack, crafter=crafter)
        masks = robust_masks(self.model, (self.xs, self.ys), {name: probe}, device=self.x.device,
                             batch_size=self.cfg.batch_size, generator=self.gen, autocast=self.autocast)
        return masks[name].to(self.x.device)


def _acc(robust: torch.Tensor) -> float:
    return float(robust.float().mean())


def run_checks(inp: CheckInputs) -> list[Check]:
    """Every check, in report order. The attacks behind them draw their random starts from one generator, so
    they run in a fixed order (steps, eps sweep, noise, transfer, loss trace) and the report is reproducible."""
    r_t1 = inp.subset_robust("t1", inp.cfg.strong(inp.eps, restarts=1))
    steps = _check_steps(inp, r_t1)
    sweep = _eps_sweep(inp)
    whitebox = inp.robust[inp.strong_name].clone()
    for k in ("paper_fgsm", "paper_ifgsm10", "paper_pgd10"):
        whitebox &= inp.robust[k]
    noise = _noise_robust(inp.model, inp.xs, inp.ys, inp.oks, inp.eps, inp.cfg.noise_draws, inp.gen,
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
        _check_loss_diversity(inp.broken_by, int(inp.aa_stats.get("apgd-t", {}).get("attacked", 0)), inp.n),
    ]


def _check_budget(inp: CheckInputs) -> Check:
    """Every returned example lies in the threat set; strong attacks' survivors were pushed to its edge."""
    eps = inp.eps
    over = {r.name: r.max_linf for r in inp.rows if not (r.max_linf <= eps + 1e-6)}
    aa_over = {c: s["raw_max_linf"] for c, s in inp.aa_stats.items()
               if s["raw_max_linf"] > eps + 1e-6 or s["nonfinite"]}
    measured = {r.name: r.max_linf for r in inp.rows if r.name != "clean"}
    short = {r.name: r.survivor_max_linf for r in inp.rows
             if r.survivor_max_linf is not None and r.survivor_max_linf < 0.9 * eps and r.name.startswith("strong")}
    if over:
        return Check("budget", CheckStatus.FAIL, f"examples outside the eps={eps:g} ball: {over}", {"max_linf": measured})
    if aa_over:
        return Check("budget", CheckStatus.WARN, f"AutoAttack components returned out-of-budget or non-finite "
                     f"examples (projected before scoring): {aa_over}", {"max_linf": measured, "raw": aa_over})
    if short:
        return Check("budget", CheckStatus.WARN, f"strong attacks left survivors well inside the ball: {short}",
                     {"max_linf": measured})
    return Check("budget", CheckStatus.PASS, f"every example within eps={eps:g} and [0, 1]; measured max |delta| "
                 + ", ".join(f"{k} {v:.3g}" for k, v in measured.items()), {"max_linf": measured})


def _check_iterative_vs_single(inp: CheckInputs) -> Check:
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


def _check_steps(inp: CheckInputs, r_t1: torch.Tensor) -> Check:
    """Doubling the steps of one-restart strong PGD (robust mask `r_t1` on the check subset) changes nothing."""
    cfg, m = inp.cfg, inp.m
    steps = cfg.strong(inp.eps, restarts=1).steps
    r_2t1 = inp.subset_robust("2t1", cfg.strong(inp.eps, steps=2 * cfg.strong_steps, restarts=1))
    acc_t1, acc_2t1 = _acc(r_t1), _acc(r_2t1)
    tol = tolerance(acc_t1, m)
    values: dict[str, Any] = {f"pgd{steps}_acc": acc_t1, f"pgd{2 * steps}_acc": acc_2t1, "n": m, "tolerance": tol}
    if acc_2t1 > acc_t1 + tol:
        return Check("steps", CheckStatus.FAIL, f"doubling PGD steps raised accuracy {100 * acc_t1:.2f} -> "
                     f"{100 * acc_2t1:.2f} %: the attack is unreliable on this model", values)
    if acc_2t1 < acc_t1 - tol:
        return Check("steps", CheckStatus.WARN, f"doubling PGD steps lowered accuracy {100 * acc_t1:.2f} -> "
                     f"{100 * acc_2t1:.2f} %: not converged; raise strong_steps", values)
    return Check("steps", CheckStatus.PASS, f"PGD-{steps} {100 * acc_t1:.2f} % vs PGD-{2 * steps} "
                 f"{100 * acc_2t1:.2f} % (converged)", values)


def _check_restarts(inp: CheckInputs, r_t1: torch.Tensor) -> Check:
    """The strong row's restarts lower accuracy at most by noise against one restart (`r_t1`)."""
    cfg, m = inp.cfg, inp.m
    acc_t1, acc_r = _acc(r_t1), _acc(inp.robust[inp.strong_name][:m])
    tol = tolerance(acc_t1, m)
    values = {"restarts_1_acc": acc_t1, f"restarts_{cfg.strong_restarts}_acc": acc_r, "n": m, "tolerance": tol}
    if acc_r < acc_t1 - tol:
        return Check("restarts", CheckStatus.WARN, f"{cfg.strong_restarts} restarts lowered accuracy "
                     f"{100 * acc_t1:.2f} -> {100 * acc_r:.2f} %: raise strong_restarts", values)
    return Check("restarts", CheckStatus.PASS, f"1 restart {100 * acc_t1:.2f} % vs {cfg.strong_restarts} "
                 f"{100 * acc_r:.2f} %", values)


def _eps_sweep(inp: CheckInputs) -> list[tuple[float, torch.Tensor]]:
    """(eps, per-sample robust mask on the check subset) under one-restart PGD of `sweep_steps`, by increasing
    eps."""
    cfg = inp.cfg
    sweep = {e: inp.subset_robust(f"eps{e:g}", cfg.strong(e, steps=cfg.sweep_steps, restarts=1))
             for e in cfg.sweep(inp.eps)}
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
            return Check("eps_monotone", CheckStatus.FAIL,
                         f"from eps {a:g} to {b:g}, {missed} samples broken at the smaller survive the larger "
                         f"({100 * _acc(ra):.1f} -> {100 * _acc(rb):.1f} %): the attack weakens as eps grows",
                         values)
    return Check("eps_monotone", CheckStatus.PASS, "accuracy non-increasing in eps, per sample up to noise: "
                 + ", ".join(f"{e:g}: {100 * a:.1f} %" for e, a in curve), values)


def _check_chance_at_large_eps(curve: Sequence[tuple[float, float]], m: int, n_classes: int) -> Check:
    """At eps 0.5 any image can become grey, so an attack that works leaves at most chance accuracy."""
    big_eps, big_acc = curve[-1]
    chance = 1.0 / n_classes
    if big_eps < 0.5:
        return Check("chance_at_large_eps", CheckStatus.SKIP, f"largest eps in the grid is {big_eps:g} < 0.5",
                     _curve_values(curve, m))
    ok_chance = big_acc <= chance + tolerance(chance, m)
    return Check("chance_at_large_eps", CheckStatus.PASS if ok_chance else CheckStatus.FAIL,
                 f"accuracy at eps {big_eps:g} is {100 * big_acc:.2f} % (chance {100 * chance:.0f} %)"
                 + ("" if ok_chance else ": an unbounded attack must win; gradients are masked"),
                 {"eps": big_eps, "acc": big_acc, "chance": chance})


# The grades of `blackbox` and `loss_diversity`: how large a surplus honest models show (docs/guide/audit.md,
# "Calibration"). Square breaks 10-27 % of the samples every gradient attack left on PGD-AT models whose worst case
# matches the reference's AutoAttack (make control: 16 %), ~1.5 % on Madry's MNIST model, and 58-100 % on masked
# ones (TRADES fine-tuned at eps 0.3: 58 %; CLP's MNIST model: 90 %; an input quantisation: all of them).
SQUARE_LARGE = 0.4
# APGD-T breaks 6 % of what APGD-CE left on make control's model (17 of 293), and most of it where cross-entropy is
# blunted (a logit scale of 1e4, tests/test_audit.py).
DLR_LARGE = 0.25


def _check_blackbox(inp: CheckInputs) -> Check:
    """Square (gradient-free, run after the gradient components) breaks few of the samples every gradient attack
    left, and a stronger re-attack does not move the worst case: graded as AutoAttack's own `check_square_sr`
    advises. PASS: no surplus beyond one sample's noise. WARN: a surplus the worst case already counts. FAIL: a
    large surplus (more than SQUARE_LARGE of the gradient attacks' survivors), or a re-attack (Square with more
    queries, from another seed) that moves the worst case beyond its noise, so it has not converged."""
    if "square" not in inp.broken_by:
        return Check("blackbox", CheckStatus.SKIP, "Square not run (autoattack off or square not in components)", {})
    n = inp.n
    only_square = torch.zeros(n, dtype=torch.bool, device=inp.x.device)
    only_square[list(inp.square_found)] = True
    gradient = inp.ok & (inp.robust["autoattack"] | only_square)  # left by AutoAttack's gradient components
    for name, mask in inp.robust.items():
        if name != "autoattack":
            gradient &= mask
    surplus = only_square & gradient
    worst = gradient & ~only_square
    k, left = int(surplus.sum()), int(gradient.sum())
    share = k / max(left, 1)
    values: dict[str, Any] = {"square_breaks_whitebox_survivors": k, "whitebox_survivors": left, "share": share,
                              "overstated_by": k / max(n, 1), "n": n}
    if grade_square_surplus(k, left, n) is CheckStatus.PASS:
        return Check("blackbox", CheckStatus.PASS, f"Square broke {k} of the {left} samples every gradient attack "
                     "left" + (" (within one sample's noise)" if k else ""), values)
    from_image, from_halfway = _pgd_towards_square(inp, surplus)
    # the re-attacks, on the check subset (the costlier checks' images): Square's 4x queries dominate the audit's time
    m = inp.m
    sub_surplus, sub_worst = surplus[:m], worst[:m]
    refound = _reattack(inp, "apgd-t", sub_surplus)
    moved, kept = _reattack(inp, "square", sub_worst), int(sub_worst.sum())
    tol = tolerance(kept / max(m, 1), m)
    values.update(pgd_from_image=from_image, pgd_from_halfway=from_halfway, reattack_images=m,
                  apgd_t_refinds=refound, apgd_t_reattacked=int(sub_surplus.sum()), reattack_breaks=moved,
                  reattack_survivors=kept, worst_case_noise=tol)
    detail = (f"Square broke {k} of the {left} samples every gradient attack left ({100 * share:.0f} %): the "
              f"gradient attacks alone overstate the model by {100 * k / n:.1f} pt, and the worst case counts them. "
              f"PGD-{inp.cfg.strong_steps} re-finds {from_image} of them from the image, {from_halfway} from halfway "
              f"along Square's perturbation. Re-attacked on the first {m} images: APGD-T with "
              f"{inp.cfg.reattack_restarts} more restarts re-finds {refound} of their {int(sub_surplus.sum())}; "
              f"Square with {inp.cfg.reattack_queries} queries from another seed breaks {moved} more of "
              f"their {kept} survivors ({100 * moved / max(m, 1):.1f} pt")
    status = grade_square_surplus(k, left, n, moved, kept, m)
    if status is CheckStatus.FAIL and moved / max(m, 1) > tol:
        detail += (f", beyond the worst case's noise of {100 * tol:.1f} pt: it has not converged, and is at most "
                   f"{100 * (kept - moved) / max(m, 1):.2f} % on them)")
    else:
        detail += f", within its noise of {100 * tol:.1f} pt)"
        detail += (f"; a surplus above {100 * SQUARE_LARGE:.0f} % of the gradient attacks' survivors is what "
                   "gradient-masked models show: suspect masking" if status is CheckStatus.FAIL else
                   "; a surplus of this size is what honest models of the reference's quality show "
                   "(docs/guide/audit.md, Calibration)")
    return Check("blackbox", status, detail, values)


def grade_square_surplus(surplus: int, left: int, n: int, moved: int = 0, survivors: int = 0,
                         m: int = 1) -> CheckStatus:
    """`blackbox`'s grade: Square broke `surplus` of the `left` samples every gradient attack left (of `n`); the
    re-attack on `m` of the images broke `moved` of the worst case's `survivors` among them."""
    if surplus <= max(1.0, 0.005 * n):
        return CheckStatus.PASS
    if moved / m > tolerance(survivors / m, m) or surplus / max(left, 1) > SQUARE_LARGE:
        return CheckStatus.FAIL
    return CheckStatus.WARN


def _reattack(inp: CheckInputs, component: str, which: torch.Tensor) -> int:
    """How many of the samples `which` one AutoAttack component breaks at a re-attack's strength, from another
    seed: APGD-T with `reattack_restarts` restarts, Square with `reattack_queries` queries."""
    cfg = autoattack_cfg(inp.cfg, inp.eps)
    cfg = dataclasses.replace(cfg, seed=cfg.seed + 1, apgd_restarts=inp.cfg.reattack_restarts,
                              square_queries=inp.cfg.reattack_queries)
    idx = which.nonzero().squeeze(1)
    return sum(int(run_component(component, inp.model, inp.x[idx[sl]], inp.y[idx[sl]], cfg,
                                 n_classes=inp.n_classes).fooled.sum()) for sl in batches(idx.numel(), inp.cfg.batch_size))


def _pgd_towards_square(inp: CheckInputs, which: torch.Tensor) -> tuple[int, int]:
    """How many of Square's extra examples (the samples `which`) one PGD run finds when started at the clean
    image and when started halfway along Square's perturbation: far more from halfway means the loss surface
    hides them from gradient ascent (masking), not that PGD had too few steps."""
    order = which.nonzero().squeeze(1).tolist()
    strong = inp.cfg.strong(inp.eps, restarts=1)
    counts = [0, 0]
    for sl in batches(len(order), inp.cfg.batch_size):
        idx = torch.tensor(order[sl], device=inp.x.device)
        x, y = inp.x[idx], inp.y[idx]
        found = torch.stack([inp.square_found[i] for i in order[sl]])
        for k, start in enumerate((x, x + 0.5 * (found - x))):
            out = pgd(inp.model, x, y, eps=strong.eps, alpha=strong.alpha, steps=strong.steps, start=start,
                      autocast=inp.autocast)
            counts[k] += int(out.fooled.sum())
    return counts[0], counts[1]


def _check_transfer(inp: CheckInputs, whitebox: torch.Tensor, noise: torch.Tensor) -> Check:
    """Examples crafted on the undefended base break nothing white-box could not, and beat uniform noise.

    `whitebox` and `noise` are robust masks on the check subset.
    """
    if inp.base is None:
        return Check("transfer", CheckStatus.SKIP, "no undefended base model given to transfer from", {})
    m = inp.m
    tr = inp.subset_robust("transfer", inp.cfg.strong(inp.eps, restarts=1), crafter=inp.base)
    chk = _cmp_check("transfer", tr, whitebox, "transfer", "whitebox", m)
    acc_tr, acc_noise = _acc(tr), _acc(noise)
    chk.values["noise_acc"] = acc_noise
    if chk.status is CheckStatus.PASS and acc_tr > acc_noise + tolerance(acc_noise, m):
        return Check("transfer", CheckStatus.WARN, chk.detail + f"; but transfer ({100 * acc_tr:.2f} %) is weaker than "
                     f"noise ({100 * acc_noise:.2f} %)", chk.values)
    return chk


def _check_noise(noise: torch.Tensor, whitebox: torch.Tensor, m: int, draws: int) -> Check:
    """Uniform noise in the ball (robust mask `noise`) breaks nothing white-box could not (`whitebox`)."""
    chk = _cmp_check("noise", noise, whitebox, "noise", "whitebox", m)
    chk.values["draws"] = draws
    return chk


def _live(inp: CheckInputs) -> torch.Tensor:
    """Indices of the check subset's clean-correct samples."""
    return inp.oks.nonzero().squeeze(1)


_NO_LIVE = "no correctly classified sample in the check subset"


def _check_loss_rises(inp: CheckInputs) -> Check:
    """Mean cross-entropy of one-restart PGD (at most 20 steps, every sample attacked to the last step) rises
    from the random start to the final iterate."""
    live = _live(inp)
    if not live.numel():
        return Check("loss_rises", CheckStatus.SKIP, _NO_LIVE, {})
    attack = inp.cfg.strong(inp.eps, steps=min(inp.cfg.strong_steps, 20), restarts=1)
    means: list[torch.Tensor] = []
    run_attack(inp.model, inp.xs[live], inp.ys[live], attack.replace(last_iterate=True),
               generator=inp.gen, on_step=lambda _step, loss, _idx: means.append(loss.mean()))
    trace = [float(v) for v in torch.stack(means).tolist()]  # the start, then after each step
    finite = all(math.isfinite(v) for v in trace)
    up = finite and trace[-1] > trace[0] + 1e-6
    return Check("loss_rises", CheckStatus.PASS if up else (CheckStatus.FAIL if not finite else CheckStatus.WARN),
                 f"mean CE {trace[0]:.4g} at the start -> {trace[-1]:.4g} after {len(trace) - 1} steps"
                 + ("" if up else ": the attack does not climb the loss"), {"trace": trace})


def _check_gradients(inp: CheckInputs) -> Check:
    """Input gradients are non-zero, the outputs are logits and the model is deterministic."""
    live = _live(inp)
    if not live.numel():
        return Check("gradients", CheckStatus.SKIP, _NO_LIVE, {})
    health = _gradient_health(inp.model, inp.xs[live], inp.ys[live])
    problems = []
    if health["zero_grad_fraction"] > 0:
        problems.append(f"{100 * health['zero_grad_fraction']:.1f} % of samples have an all-zero input gradient")
    if health["outputs_look_like_probabilities"]:
        problems.append("the model outputs probabilities, not logits")
    if not health["deterministic"]:
        problems.append("two forward passes differ (randomised model: use EOT)")
    status = CheckStatus.PASS if not problems else (
        CheckStatus.FAIL if health["zero_grad_fraction"] > tolerance(0.0, live.numel()) else CheckStatus.WARN)
    return Check("gradients", status, "; ".join(problems) or "non-zero input gradients, logits, deterministic", health)


def _check_loss_diversity(broken_by: Mapping[str, int], attacked: int, n: int) -> Check:
    """APGD-T (DLR loss, scale-invariant) adds few breaks after APGD-CE, which attacked `attacked` samples:
    PASS up to DLR_LARGE of them (what the targeted loss adds on honest models), WARN above (cross-entropy is
    blunted; the worst case counts the DLR breaks)."""
    if "apgd-t" not in broken_by or "apgd-ce" not in broken_by:
        return Check("loss_diversity", CheckStatus.SKIP, "needs AutoAttack with apgd-ce and apgd-t", {})
    extra = broken_by["apgd-t"]
    share = extra / max(attacked, 1)
    values = {"apgd_t_after_apgd_ce": extra, "apgd_ce_survivors": attacked, "share": share, "n": n}
    large = extra > max(1.0, 0.005 * n) and share > DLR_LARGE
    return Check("loss_diversity", CheckStatus.WARN if large else CheckStatus.PASS,
                 f"APGD-T (DLR loss) broke {extra} of the {attacked} samples APGD-CE left ({100 * share:.0f} %)"
                 + (f": more than {100 * DLR_LARGE:.0f} %, cross-entropy attacks are blunted (logit scale?); trust the "
                    "DLR number" if large else ""), values)


def _noise_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ok: torch.Tensor, eps: float, draws: int,
                  generator: torch.Generator, batch_size: int) -> torch.Tensor:
    """Per sample: correct on the clean image and on every one of `draws` uniform-noise images in the ball."""
    robust = ok.clone()
    with torch.no_grad(), eval_mode(model):
        for _ in range(draws):
            alive = robust.nonzero().squeeze(1)
            for sl in batches(alive.numel(), batch_size):
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
