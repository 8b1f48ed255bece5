"""DataFrame -> matplotlib Figure. No torch, no Ray; every function is tested on a small synthetic frame.

Optimizers keep one colour across every figure (`OPTIMIZER_COLORS`); accuracies are shown in percent and
axis labels carry units.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import matplotlib

if "ipykernel" not in sys.modules:  # notebooks keep their inline backend; scripts and the CLI draw off-screen
    matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis import grid  # noqa: E402
from analysis.grid import Cell  # noqa: E402
from analysis.load import OPS, pareto_front  # noqa: E402
from analysis.reproduction import attack_label  # noqa: E402
from analysis.stats import t_interval, welch  # noqa: E402
from trainables.vocab import AttackName, Method, values  # noqa: E402

OPTIMIZER_COLORS = {"adam": "#1f77b4", "rmsprop": "#d62728", "sgd": "#2ca02c", "adamw": "#9467bd"}
OBJECTIVE_LABELS = {
    "objective": "objective (%)",
    "pgd_acc": "PGD robust accuracy (%)",
    "robust_auc": "robust AUC (%)\n(mean PGD accuracy over the eps grid)",
    "val_pgd_acc": "val PGD accuracy, the objective's attack (%)",
    "val_paper_pgd_acc": "val paper PGD-10 (alpha 0.01 x 10 steps = 0.1) (%)",
    "val_robust_auc": "val robust AUC (%)",
    "val_clean_acc": "val clean accuracy (%)",
}


# One colour per fine-tuning method (the vocabulary's order); "+patch" variants share it, drawn hollow.
METHOD_COLORS = dict(zip(values(Method), ("0.45", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22"),
                         strict=True))
OPTIMIZER_MARKERS = {"adam": "o", "rmsprop": "s", "sgd": "^", "adamw": "D"}


def method_label(method: object, augment: object) -> str:
    """'pgd_at+patch' for an adversarial method trained on clean + patch-modified images; 'patch' is the paper's."""
    m = str(method) if isinstance(method, str) else Method.PATCH.value
    return f"{m}+patch" if m != Method.PATCH.value and augment is True else m


def _palette(names: Sequence[str]) -> dict[str, str]:
    extra = iter(sns.color_palette("tab10", 10).as_hex()[4:])
    return {n: OPTIMIZER_COLORS.get(n) or next(extra) for n in names}


def _order(frame: pd.DataFrame) -> list[str]:
    present = [str(o) for o in frame["optimizer"].dropna().unique()]
    return [o for o in OPTIMIZER_COLORS if o in present] + sorted(o for o in present if o not in OPTIMIZER_COLORS)


def _pct(frame: pd.DataFrame, column: str) -> pd.Series:
    return 100 * frame[column].astype(float)


def robust_vs_lr(results: pd.DataFrame, metric: str = "objective", label: str | None = None) -> Figure:
    """Each trial as a point, plus per-optimizer mean and 95 % CI over log-spaced lr bins."""
    frame = results.dropna(subset=["lr", metric]).copy()
    frame["value"] = _pct(frame, metric)
    order = _order(frame)
    colors = _palette(order)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    edges = np.logspace(np.log10(frame["lr"].min()) - 1e-9, np.log10(frame["lr"].max()) + 1e-9, 6)
    codes = np.clip(np.searchsorted(edges, frame["lr"].to_numpy(), side="right") - 1, 0, len(edges) - 2)
    frame["lr_center"] = np.sqrt(edges[codes] * edges[codes + 1])  # geometric bin centre
    for opt in order:
        sub = frame[frame["optimizer"] == opt]
        ax.scatter(sub["lr"], sub["value"], color=colors[opt], alpha=0.55, s=22, label=f"{opt} (n={len(sub)})")
        if sub["lr_center"].nunique() >= 2:
            sns.lineplot(data=sub, x="lr_center", y="value", color=colors[opt], errorbar=("ci", 95), ax=ax,
                         legend=False, err_kws={"alpha": 0.15})
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(label or OBJECTIVE_LABELS.get(metric, f"{metric} (%)"))
    ax.set_title("Robustness vs learning rate")
    ax.text(0.01, 0.01, "dots: trials; line: binned mean; band: 95 % CI", transform=ax.transAxes, fontsize=7,
            color="0.35", va="bottom")
    ax.legend(title="optimizer", fontsize=8)
    fig.tight_layout()
    return fig


