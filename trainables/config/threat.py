"""How robustness is measured: one attack (`AttackCfg`), a study's per-epoch objective (`ObjectiveCfg`) and the
strong-attack audit (`AuditCfg`). Budgets and step sizes are in [0, 1] pixel units; normalisation lives inside
the model.

Madry's step rule, alpha = 2.5 eps / steps (so the iterates can cross the whole ball: alpha x steps >= 2 eps), is
`madry_alpha`, the one place it is written.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from trainables.config.spine import Count, Flag, Settings, Unit
from trainables.vocab import (
    DEFAULT_EPS_GRID,
    PAPER_ALPHA,
    PAPER_STEPS,
    AttackName,
    Component,
    Dataset,
    EvalSplit,
    ExtraObjective,
    Objective,
    default_eps,
)


def madry_alpha(eps: float, steps: int) -> float:
    """Madry et al.'s step size for a `steps`-step PGD at `eps`: 2.5 eps / steps, at most 1."""
    return min(1.0, 2.5 * eps / steps)


def reaches(alpha: float, steps: int, eps: float) -> bool:
    """Whether `steps` steps of `alpha` can reach the budget's edge from the start (eps)."""
    return alpha * steps >= eps - 1e-9


class AttackCfg(Settings):
    """One white-box L-inf attack: FGSM, IFGSM (BIM) or PGD (random start), by default at the paper's alpha and
    steps. A sample counts as broken if any iterate fools the model, unless `last_iterate`."""

    name: AttackName = Field(AttackName.PGD, description="attack")
    eps: Unit = Field(description="L-inf budget, pixel units")
    alpha: Unit = Field(PAPER_ALPHA, description="step size per iteration, pixel units (ifgsm, pgd)")
    steps: Count = Field(PAPER_STEPS, description="iterations (ifgsm, pgd)")
    restarts: Count = Field(1, description="pgd: random starts; a sample is broken if any of them fools the model")
    last_iterate: Flag = Field(False, description="count only the final iterate (the classic number), not any iterate")

    @property
    def label(self) -> str:
        """Stable key such as `pgd10`, `pgd100x5` or `fgsm`."""
        if self.name in (AttackName.CLEAN, AttackName.FGSM):
            return str(self.name.value)
        suffix = f"x{self.restarts}" if self.restarts > 1 else ""
        return f"{self.name.value}{self.steps}{suffix}"

    @property
    def reaches_eps(self) -> bool:
        """Whether its iterates can reach the budget's edge (FGSM's one step of eps always does)."""
        return self.name in (AttackName.CLEAN, AttackName.FGSM) or reaches(self.alpha, self.steps, self.eps)

    def describe(self) -> dict[str, Any]:
        if self.name is AttackName.CLEAN:
            return {"name": "clean"}
        out: dict[str, Any] = {"name": self.name.value, "eps": self.eps}
        if self.name is not AttackName.FGSM:
            out.update(alpha=self.alpha, steps=self.steps, random_start=self.name is AttackName.PGD)
            if self.name is AttackName.PGD:
                out["restarts"] = self.restarts
        out["counted"] = "last_iterate" if self.last_iterate else "any_iterate"
        return out


def strong_pgd(eps: float, steps: int, restarts: int = 1) -> AttackCfg:
    """PGD at Madry's step size: the iterates can cross the whole ball."""
    return AttackCfg(name=AttackName.PGD, eps=eps, alpha=madry_alpha(eps, steps), steps=steps, restarts=restarts)


def paper_attacks(dataset: Dataset, names: tuple[AttackName | str, ...] | None = None, *,
                  eps: float | None = None) -> list[AttackCfg]:
    """The paper's attacks for `dataset` (clean, FGSM, IFGSM, PGD-10 by default) at alpha 0.01 and 10 steps, at
    `eps` (None: the paper's eps for the data set, 8/255 for one it does not cover)."""
    eps = eps if eps is not None else default_eps(dataset)
    return [AttackCfg(name=AttackName(n), eps=eps) for n in (names or tuple(AttackName))]


EpsList = tuple[Unit, ...]


