"""The paper's Table 1 / Table 2 beside ours (mean and 95 % CI over seeds), the evaluation settings and the robust
fine-tunes as tables, and the labels they share with the figures. No torch, no Ray.

Input: a reproduction's results frame, one row per (seed, cell) with columns `clean`, `ttt/clean` and
`<setting>/<attack>` (see trainables/variants.py) as accuracies in [0, 1], plus the metadata columns that say
what each cell is (see analysis/grid.py): which cell fills which table column comes from the frame.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis import grid, stats
from analysis.grid import Cell
from analysis.paper import TABLE1, TABLE2
from analysis.stats import Interval
from trainables import vocab
from trainables.vocab import PAPER_ALPHA, PAPER_STEPS, AttackName, Setting, paper_eps, values

ATTACKS = tuple(a.value for a in AttackName if a is not AttackName.CLEAN)  # the paper's attacks
ATTACK_LABELS = {"clean": "Clean", "fgsm": "FGSM", "ifgsm": "IFGSM", "pgd": "PGD-10"}
STRONG_KEY = "strong/pgd"  # PGD with alpha * steps >= 2 eps and restarts (study/reproduce.py): not the paper's
SETTINGS = values(Setting)
SETTING_LABELS = {s.value: label for s, label in vocab.SETTING_LABELS.items()}
DATASET_NAMES = {"fmnist": "F-MNIST", "cifar10": "CIFAR-10", "imagenette": "Imagenette"}


def interval(results: pd.DataFrame, method: str, key: str) -> Interval:
    """Mean and 95 % t interval over seeds of `method`'s `key`, in percent."""
    return stats.t_interval(100 * _column(results, method, key).dropna().astype(float))


SAME_IN_EVERY_SEED = "‡"  # marks a zero-width interval over seeds: the seeds agreed, which is not certainty


def fmt(iv: Interval) -> str:
    """"mean ± half" in percent; the mean alone for one seed, "-" for none; "mean ‡" where every seed scored
    the same (render's legend says what that means)."""
    if math.isnan(iv.mean):
        return "-"
    if math.isnan(iv.half):
        return f"{iv.mean:.2f}"
    return f"{iv.mean:.2f} {SAME_IN_EVERY_SEED}" if iv.half == 0 else f"{iv.mean:.2f} ± {iv.half:.2f}"


def _column(results: pd.DataFrame, method: str, key: str) -> pd.Series:
    return results.loc[results["cell"] == method].sort_values("seed")[key]


