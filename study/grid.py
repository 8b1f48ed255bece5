"""The reproduction grid as data: which models `patchtune reproduce` trains per seed, and what each one is.

Each cell says how its model is made (optimizer, patch augmentation, adversarial-training attack, long or
short budget) and which column of the paper's tables it reproduces. The Ray trainable reads the `recipe`
fields; the results carry the descriptive ones (`columns()`), so `analysis/` derives every table and plot
from the data instead of from method names. No torch, no Ray.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trainables.vocab import AttackName, Optimizer


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

    @property
    def defense(self) -> str:
        if self.adversarial is not None:
            return f"{self.adversarial.value}_at"
        return "patch" if self.augment else "none"

    def recipe(self) -> dict[str, Any]:
        """What the trainable needs to build the model (plain values: it travels in Tune's config)."""
        return {"method": self.method, "optimizer": self.optimizer.value if self.optimizer else None,
                "augment": self.augment, "adversarial": self.adversarial.value if self.adversarial else None,
                "long": self.long}

    def columns(self) -> dict[str, Any]:
        """What the results rows carry about the cell, beside its scores."""
        return {"method": self.method, "method_label": self.label, "defense": self.defense,
                "optimizer": self.optimizer.value if self.optimizer else None, "long": self.long,
                "table1_column": self.table1_column, "table2_column": self.table2_column}


_ADAM, _RMSPROP = Optimizer.ADAM, Optimizer.RMSPROP

# Adversarial training uses Adam at the paper's fine-tuning lr and the same epoch budget as the patch defense.
REPRODUCTION_GRID: tuple[Cell, ...] = (
    Cell("undefended", "undefended", None, table1_column="undefended"),
    Cell("patch_adam", "patch + Adam", _ADAM, augment=True, table1_column="adam"),
    Cell("patch_rmsprop", "patch + RMSProp", _RMSPROP, augment=True, table1_column="rmsprop", table2_column="proposed"),
    Cell("patch_adam_long", "patch + Adam (long)", _ADAM, augment=True, long=True, table1_column="adam"),
    Cell("patch_rmsprop_long", "patch + RMSProp (long)", _RMSPROP, augment=True, long=True, table1_column="rmsprop"),
    *(Cell(f"{a.value}_at", f"{a.value.upper()}-AT", _ADAM, adversarial=a, table2_column=f"{a.value}_at")
      for a in (AttackName.FGSM, AttackName.IFGSM, AttackName.PGD)),
)