class ObjectiveCfg(Settings):
    """What a study's trials score each epoch on the validation subset, and what Optuna and the scheduler maximise.

    pgd_acc: worst-case PGD accuracy at (eps, alpha, steps), by default Madry's alpha, so the attack can reach its
    budget; the paper's PGD-10 (alpha 0.01) is reported beside it as val_paper_pgd_acc. robust_auc: the mean over
    `eps_grid` (alpha = Madry's at each eps), which keeps a signal where one eps is flat.
    """

    metric: Objective = Field(Objective.PGD_ACC, description="pgd_acc or robust_auc")
    eps: Unit | None = Field(None, description="PGD budget (null: the paper's eps for the data set, 8/255 for "
                                                       "imagefolder)")
    alpha: Unit | None = Field(None, description="PGD step size (null: Madry's 2.5 eps / steps)")
    steps: Count = Field(PAPER_STEPS, description="PGD iterations")
    restarts: Count = Field(1, description="PGD random starts; a sample is robust only if it survives every one")
    eps_grid: Annotated[EpsList, Field(min_length=1)] = Field(
        DEFAULT_EPS_GRID, description="budgets of robust_auc and of each trial's accuracy-vs-eps curve")
    multi_objective: Flag | tuple[ExtraObjective, ...] = Field(
        False, description="optimise more than the objective, for a Pareto front: true = [clean], or a list of "
                           "clean (validation accuracy) and cost (training forward passes, minimised)")

    @field_validator("multi_objective", mode="before")
    @classmethod
    def _extras(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        names = [getattr(v, "value", v) for v in value] if isinstance(value, (list, tuple)) else None
        allowed = [e.value for e in ExtraObjective]
        if not names or len(set(names)) != len(names) or any(v not in allowed for v in names):
            raise ValueError(f"must be true, false or a list of distinct {', '.join(allowed)}, got "
                             f"{names if names is not None else value!r}")
        return value

    @property
    def extra_objectives(self) -> tuple[ExtraObjective, ...]:
        """What the study optimises beside the objective (empty: a single-objective study)."""
        m = self.multi_objective
        if isinstance(m, bool):
            return (ExtraObjective.CLEAN,) if m else ()
        return tuple(m)

    def resolved(self, dataset: Dataset) -> ObjectiveCfg:
        """eps and alpha filled in: the paper's eps for `dataset` (8/255 where it has none), Madry's step size."""
        eps = self.eps if self.eps is not None else default_eps(dataset)
        return self.replace(eps=eps, alpha=self.alpha if self.alpha is not None else madry_alpha(eps, self.steps))

    def pgd(self) -> AttackCfg:
        """The objective's attack (resolve first)."""
        assert self.eps is not None and self.alpha is not None, "resolve the objective first (ObjectiveCfg.resolved)"
        return AttackCfg(name=AttackName.PGD, eps=self.eps, alpha=self.alpha, steps=self.steps, restarts=self.restarts)

    def paper_pgd(self) -> AttackCfg:
        """The paper's PGD-10 (alpha 0.01) at the objective's eps: reported beside it, never optimised."""
        return AttackCfg(name=AttackName.PGD, eps=self.pgd().eps)

    def grid(self) -> list[AttackCfg]:
        return [strong_pgd(e, self.steps) for e in self.eps_grid]


class AuditCfg(Settings):
    """The strong-attack audit: the paper's attacks, a strong PGD and AutoAttack on one fixed set of images, their
    per-sample worst case (the number to quote) and the gradient-masking checks."""

    enabled: Flag = Field(False, description="a study: audit the best trial(s) and the base at the end")
    eps: Annotated[EpsList, Field(min_length=1)] | None = Field(
        None, description="budgets audited (null: a study's objective eps; `patchtune audit`: the paper's eps for "
                          "the data set, 8/255 for imagefolder)")
    split: EvalSplit = Field(EvalSplit.TEST, description="split audited")
    limit: Count | None = Field(500, description="images audited, the first of the split (null: all)")
    strong_steps: Count = Field(100, description="strong PGD iterations (alpha = Madry's 2.5 eps / steps)")
    strong_restarts: Count = Field(5, description="strong PGD random starts")
    autoattack: Flag = Field(True, description="run AutoAttack (and with it the Square and DLR-loss checks)")
    components: Annotated[tuple[Component, ...], Field(min_length=1)] = Field(
        tuple(Component), description="AutoAttack components, in this order (all four: the standard version)")
    apgd_steps: Count = Field(100, description="APGD-CE / APGD-T / FAB-T iterations (100: the reference; lower only "
                                               "for smoke tests)")
    square_queries: Count = Field(5000, description="Square's queries (5000: the reference)")
    reattack_queries: Count = Field(20000, description="Square's queries when it re-attacks the worst case's survivors "
                                                       "after breaking what every gradient attack left (4x the "
                                                       "reference's 5000)")
    reattack_restarts: Count = Field(5, description="APGD-T restarts on the samples only Square broke")
    sweep_eps: EpsList = Field((), description="budgets of the eps-sweep checks (empty: eps/4, eps/2, eps, 2 eps, "
                                               "0.5)")
    sweep_steps: Count = Field(50, description="PGD iterations of the eps sweep")
    noise_draws: Count = Field(100, description="uniform-noise draws per image of the noise check")
    check_limit: Count = Field(200, description="images of the costlier checks (the first of the audited ones)")
    batch_size: Count = Field(250, description="images per attack batch")
    seed: Annotated[int, Field(strict=True)] = Field(0, description="seed of every random start and AutoAttack "
                                                                    "component")

    @field_validator("components", mode="before")
    @classmethod
    def _distinct(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(set(map(str, value))) != len(value):
            raise ValueError(f"lists a component twice: {list(value)}")
        return value

    def budgets(self, dataset: Dataset) -> tuple[float, ...]:
        return self.eps if self.eps is not None else (default_eps(dataset),)

    def strong(self, eps: float, steps: int | None = None, restarts: int | None = None) -> AttackCfg:
        """The strong PGD at `eps` (by default `strong_steps` x `strong_restarts`)."""
        return strong_pgd(eps, steps or self.strong_steps, restarts or self.strong_restarts)

    def paper(self, eps: float) -> dict[str, AttackCfg]:
        """The paper's attacks at `eps` (alpha 0.01, 10 steps), by row name."""
        return {"paper_fgsm": AttackCfg(name=AttackName.FGSM, eps=eps),
                "paper_ifgsm10": AttackCfg(name=AttackName.IFGSM, eps=eps),
                "paper_pgd10": AttackCfg(name=AttackName.PGD, eps=eps)}

    def sweep(self, eps: float) -> tuple[float, ...]:
        if self.sweep_eps:
            return tuple(sorted(self.sweep_eps))
        return tuple(sorted({round(min(1.0, e), 6) for e in (eps / 4, eps / 2, eps, 2 * eps, 0.5)}))