def _paper(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table1_columns(results: pd.DataFrame) -> list[tuple[str, str]]:
    """(method, Table 1 column) of the cells that reproduce Table 1 with the paper's fine-tuning budget."""
    return [(c.cell, str(c.table1_column)) for c in grid.table1_cells(results)]


def _table2_columns(results: pd.DataFrame) -> list[tuple[str, str]]:
    return [(c.cell, str(c.table2_column)) for c in grid.table2_cells(results)]


def table1(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Rows: Clean, FGSM, IFGSM, PGD-10. Per column: ours (mean ± 95 % CI, %) and the paper's."""
    paper = TABLE1.get(dataset, {})
    columns = _table1_columns(results)
    rows = []
    for attack in ("clean", *ATTACKS):
        row: dict[str, str] = {"Attack": attack_label(attack, dataset)}
        for method, column in columns:
            key = "clean" if attack == "clean" else f"whitebox/{attack}"
            row[f"{column} (ours)"] = fmt(interval(results, method, key))
            row[f"{column} (paper)"] = _paper(paper.get(attack, {}).get(column))
        rows.append(row)
    if STRONG_KEY in results:
        rows.append(_strong_row(results, columns))
    return pd.DataFrame(rows)


def strong_params(results: pd.DataFrame) -> tuple[int, int]:
    """(steps, restarts) of the strong attack, as the results record them."""
    return int(results["strong_steps"].iloc[0]), int(results["strong_restarts"].iloc[0])


def strong_name(results: pd.DataFrame) -> str:
    """The strong attack's name in tables and findings: "PGD-100 x5"."""
    steps, restarts = strong_params(results)
    return f"PGD-{steps}" + (f" x{restarts}" if restarts > 1 else "")


def _strong_row(results: pd.DataFrame, columns: list[tuple[str, str]]) -> dict[str, str]:
    row = {"Attack": f"strong {strong_name(results)} (ours only)"}
    for method, column in columns:
        row[f"{column} (ours)"] = fmt(interval(results, method, STRONG_KEY))
        row[f"{column} (paper)"] = "-"
    return row


def table2(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Adversarial training vs the proposed fine-tuning; the paper's Table 2 exists for CIFAR-10 only."""
    columns = _table2_columns(results)
    rows = []
    for attack in ATTACKS:
        row: dict[str, str] = {"Attack": attack_label(attack, dataset)}
        for method, column in columns:
            row[f"{column} (ours)"] = fmt(interval(results, method, f"whitebox/{attack}"))
            value = TABLE2.get(attack, {}).get(column) if dataset == "cifar10" else None
            row[f"{column} (paper)"] = _paper(value)
        rows.append(row)
    if STRONG_KEY in results:
        rows.append(_strong_row(results, columns))
    return pd.DataFrame(rows)


def model_label(cell: Cell) -> str:
    """A Table 1 cell's name in the settings table and findings: its column, marked when fine-tuned long."""
    return f"{cell.table1_column} (long)" if cell.long else str(cell.table1_column)


def settings_table(results: pd.DataFrame, dataset: str, attack: str = "pgd") -> pd.DataFrame:
    """One column per evaluation setting for `attack`: which, if any, reproduces the paper's numbers.
    The `(long)` rows are the same defenses after a much longer fine-tune (the paper's 20 GPU-minutes)."""
    rows = []
    for cell in grid.table1_cells(results) + grid.table1_cells(results, long=True):
        row: dict[str, str] = {"model": model_label(cell)}
        for setting in SETTINGS:
            row[SETTING_LABELS[setting]] = fmt(interval(results, cell.cell, f"{setting}/{attack}"))
        row["paper"] = _paper(TABLE1.get(dataset, {}).get(attack, {}).get(str(cell.table1_column)))
        rows.append(row)
    return pd.DataFrame(rows)


def paper_by_method(results: pd.DataFrame, dataset: str,
                    defended_only: bool = False) -> dict[str, dict[str, float]]:
    """The paper's Table 1 numbers (attack -> %) of each method that reproduces a Table 1 column with the
    paper's budget, for the plots' reference marks; `defended_only` leaves out the undefended model."""
    paper = TABLE1.get(dataset, {})
    return {c.cell: {a: v[str(c.table1_column)] for a, v in paper.items() if c.table1_column in v}
            for c in grid.table1_cells(results) if not (defended_only and c.undefended)}






def attack_label(attack: str, dataset: str) -> str:
    """An attack at the paper's parameters, flagged where alpha x steps cannot reach the data set's eps
    (F-MNIST: IFGSM and PGD-10 reach 0.1 of eps 0.3)."""
    eps, reach = paper_eps(dataset), PAPER_ALPHA * PAPER_STEPS
    label = ATTACK_LABELS[attack]
    if attack in ("ifgsm", "pgd") and reach < eps:
        return f"{label} (cannot reach eps: alpha x steps = {reach:g} < {eps:g})"
    return label


def pgd10_label(dataset: str) -> str:
    return attack_label("pgd", dataset)


def robust_measure(results: pd.DataFrame) -> tuple[str, str]:
    """(column, name) of the attack the robust fine-tuning cells are judged by: the strong PGD where scored."""
    if STRONG_KEY in results:
        return STRONG_KEY, strong_name(results)
    return "whitebox/pgd", "PGD-10"


def robust_axis_label(results: pd.DataFrame, dataset: str) -> str:
    """The figures' axis for the robust fine-tuning cells: split, attack and eps."""
    return f"test {robust_measure(results)[1]} accuracy at eps {paper_eps(dataset):g} (%)"


def robust_table(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Robust fine-tuning beside the undefended model and the paper's patch fine-tunes: clean, the paper's
    PGD-10, the strong PGD (mean ± 95 % CI over seeds, %) and the training compute (mean over seeds)."""
    key, measure = robust_measure(results)
    chosen = [c for c in grid.cells(results) if c.undefended or (c.patch and not c.long) or c.robust]
    rows = []
    for cell in chosen:
        row = {"model": cell.label, "clean": fmt(interval(results, cell.cell, "clean")),
               pgd10_label(dataset): fmt(interval(results, cell.cell, "whitebox/pgd"))}
        if key != "whitebox/pgd":
            row[f"{measure}, eps {paper_eps(dataset):g}"] = fmt(interval(results, cell.cell, key))
        if "cost_device_s" in results:
            sub = results[results.cell == cell.cell]
            row["train device-s"] = f"{sub['cost_device_s'].mean():.3g}"
            row["forward passes"] = fmt_count(sub["cost_fwd_passes"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_count(n: float) -> str:
    """1200 -> '1.2k', 120000 -> '0.12M'."""
    if n >= 1e5:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:.0f}"
