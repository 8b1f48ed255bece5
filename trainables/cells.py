"""The reproduction grid as data: which models `patchtune reproduce` trains per seed, and what each one is. No torch.

A cell is the base model itself (no method) or a fine-tune of it: an optimizer and a fine-tuning method
(`MethodCfg`: the paper's patch augmentation, the paper's adversarial-training baselines, or a robust method),
with the short or the long epoch budget, and the column of the paper's tables it reproduces, if any. The Ray
trainable trains a cell from its fields; the results carry them (`columns()`), and `analysis/` reads the cells
back from the results (`Cell.from_row`), so every table and plot derives from the data, not from cell names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from trainables.config import MethodCfg
from trainables.vocab import METHODS, OPTIMIZER_LABELS, ROBUST_METHODS, GridPart, Method, Optimizer

PROPOSED = "proposed"  # the paper's Table 2 column of its own method


@dataclasses.dataclass(frozen=True)
class Cell:
    cell: str  # the results' `cell` key
    label: str  # how tables and figures name it
    optimizer: Optimizer | None = None  # None: the base model itself, not trained further
    method: MethodCfg | None = None  # how it is fine-tuned (None: the base itself)
    long: bool = False  # the long fine-tuning budget (the paper fine-tuned for 20 GPU-minutes)
    table1_column: str | None = None  # the paper's Table 1 column this cell reproduces
    table2_column: str | None = None  # the paper's Table 2 column this cell reproduces

    @property
    def method_name(self) -> str:
        """The fine-tuning method's name ("none" for the base itself)."""
        return self.method.method.value if self.method is not None else "none"

    @property
    def undefended(self) -> bool:
        return self.method is None

    @property
    def patch(self) -> bool:
        return self.method is not None and self.method.method is Method.PATCH

    @property
    def paper_attack(self) -> str | None:
        """The attack a paper-baseline cell adversarially trained on (None for the other cells)."""
        if self.method is None or not METHODS[self.method.method].paper_baseline:
            return None
        attack = METHODS[self.method.method].attack
        return attack.value if attack is not None else None

    @property
    def robust(self) -> bool:
        return self.method is not None and self.method.method in ROBUST_METHODS

    @property
    def augment(self) -> bool:
        return self.method is not None and self.method.augmented

    @property
    def proposed(self) -> bool:
        return self.table2_column == PROPOSED

    @property
    def method_label(self) -> str:
        """The label without its optimizer ('PGD-5-AT' of 'PGD-5-AT + Adam'): a fine-tune's label is
        '<method> + <optimizer>'."""
        return self.label.rsplit(" + ", 1)[0] if self.optimizer is not None else self.label

    def columns(self) -> dict[str, Any]:
        """What the results record about the cell, beside its scores."""
        settings = self.method.model_dump(mode="json", exclude_unset=True) if self.method is not None else None
        return {"cell": self.cell, "cell_label": self.label, "method": self.method_name,
                "method_settings": json.dumps(settings), "augment": self.augment,
                "optimizer": self.optimizer.value if self.optimizer else None, "long": self.long,
                "table1_column": self.table1_column, "table2_column": self.table2_column}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Cell:
        """The cell a results row describes (`columns()` read back)."""
        settings = json.loads(str(row["method_settings"]))
        return cls(cell=str(row["cell"]), label=str(row["cell_label"]),
                   optimizer=Optimizer(row["optimizer"]) if _present(row["optimizer"]) else None,
                   method=MethodCfg.parse(settings) if settings is not None else None, long=bool(row["long"]),
                   table1_column=str(row["table1_column"]) if _present(row["table1_column"]) else None,
                   table2_column=str(row["table2_column"]) if _present(row["table2_column"]) else None)


def _present(value: object) -> bool:
    # parquet hands back a missing string as None or NaN, depending on the column's other values
    return value is not None and not (isinstance(value, float) and value != value)


