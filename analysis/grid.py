"""The cells of a reproduction grid, as its results frame describes them. No torch, no Ray.

Every row of a reproduction's results.parquet carries, beside `seed`, `method` and the scores, what the
method is: `method_label`, `defense` ("none" | "patch" | "<attack>_at"), `optimizer`, `long`,
`table1_column` and `table2_column` (the paper's Table 1 / Table 2 column it reproduces, or None), and
`finetune` / `augment` (the fine-tuning method in the trainables' vocabulary, and whether the patch
augmentation was on; absent from results written before robust fine-tuning joined the grid). The
tables, findings and plots read these columns, so no method name is special to the analysis and a new
cell in the grid needs no change here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from trainables.vocab import AttackName, Defense, Method, Optimizer, at_attack, values

METADATA = ("method_label", "defense", "optimizer", "long", "table1_column", "table2_column")
OPTIONAL_METADATA = ("finetune", "augment")
PROPOSED = "proposed"  # the paper's Table 2 column of its own method


@dataclasses.dataclass(frozen=True)
class Cell:
    """One method of the grid (the same on every seed's row)."""

    method: str
    label: str
    defense: str
    optimizer: str | None
    long: bool
    table1_column: str | None
    table2_column: str | None
    finetune: str | None = None
    augment: bool = False

    @property
    def robust(self) -> bool:
        return self.defense == Defense.ROBUST

    @property
    def method_name(self) -> str:
        """The label without its optimizer ('PGD-5-AT' of 'PGD-5-AT + Adam'): the grid labels a fine-tune
        '<method> + <optimizer>'."""
        return self.label.rsplit(" + ", 1)[0] if self.optimizer is not None else self.label

    @property
    def undefended(self) -> bool:
        return self.defense == Defense.NONE

    @property
    def patch(self) -> bool:
        return self.defense == Defense.PATCH

    @property
    def at_attack(self) -> str | None:
        """The attack an adversarially trained cell trained against, None for the other defenses."""
        return at_attack(self.defense)

    @property
    def proposed(self) -> bool:
        return self.table2_column == PROPOSED


def _optional(value: object) -> str | None:
    # parquet hands back a missing string as None or NaN, depending on the column's other values
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _rank(names: Sequence[str], name: str | None) -> int:
    """Position in the vocabulary's declaration order (None first, unknown names last)."""
    if name is None:
        return -1
    return names.index(name) if name in names else len(names)


def _order(cell: Cell) -> tuple[object, ...]:
    """Undefended first, then patch fine-tuning (short before long, optimizers in vocabulary order), then the
    adversarially trained cells in the order of their attacks (the paper's tables read this way), then robust
    fine-tuning by method (vocabulary order, without the augmentation first) and optimizer."""
    kind = 0 if cell.undefended else 1 if cell.patch else 3 if cell.robust else 2
    return (kind, cell.long, _rank(values(AttackName), cell.at_attack), _rank(values(Method), cell.finetune),
            cell.augment, cell.defense, _rank(values(Optimizer), cell.optimizer), cell.method)


def check(results: pd.DataFrame) -> None:
    missing = [c for c in ("seed", "method", *METADATA) if c not in results]
    if missing:
        raise ValueError(f"reproduction results lack the column(s) {', '.join(missing)}: they come from an "
                         "older `patchtune reproduce`; run it again to analyse them")


def cells(results: pd.DataFrame) -> list[Cell]:
    """The grid's methods present in `results`, in reading order (see `_order`), whatever the row order."""
    check(results)
    first = results.drop_duplicates("method")
    found = [Cell(method=str(r["method"]), label=str(r["method_label"]), defense=str(r["defense"]),
                  optimizer=_optional(r["optimizer"]), long=bool(r["long"]),
                  table1_column=_optional(r["table1_column"]), table2_column=_optional(r["table2_column"]),
                  finetune=_optional(r.get("finetune")), augment=str(r.get("augment")) == "True")
             for r in first.to_dict("records")]
    return sorted(found, key=_order)


def table1_cells(results: pd.DataFrame, long: bool = False) -> list[Cell]:
    """The cells reproducing the paper's Table 1 columns: the paper's fine-tune, or (`long`) the long one."""
    return [c for c in cells(results) if c.table1_column is not None and c.long == long]


def table2_cells(results: pd.DataFrame) -> list[Cell]:
    """The cells reproducing the paper's Table 2 columns: the adversarial-training baselines, then the
    proposed fine-tuning (the paper's column order)."""
    return sorted((c for c in cells(results) if c.table2_column is not None), key=lambda c: c.proposed)


def robust_cells(results: pd.DataFrame) -> list[Cell]:
    """The robust fine-tuning cells, in reading order."""
    return [c for c in cells(results) if c.robust]


def robust_groups(results: pd.DataFrame) -> list[list[Cell]]:
    """The robust fine-tuning cells grouped by method (with or without the augmentation): one group per method,
    its cells differing in the optimizer only."""
    groups: dict[tuple[str | None, bool], list[Cell]] = {}
    for cell in robust_cells(results):
        groups.setdefault((cell.finetune, cell.augment), []).append(cell)
    return list(groups.values())


def undefended_cell(results: pd.DataFrame) -> Cell | None:
    """The model every defense is measured against (defense "none")."""
    return next((c for c in cells(results) if c.undefended), None)


def proposed_cell(results: pd.DataFrame) -> Cell | None:
    """The paper's own method: the cell reproducing Table 2's "proposed" column."""
    return next((c for c in cells(results) if c.proposed), None)
