"""DataFrame -> matplotlib Figure, for studies and audits (a reproduction's figures: `repro_plots`). No torch, no
Ray; every function is tested on a small synthetic frame.

Optimizers keep one colour across every figure (`OPTIMIZER_COLORS`); accuracies are shown in percent and
axis labels carry units.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import matplotlib

if "ipykernel" not in sys.modules:  # notebooks keep their inline backend; scripts and the CLI draw off-screen
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from analysis.load import OPS, pareto_front  # noqa: E402
from analysis.stats import welch  # noqa: E402
from trainables.vocab import Method, values  # noqa: E402

OPTIMIZER_COLORS = {"adam": "#1f77b4", "rmsprop": "#d62728", "sgd": "#2ca02c", "adamw": "#9467bd"}
UNDEFENDED_COLOR = "0.55"  # the undefended base: grey in every figure
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


def palette(names: Sequence[str]) -> dict[str, str]:
    extra = iter(sns.color_palette("tab10", 10).as_hex()[4:])
    return {n: OPTIMIZER_COLORS.get(n) or next(extra) for n in names}


def _order(frame: pd.DataFrame) -> list[str]:
    present = [str(o) for o in frame["optimizer"].dropna().unique()]
    return [o for o in OPTIMIZER_COLORS if o in present] + sorted(o for o in present if o not in OPTIMIZER_COLORS)


def _pct(frame: pd.DataFrame, column: str) -> pd.Series:
    return 100 * frame[column].astype(float)


def _methods(frame: pd.DataFrame) -> list[str]:
    """The fine-tuning methods of the trials, in the vocabulary's order (one, "patch", for older results)."""
    present = set(frame["method"].dropna().astype(str)) if "method" in frame else {"patch"}
    return [m for m in values(Method) if m in present] + sorted(present - set(values(Method)))


def robust_vs_lr(results: pd.DataFrame, metric: str = "objective", label: str | None = None) -> Figure:
    """Each trial as a point, plus per-optimizer mean and 95 % CI over log-spaced lr bins: one panel per
    fine-tuning method, so that a difference of method never reads as one of optimizer or lr."""
    frame = results.dropna(subset=["lr", metric]).copy()
    frame["value"] = _pct(frame, metric)
    if "method" not in frame:
        frame["method"] = "patch"
    order, methods = _order(frame), _methods(frame)
    colors = palette(order)
    cols = min(3, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 + 4.2 * cols, 0.6 + 3.6 * rows), squeeze=False, sharex=True,
                             sharey=True)
    edges = np.logspace(np.log10(frame["lr"].min()) - 1e-9, np.log10(frame["lr"].max()) + 1e-9, 6)
    codes = np.clip(np.searchsorted(edges, frame["lr"].to_numpy(), side="right") - 1, 0, len(edges) - 2)
    frame["lr_center"] = np.sqrt(edges[codes] * edges[codes + 1])  # geometric bin centre
    for ax, method in zip(axes.flat, methods, strict=False):
        of_method = frame[frame["method"] == method]
        for opt in order:
            sub = of_method[of_method["optimizer"] == opt]
            if not len(sub):
                continue
            ax.scatter(sub["lr"], sub["value"], color=colors[opt], alpha=0.55, s=22, label=f"{opt} (n={len(sub)})")
            if sub["lr_center"].nunique() >= 2:
                sns.lineplot(data=sub, x="lr_center", y="value", color=colors[opt], errorbar=("ci", 95), ax=ax,
                             legend=False, err_kws={"alpha": 0.15})
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels collide in a narrow panel
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel(label or OBJECTIVE_LABELS.get(metric, f"{metric} (%)"))
        ax.set_title(f"method {method}", fontsize=10)
        ax.legend(title="optimizer", fontsize=8)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    fig.suptitle("Robustness vs learning rate, per fine-tuning method")
    fig.text(0.01, 0.005, "dots: trials; line: binned mean; band: 95 % CI", fontsize=7, color="0.35", va="bottom")
    fig.tight_layout()
    return fig


def robust_by_optimizer(results: pd.DataFrame, metric: str = "objective", label: str | None = None) -> Figure:
    """Distribution of the metric per optimizer, side by side per fine-tuning method (hue): box plot with every
    trial as a dot."""
    frame = results.dropna(subset=[metric]).copy()
    frame["value"] = _pct(frame, metric)
    if "method" not in frame:
        frame["method"] = "patch"
    order, methods = _order(frame), _methods(frame)
    fig, ax = plt.subplots(figsize=(3.2 + 1.2 * len(order) * max(1, len(methods)) ** 0.5, 4.2))
    sns.boxplot(data=frame, x="optimizer", y="value", hue="method", order=order, hue_order=methods, ax=ax,
                fliersize=0, boxprops={"alpha": 0.35}, legend=False)
    sns.stripplot(data=frame, x="optimizer", y="value", hue="method", order=order, hue_order=methods, ax=ax,
                  size=5, jitter=0.15, dodge=True)
    ax.set_xlabel("optimizer")
    ax.set_ylabel(label or OBJECTIVE_LABELS.get(metric, f"{metric} (%)"))
    ax.set_title("Robustness per optimizer and fine-tuning method")
    ax.legend(title="method", fontsize=8)
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
    colors = palette(order)
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
    colors = palette(order)
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


def audit_bars(frame: pd.DataFrame) -> Figure:
    """Audit accuracy (%) per attack, paper parameters first, strong attacks after, per audited model.

    `frame`: columns model, attack, paper (the paper's parameters), accuracy_pct, ci_lo_pct, ci_hi_pct (95 %
    Wilson), one row per (model, attack) in the audit's order.
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
    paper = set(frame.loc[frame["paper"], "attack"])
    paper_rows = [i for i, a in enumerate(attacks) if a in paper]
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
