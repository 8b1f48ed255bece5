"""The reproduction grid as data: which models `patchtune reproduce` trains per seed, and what each one is.

Each cell says how its model is made (optimizer, patch augmentation, adversarial-training attack, long or
short budget, or a robust fine-tuning method) and which column of the paper's tables it reproduces, if any.
Beside the paper's cells, the grid holds robust fine-tuning methods (trainables/methods.py) x optimizers:
the paper's optimizer question asked where there is robustness to explain. The Ray trainable reads the `recipe`
fields; the results carry the descriptive ones (`columns()`), so `analysis/` derives every table and plot
from the data instead of from method names. No torch, no Ray.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from trainables.config import MethodCfg
from trainables.vocab import (
    METHOD_LABELS,
    METHOD_PARAMS,
    OPTIMIZER_LABELS,
    AttackName,
    Defense,
    Method,
    Optimizer,
    at_defense,
)


@dataclasses.dataclass(frozen=True)
class Cell:
    method: str  # the results' `method` key
    label: str  # how tables and figures name it
    optimizer: Optimizer | None  # None: the base model itself, not trained further
    augment: bool = False  # the paper's patch augmentation (clean (+) patch-modified batches)
    adversarial: AttackName | None = None  # adversarial training on this attack at the paper's parameters
    long: bool = False  # the long fine-tuning budget (the paper fine-tuned for 20 GPU-minutes)
    table1_column: str | None = None  # the paper's Table 1 column this cell reproduces
    table2_column: str | None = None  # the paper's Table 2 column this cell reproduces
    robust: MethodCfg | None = None  # a robust fine-tuning method, trained at the data set's paper eps

    @property
    def defense(self) -> str:
        if self.robust is not None:
            return Defense.ROBUST.value
        if self.adversarial is not None:
            return at_defense(self.adversarial)
        return Defense.PATCH.value if self.augment else Defense.NONE.value

    def recipe(self) -> dict[str, Any]:
        """What the trainable needs to build the model (plain values: it travels in Tune's config)."""
        return {"method": self.method, "optimizer": self.optimizer.value if self.optimizer else None,
                "augment": self.augment, "adversarial": self.adversarial.value if self.adversarial else None,
                "long": self.long, "robust": self.robust.describe() if self.robust else None}

    @property
    def finetune(self) -> str | None:
        """The fine-tuning method in the trainables' vocabulary (None: the base, or a paper AT baseline)."""
        if self.robust is not None:
            return self.robust.method.value
        return Method.PATCH.value if self.augment else None

    def columns(self) -> dict[str, Any]:
        """What the results rows carry about the cell, beside its scores."""
        return {"method": self.method, "method_label": self.label, "defense": self.defense,
                "optimizer": self.optimizer.value if self.optimizer else None, "long": self.long,
                "table1_column": self.table1_column, "table2_column": self.table2_column,
                "finetune": self.finetune, "augment": bool(self.robust.augment if self.robust else self.augment)}


_ADAM, _RMSPROP = Optimizer.ADAM, Optimizer.RMSPROP

# The paper's cells. Adversarial training uses Adam at the paper's fine-tuning lr and the same epoch budget as
# the patch defense.
PAPER_GRID: tuple[Cell, ...] = (
    Cell("undefended", "undefended", None, table1_column="undefended"),
    Cell("patch_adam", "patch + Adam", _ADAM, augment=True, table1_column="adam"),
    Cell("patch_rmsprop", "patch + RMSProp", _RMSPROP, augment=True, table1_column="rmsprop", table2_column="proposed"),
    Cell("patch_adam_long", "patch + Adam (long)", _ADAM, augment=True, long=True, table1_column="adam"),
    Cell("patch_rmsprop_long", "patch + RMSProp (long)", _RMSPROP, augment=True, long=True, table1_column="rmsprop"),
    *(Cell(f"{a.value}_at", f"{a.value.upper()}-AT", _ADAM, adversarial=a, table2_column=f"{a.value}_at")
      for a in (AttackName.FGSM, AttackName.IFGSM, AttackName.PGD)),
)

ROBUST_METHODS: tuple[Method, ...] = (Method.FGSM_RS, Method.PGD_AT)  # `patchtune reproduce`'s default
OPTIMIZERS: tuple[Optimizer, ...] = (Optimizer.ADAM, Optimizer.RMSPROP, Optimizer.SGD)


def robust_label(method: MethodCfg) -> str:
    """'PGD-5-AT', 'FGSM-RS', 'TRADES-5 (beta 6)', with '+ patch' when the augmentation is on."""
    m = method.resolved(1.0)  # eps plays no part in the name
    name = METHOD_LABELS[m.method]
    if "steps" in METHOD_PARAMS[m.method]:
        name = name.replace("-", f"-{m.steps}-", 1) if "-" in name else f"{name}-{m.steps}"
    if m.beta is not None:
        name += f" (beta {m.beta:g})"
    return name + (" + patch" if m.augment else "")


def robust_cells(methods: tuple[Method, ...] = ROBUST_METHODS, optimizers: tuple[Optimizer, ...] = OPTIMIZERS,
                 augment: bool = False, warmup: float = 0.0) -> tuple[Cell, ...]:
    """One cell per (robust method, optimizer), each at its method's default parameters and the paper's lr,
    its eps warmed up over the first `warmup` of the training steps."""
    cells = []
    for method in methods:
        cfg = MethodCfg(method, augment=augment, warmup=warmup or None)
        for opt in optimizers:
            key = f"{method.value}{'+patch' if augment else ''}_{opt.value}"
            cells.append(Cell(key, f"{robust_label(cfg)} + {OPTIMIZER_LABELS[opt]}", opt, robust=cfg))
    return tuple(cells)


class GridPart(str, enum.Enum):
    """Which cells `patchtune reproduce --grid` trains."""

    ALL = "all"  # the paper's cells, then the robust fine-tuning cells
    PAPER = "paper"  # the paper's cells only
    ROBUST = "robust"  # the robust fine-tuning cells beside the undefended model and the paper's two patch fine-tunes


def reproduction_grid(methods: tuple[Method, ...] = ROBUST_METHODS, optimizers: tuple[Optimizer, ...] = OPTIMIZERS,
                      part: GridPart = GridPart.ALL, warmup: float = 0.0) -> tuple[Cell, ...]:
    """The paper's cells, then the robust fine-tuning methods x optimizers (see `GridPart`)."""
    if part is GridPart.PAPER:
        return PAPER_GRID
    robust = robust_cells(methods, optimizers, warmup=warmup)
    if part is GridPart.ROBUST:
        return tuple(c for c in PAPER_GRID if c.table1_column is not None and not c.long) + robust
    return PAPER_GRID + robust


REPRODUCTION_GRID = reproduction_grid()