def robust_by_optimizer(results: pd.DataFrame, metric: str = "objective", label: str | None = None) -> Figure:
    """Distribution of the metric per optimizer: box plot with every trial as a dot."""
    frame = results.dropna(subset=[metric]).copy()
    frame["value"] = _pct(frame, metric)
    order = _order(frame)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    sns.boxplot(data=frame, x="optimizer", y="value", hue="optimizer", order=order, palette=_palette(order), ax=ax,
                legend=False, fliersize=0, boxprops={"alpha": 0.35})
    sns.stripplot(data=frame, x="optimizer", y="value", hue="optimizer", order=order, palette=_palette(order),
                  ax=ax, legend=False, size=5, jitter=0.15)
    ax.set_xlabel("optimizer")
    ax.set_ylabel(label or OBJECTIVE_LABELS.get(metric, f"{metric} (%)"))
    ax.set_title("Robustness per optimizer (all trials)")
    fig.tight_layout()
    return fig


def optimizer_patch_heatmap(results: pd.DataFrame, metric: str = "objective", label: str | None = None) -> Figure:
    """Mean metric (%) per optimizer x patch size; empty cells were never sampled."""
    frame = results.dropna(subset=[metric, "patch_size"]).copy()
    frame["value"] = _pct(frame, metric)
    table = frame.pivot_table(index="optimizer", columns="patch_size", values="value", aggfunc="mean")
    table = table.reindex([o for o in _order(frame) if o in table.index])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * table.shape[1] + 2.5), 0.6 * table.shape[0] + 2.2))
    sns.heatmap(table, annot=True, fmt=".1f", cmap="viridis", ax=ax,
                cbar_kws={"label": f"mean {label or OBJECTIVE_LABELS.get(metric, metric)}"})
    ax.set_xlabel("patch size w (pixels)")
    ax.set_ylabel("optimizer")
    ax.set_title("Optimizer x patch size")
    fig.tight_layout()
    return fig


