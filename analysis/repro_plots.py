"""A reproduction's figures (DataFrame -> matplotlib Figure): accuracy per cell of the paper's tables, under each
evaluation setting, and the optimizer question under robust fine-tuning. Cells, labels and colours come from the
results' own metadata (analysis/grid.py). No torch, no Ray."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from analysis import grid
from analysis.grid import Cell
from analysis.plots import OPTIMIZER_COLORS, UNDEFENDED_COLOR, palette, robust_vs_cost
from analysis.repro_tables import attack_label
from analysis.stats import t_interval
from trainables.vocab import AttackName, values

LONG_SHADE = 0.55  # long fine-tunes: their optimizer's colour this far towards white
# Adversarially trained models, one colour per training attack in AttackName order (the last one for any
# other); none of them is an optimizer's colour.
AT_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _lighter(color: str, amount: float) -> str:
    r, g, b = (c + (1 - c) * amount for c in mcolors.to_rgb(color))
    return str(mcolors.to_hex((r, g, b)))


def _at_color(attack: str) -> str:
    attacks = [a for a in values(AttackName) if a != AttackName.CLEAN.value]
    return AT_COLORS[min(attacks.index(attack), len(AT_COLORS) - 1) if attack in attacks else -1]


def cell_color(cell: Cell) -> str:
    """A reproduction cell's colour, from what it is: grey undefended, its optimizer's colour for patch
    fine-tuning (lighter when fine-tuned long), one colour per adversarial-training attack."""
    if cell.undefended:
        return UNDEFENDED_COLOR
    if cell.paper_attack is not None:
        return _at_color(cell.paper_attack)
    optimizer = cell.optimizer.value if cell.optimizer else ""
    color = palette([optimizer])[optimizer]
    return _lighter(color, LONG_SHADE) if cell.long else color


def method_bars(results: pd.DataFrame, keys: Sequence[str] = ("clean", "whitebox/fgsm", "whitebox/ifgsm", "whitebox/pgd"),
                paper: Mapping[str, Mapping[str, float]] | None = None, dataset: str | None = None) -> Figure:
    """Accuracy (%) per method of the paper's tables and attack: mean over seeds with 95 % CI bars; paper values
    (method -> attack -> %) as black ticks. Methods, their order, labels and colours come from the frame's
    metadata (analysis/grid.py); the robust fine-tuning cells have their own figures (`optimizer_bars`)."""
    cells = [c for c in grid.cells(results) if not c.robust]
    fig, ax = plt.subplots(figsize=(8.2, 4.2))
    width = 0.8 / max(len(cells), 1)
    for j, cell in enumerate(cells):
        sub = results[results["cell"] == cell.cell]
        intervals = [t_interval(100 * sub[key].astype(float)) for key in keys]
        means = [iv.mean for iv in intervals]
        halves = [0.0 if np.isnan(iv.half) else iv.half for iv in intervals]  # one seed: no bar
        xs = np.arange(len(keys)) + (j - (len(cells) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=halves, capsize=2, color=cell_color(cell), label=cell.label)
        for x, key in zip(xs, keys, strict=True):
            value = (paper or {}).get(cell.cell, {}).get(key.split("/")[-1])
            if value is not None:
                ax.plot([x - width / 2, x + width / 2], [value, value], color="black", lw=2)
    ticks = [k.split("/")[-1].upper().replace("PGD", "PGD-10").replace("CLEAN", "clean") for k in keys]
    if dataset is not None:  # flag the paper's attacks that cannot reach the data set's eps (F-MNIST)
        ticks = [t + ("\n(cannot reach eps)" if "cannot reach" in attack_label(k.split("/")[-1], dataset) else "")
                 if k != "clean" else t for t, k in zip(ticks, keys, strict=True)]
    ax.set_xticks(np.arange(len(keys)), ticks)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("attack (paper parameters, white-box)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per method (bars: ours, mean ± 95 % CI over seeds; black ticks: paper)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def settings_bars(results: pd.DataFrame, settings: Sequence[str], labels: Mapping[str, str], attack: str = "pgd",
                  paper: Mapping[str, Mapping[str, float]] | None = None) -> Figure:
    """`attack` accuracy (%) of the Table 1 models (paper budget and long fine-tunes) under each evaluation
    setting; the paper's value (method -> attack -> %) of each as a dashed line."""
    cells = grid.table1_cells(results) + grid.table1_cells(results, long=True)
    fig, ax = plt.subplots(figsize=(8.2, 4.0))
    width = 0.8 / max(len(cells), 1)
    for j, cell in enumerate(cells):
        sub = results[results["cell"] == cell.cell]
        means = [100 * sub[f"{s}/{attack}"].astype(float).mean() for s in settings]
        xs = np.arange(len(settings)) + (j - (len(cells) - 1) / 2) * width
        ax.bar(xs, means, width, color=cell_color(cell), label=cell.label)
    for cell in cells:
        value = (paper or {}).get(cell.cell, {}).get(attack)
        if value is not None:
            ax.axhline(value, color=cell_color(cell), ls="--", lw=1, label=f"paper: {cell.label}")
    ax.set_xticks(np.arange(len(settings)), [labels[s].replace(" ", "\n", 2) for s in settings], fontsize=7)
    ax.set_ylabel(f"{attack.upper()} test accuracy (%)")
    ax.set_xlabel("evaluation setting")
    ax.set_ylim(0, 100)
    ax.set_title("Where could the paper's numbers come from? (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def optimizer_bars(results: pd.DataFrame, robust_key: str, robust_label: str) -> Figure:
    """Does the optimizer matter? Clean and robust accuracy (%) of each fine-tuning method (the paper's patch
    fine-tune and every robust one) per optimizer: mean over seeds with 95 % CI bars, each seed a dot; the
    undefended model as a dashed line."""
    groups = [[c for c in grid.table1_cells(results) if c.patch], *grid.robust_groups(results)]
    groups = [g for g in groups if g]
    undefended = grid.undefended_cell(results)
    optimizers = [o for o in OPTIMIZER_COLORS if any(c.optimizer == o for g in groups for c in g)]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), sharey=True)
    width = 0.8 / max(len(optimizers), 1)
    for ax, key, title in zip(axes, ("clean", robust_key), ("clean", robust_label), strict=True):
        for i, cells in enumerate(groups):
            for cell in cells:
                assert cell.optimizer is not None
                j = optimizers.index(cell.optimizer.value)
                x = i + (j - (len(optimizers) - 1) / 2) * width
                values_pct = 100 * results.loc[results.cell == cell.cell, key].astype(float)
                iv = t_interval(values_pct)
                bars = ax.bar(x, iv.mean, width, yerr=0 if np.isnan(iv.half) else iv.half, capsize=2,
                              color=OPTIMIZER_COLORS[cell.optimizer.value], alpha=0.85)
                if key != "clean":  # robust accuracy is often near 0 %, where a bar alone is invisible
                    ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=2)
                ax.scatter(np.full(len(values_pct), x), values_pct, s=8, color="black", zorder=3)
        if undefended is not None:
            ax.axhline(100 * results.loc[results.cell == undefended.cell, key].astype(float).mean(),
                       color=UNDEFENDED_COLOR, ls="--", lw=1.2)
        ax.set_xticks(range(len(groups)), [g[0].method_label for g in groups], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("test accuracy (%)")
    handles: list[Artist] = [Rectangle((0, 0), 1, 1, color=OPTIMIZER_COLORS[o]) for o in optimizers]
    labels = [str(o) for o in optimizers]
    if undefended is not None:
        handles.append(Line2D([], [], color=UNDEFENDED_COLOR, ls="--"))
        labels.append("undefended")
    axes[1].legend(handles, labels, fontsize=8, title="optimizer", title_fontsize=8)
    fig.suptitle("Does the optimizer matter? Fine-tuning method x optimizer (mean ± 95 % CI over seeds; dots: seeds)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def reproduction_cost(results: pd.DataFrame, robust_key: str, robust_label: str) -> Figure:
    """`robust_vs_cost` for a reproduction: every fine-tuned (seed, cell) at its training device-seconds, by method
    (the results' `method` and `augment` columns); the undefended model's mean as the base line."""
    frame = results[results.method != "none"]
    undefended = grid.undefended_cell(results)
    base = None if undefended is None else float(results.loc[results.cell == undefended.cell, robust_key].mean())
    return robust_vs_cost(frame, robust_key, "cost_device_s", robust_label=robust_label, base=base)
