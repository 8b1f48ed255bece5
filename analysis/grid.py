"""The cells of a reproduction grid, as its results frame describes them. No torch, no Ray.

Every row of a reproduction's results.parquet carries, beside `seed`, `cell` and the scores, what the cell is
(`trainables.cells.Cell.columns`): `cell_label`, `method` ("none" for the base itself, else the fine-tuning
method), `method_settings`, `augment`, `optimizer`, `long`, `table1_column` and `table2_column` (the paper's
Table 1 / Table 2 column it reproduces, or None). The tables, findings and plots read the cells back from these
columns (`Cell.from_row`), so no cell name is special to the analysis and a new cell in the grid needs no change
here.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from trainables.cells import CELL_COLUMNS, Cell
from trainables.vocab import AttackName, Method, Optimizer, values

__all__ = ["Cell", "cells", "check", "proposed_cell", "robust_cells", "robust_groups", "table1_cells", "table2_cells",
           "undefended_cell"]


def _rank(names: Sequence[str], name: str | None) -> int:
    """Position in the vocabulary's declaration order (None first, unknown names last)."""
    if name is None:
        return -1
    return names.index(name) if name in names else len(names)


def _order(cell: Cell) -> tuple[object, ...]:
    """Undefended first, then patch fine-tuning (short before long, optimizers in vocabulary order), then the
    paper's adversarially trained cells in the order of their attacks (the paper's tables read this way), then
    robust fine-tuning by method (vocabulary order, without the augmentation first) and optimizer."""
    kind = 0 if cell.undefended else 1 if cell.patch else 3 if cell.robust else 2
    return (kind, cell.long, _rank(values(AttackName), cell.paper_attack), _rank(values(Method), cell.method_name),
            cell.augment, _rank(values(Optimizer), cell.optimizer.value if cell.optimizer else None), cell.cell)


def check(results: pd.DataFrame) -> None:
    missing = [c for c in ("seed", *CELL_COLUMNS) if c not in results]
    if missing:
        raise ValueError(f"reproduction results lack the column(s) {', '.join(missing)}: they come from an "
                         "older `patchtune reproduce`; run it again to analyse them")


def cells(results: pd.DataFrame) -> list[Cell]:
    """The grid's cells present in `results`, in reading order (see `_order`), whatever the row order."""
    check(results)
    return sorted((Cell.from_row(r) for r in results.drop_duplicates("cell").to_dict("records")), key=_order)


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
    groups: dict[tuple[str, bool], list[Cell]] = {}
    for cell in robust_cells(results):
        groups.setdefault((cell.method_name, cell.augment), []).append(cell)
    return list(groups.values())


def undefended_cell(results: pd.DataFrame) -> Cell | None:
    """The model every defense is measured against (no method)."""
    return next((c for c in cells(results) if c.undefended), None)


def proposed_cell(results: pd.DataFrame) -> Cell | None:
    """The paper's own method: the cell reproducing Table 2's "proposed" column."""
    return next((c for c in cells(results) if c.proposed), None)