def transform_effect(results: pd.DataFrame, metric: str = "objective", label: str | None = None) -> Figure:
    """For each op: mean metric with the op in the pool minus without it, with a 95 % CI (Welch normal approx.)."""
    frame = results.dropna(subset=[metric]).copy()
    frame["value"] = _pct(frame, metric)
    rows = []
    for op in OPS:
        col = f"pool_{op}"
        if col not in frame:
            continue
        on, off = frame.loc[frame[col].astype(bool), "value"], frame.loc[~frame[col].astype(bool), "value"]
        if len(on) < 1 or len(off) < 1:
            continue
        c = welch(on, off)
        rows.append({"op": op, "diff": c.diff, "ci": c.half, "n_on": len(on), "n_off": len(off)})
    table = pd.DataFrame(rows, columns=["op", "diff", "ci", "n_on", "n_off"])
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    if len(table):
        colors = ["#2ca02c" if d >= 0 else "#d62728" for d in table["diff"]]
        ax.barh(table["op"], table["diff"], xerr=table["ci"].fillna(0), color=colors, alpha=0.8, capsize=3)
        for i, r in table.iterrows():
            ax.annotate(f"n={r['n_on']}/{r['n_off']}", (0, i), xytext=(4, 8), textcoords="offset points", fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    short = (label or OBJECTIVE_LABELS.get(metric, metric)).split("\n")[0].replace(" (%)", "")
    ax.set_xlabel(f"{short}: with op minus without (percentage points)")
    ax.set_ylabel("transform")
    ax.set_title("Effect of each transform in the pool (95 % CI)")
    fig.tight_layout()
    return fig


def param_importances(importances: Mapping[str, float], trials: int | None = None) -> Figure:
    """Optuna parameter importances (fractions summing to 1) as horizontal bars; `trials`: how many complete
    trials they rest on (said in the title: over a handful, they are rough)."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.6, 0.35 * max(len(items), 1) + 1.6))
    ax.barh([k for k, _ in items], [100 * v for _, v in items], color="#4c72b0")
    ax.set_xlabel("importance for the objective (% of total, PED-ANOVA)")
    ax.set_ylabel("hyperparameter")
    ax.set_title("Optuna parameter importances" + (f"\nover {trials} complete trials{' (rough)' if trials < 20 else ''}"
                                                   if trials else ""))
    fig.tight_layout()
    return fig


def clean_vs_robust(results: pd.DataFrame, robust: str = "val_pgd_acc", clean: str = "val_clean_acc",
                    robust_label: str | None = None) -> Figure:
    """Every trial in (clean, robust) accuracy, coloured by optimizer, with the Pareto front; `robust_label`
    names the attack (eps, alpha, steps) where the caller knows it."""
    frame = results.dropna(subset=[robust, clean]).copy()
    frame["clean_pct"], frame["robust_pct"] = _pct(frame, clean), _pct(frame, robust)
    order = _order(frame)
    colors = _palette(order)
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    for opt in order:
        sub = frame[frame["optimizer"] == opt]
        ax.scatter(sub["clean_pct"], sub["robust_pct"], color=colors[opt], s=26, alpha=0.8, label=opt)
    front = pareto_front(frame, "clean_pct", "robust_pct")
    ax.plot(front["clean_pct"], front["robust_pct"], color="black", lw=1.2, ls="--", label="Pareto front")
    ax.set_xlabel(OBJECTIVE_LABELS.get(clean, clean))
    ax.set_ylabel(robust_label or OBJECTIVE_LABELS.get(robust, robust))
    ax.set_title("Clean vs robust accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def robust_vs_cost(results: pd.DataFrame, robust: str = "objective", cost: str = "cost_device_s",
                   robust_label: str | None = None, base: float | None = None) -> Figure:
    """Which fine-tune buys the most robustness per unit of training compute: every trial at (its training
    compute, its robust accuracy), coloured by method (hollow: with the patch augmentation), shaped by optimizer;
    stopped trials at the compute they used. `base`: the base model's robust accuracy (0..1), a dashed line."""
    frame = results.dropna(subset=[robust, cost]).copy()
    frame["robust_pct"] = _pct(frame, robust)
    frame["label"] = [method_label(m, a) for m, a in zip(frame.get("method", pd.Series(None, index=frame.index)),
                                                         frame.get("augment", pd.Series(None, index=frame.index)),
                                                         strict=True)]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, sub in frame.groupby("label", sort=True):
        method = str(label).removesuffix("+patch")
        color = METHOD_COLORS.get(method, "black")
        hollow = str(label).endswith("+patch")
        for opt, part in sub.groupby(sub["optimizer"].astype(str)):
            ax.scatter(part[cost], part["robust_pct"], s=40, marker=OPTIMIZER_MARKERS.get(opt, "o"),
                       facecolors="none" if hollow else color, edgecolors=color, linewidths=1.4, alpha=0.9)
        ax.scatter([], [], s=40, marker="o", facecolors="none" if hollow else color, edgecolors=color, label=label)
    for opt in sorted(frame["optimizer"].dropna().astype(str).unique()):
        ax.scatter([], [], s=40, marker=OPTIMIZER_MARKERS.get(opt, "o"), color="0.3", label=opt)
    if base is not None:
        ax.axhline(100 * base, color=UNDEFENDED_COLOR, ls="--", lw=1.2, label=f"base ({100 * base:.1f} %)")
    if len(frame) and frame[cost].min() > 0 and frame[cost].max() / frame[cost].min() > 20:
        ax.set_xscale("log")
    unit = {"cost_device_s": "training compute (device-seconds)",
            "cost_fwd_passes": "training compute (forward passes of one image)"}.get(cost, cost)
    ax.set_xlabel(unit)
    ax.set_ylabel(robust_label or OBJECTIVE_LABELS.get(robust, robust))
    ax.set_title("Robust accuracy vs training compute, per method")
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def accuracy_vs_eps(curves: pd.DataFrame) -> Figure:
    """Accuracy (%) vs eps, one line per model; `curves` has columns model, eps, accuracy (0..1), [optimizer]."""
    frame = curves.copy()
    frame["accuracy_pct"] = _pct(frame, "accuracy")
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    for model, sub in frame.groupby("model", sort=False):
        sub = sub.sort_values("eps")
        opt = str(sub["optimizer"].iloc[0]) if "optimizer" in sub and pd.notna(sub["optimizer"].iloc[0]) else None
        ax.plot(sub["eps"], sub["accuracy_pct"], marker="o", label=str(model),
                color=OPTIMIZER_COLORS.get(opt or "", "black" if opt is None else None),
                ls="--" if opt is None else "-")
    ax.set_xlabel("eps (L-inf budget, [0, 1] pixel units)")
    ax.set_ylabel("worst-case PGD accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Accuracy vs attack budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(epochs: pd.DataFrame, metric: str = "objective", label: str | None = None) -> Figure:
    """The objective per epoch, one line per trial, coloured by optimizer (pruned trials stop early)."""
    frame = epochs.dropna(subset=[metric]).copy()
    frame["value"] = _pct(frame, metric)
    order = _order(frame)
    colors = _palette(order)
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    for (_trial, opt), sub in frame.groupby(["trial_id", "optimizer"], sort=False):
        sub = sub.sort_values("training_iteration")
        ax.plot(sub["training_iteration"], sub["value"], color=colors[str(opt)], alpha=0.7, marker=".", lw=1)
    for opt in order:
        ax.plot([], [], color=colors[opt], label=opt)
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel(label or OBJECTIVE_LABELS.get(metric, f"{metric} (%)"))
    ax.set_title("Learning curves of the objective (one line per trial)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="optimizer", fontsize=8)
    fig.tight_layout()
    return fig


UNDEFENDED_COLOR = "0.55"
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
    color = _palette([optimizer])[optimizer]
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


def audit_bars(frame: pd.DataFrame) -> Figure:
    """Audit accuracy (%) per attack, paper parameters first, strong attacks after, per audited model.

    `frame`: columns model, attack, accuracy_pct, ci_lo_pct, ci_hi_pct (95 % Wilson), one row per (model, attack)
    in the audit's order.
    """
    attacks = list(dict.fromkeys(frame["attack"]))
    models = list(dict.fromkeys(frame["model"]))
    colors = dict(zip(models, sns.color_palette("deep", max(len(models), 1)).as_hex(), strict=False))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(attacks) + 2), 4.4))
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        sub = frame[frame["model"] == model].set_index("attack").reindex(attacks)
        xs = np.arange(len(attacks)) + (j - (len(models) - 1) / 2) * width
        acc = sub["accuracy_pct"].to_numpy(dtype=float)
        err = np.vstack([acc - sub["ci_lo_pct"].to_numpy(dtype=float), sub["ci_hi_pct"].to_numpy(dtype=float) - acc])
        bars = ax.bar(xs, acc, width, yerr=err, capsize=2, color=colors[model], label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=3)  # 0 % bars are otherwise invisible
    paper_rows = [i for i, a in enumerate(attacks) if "(paper)" in a]
    if paper_rows:
        ax.axvline(max(paper_rows) + 0.5, color="grey", lw=1, ls="--")
    ax.set_xticks(np.arange(len(attacks)), attacks, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("attack (left: the paper's parameters; right: strong attacks and their per-sample worst case)")
    ax.set_ylim(0, 105)
    ax.set_title("Robustness audit (bars: accuracy with 95 % Wilson interval)")
    if len(models) > 1:
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
