"""What an audit returns: one `Row` per attack, one `Check` per masking check, and the `AuditReport` that holds
them (`as_dict` is the `patchtune-audit/1` JSON that `patchtune audit --out` and a study's audit.json hold)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from trainables.intervals import wilson
from trainables.vocab import Name, encode_outcomes


class CheckStatus(Name):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


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
    status: CheckStatus
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
    def verdict(self) -> CheckStatus:
        statuses = {c.status for c in self.checks}
        if not statuses:
            return CheckStatus.SKIP
        for s in (CheckStatus.FAIL, CheckStatus.WARN):
            if s in statuses:
                return s
        return CheckStatus.PASS

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


def tolerance(p: float, n: int) -> float:
    """Differences below this are noise: one sample, 0.5 pt, or two binomial standard errors."""
    return max(1.0 / max(n, 1), 0.005, 2 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)))