CELL_COLUMNS = tuple(Cell("x", "x").columns())

_ADAM, _RMSPROP = Optimizer.ADAM, Optimizer.RMSPROP
_PATCH = MethodCfg(method=Method.PATCH)


def _paper_at(method: Method) -> Cell:
    return Cell(method.value, METHODS[method].label, _ADAM, MethodCfg(method=method), table2_column=method.value)


# The paper's cells. Its adversarial-training baselines use Adam at the paper's fine-tuning lr and the same epoch
# budget as the patch defense.
PAPER_GRID: tuple[Cell, ...] = (
    Cell("undefended", "undefended", table1_column="undefended"),
    Cell("patch_adam", "patch + Adam", _ADAM, _PATCH, table1_column="adam"),
    Cell("patch_rmsprop", "patch + RMSProp", _RMSPROP, _PATCH, table1_column="rmsprop", table2_column=PROPOSED),
    Cell("patch_adam_long", "patch + Adam (long)", _ADAM, _PATCH, long=True, table1_column="adam"),
    Cell("patch_rmsprop_long", "patch + RMSProp (long)", _RMSPROP, _PATCH, long=True, table1_column="rmsprop"),
    *(_paper_at(m) for m in (Method.PAPER_FGSM_AT, Method.PAPER_IFGSM_AT, Method.PAPER_PGD_AT)),
)

DEFAULT_ROBUST_METHODS: tuple[Method, ...] = (Method.FGSM_RS, Method.PGD_AT)  # `patchtune reproduce`'s default
DEFAULT_OPTIMIZERS: tuple[Optimizer, ...] = (Optimizer.ADAM, Optimizer.RMSPROP, Optimizer.SGD)


def robust_label(method: MethodCfg) -> str:
    """'PGD-5-AT', 'FGSM-RS', 'TRADES-5 (beta 6)', with '+ patch' when the augmentation is on."""
    m = method.resolved(1.0)  # eps plays no part in the name
    name = METHODS[m.method].label
    if "at_steps" in METHODS[m.method].params:
        name = name.replace("-", f"-{m.at_steps}-", 1) if "-" in name else f"{name}-{m.at_steps}"
    if "beta" in METHODS[m.method].params:
        name += f" (beta {m.beta:g})"
    return name + (" + patch" if m.augmented else "")


def robust_cells(methods: tuple[Method, ...] = DEFAULT_ROBUST_METHODS,
                 optimizers: tuple[Optimizer, ...] = DEFAULT_OPTIMIZERS, augment: bool = False,
                 eps_warmup: float = 0.0) -> tuple[Cell, ...]:
    """One cell per (robust method, optimizer), each at its method's default parameters and the paper's lr,
    its eps warmed up over the first `eps_warmup` of the training steps."""
    cells = []
    for method in methods:
        cfg = MethodCfg(method=method, augment=augment, **({"eps_warmup": eps_warmup} if eps_warmup else {}))
        for opt in optimizers:
            key = f"{method.value}{'+patch' if augment else ''}_{opt.value}"
            cells.append(Cell(key, f"{robust_label(cfg)} + {OPTIMIZER_LABELS[opt]}", opt, cfg))
    return tuple(cells)


def reproduction_grid(methods: tuple[Method, ...] = DEFAULT_ROBUST_METHODS,
                      optimizers: tuple[Optimizer, ...] = DEFAULT_OPTIMIZERS, part: GridPart = GridPart.ALL,
                      eps_warmup: float = 0.0) -> tuple[Cell, ...]:
    """The paper's cells, then the robust fine-tuning methods x optimizers (see `GridPart`)."""
    if part is GridPart.PAPER:
        return PAPER_GRID
    robust = robust_cells(methods, optimizers, eps_warmup=eps_warmup)
    if part is GridPart.ROBUST:
        return tuple(c for c in PAPER_GRID if c.table1_column is not None and not c.long) + robust
    return PAPER_GRID + robust
