"""Every plot function on a small synthetic frame: it draws what it should, with labelled axes."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from repro_frame import CELLS, GRID, repro_frame

from analysis import plots, repro_plots
from analysis.load import OPS, epochs_long, eps_curves, pareto_front, tidy_results
from analysis.repro_tables import SETTING_LABELS, SETTINGS, paper_by_method


@pytest.fixture
def results() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        opt = ["adam", "rmsprop", "sgd"][i % 3]
        pool = [op for op in OPS if rng.random() < 0.5] or ["noise"]
        lr = float(10 ** rng.uniform(-4, -2))
        rows.append({"trial_id": f"t{i}", "optimizer": opt, "lr": lr, "batch_size": 64, "patch_size": int(rng.integers(4, 9)),
                     "pool": ",".join(pool), "objective": float(rng.uniform(0.2, 0.6)), "val_clean_acc": float(rng.uniform(0.7, 0.9)),
                     "val_pgd_acc": float(rng.uniform(0.0, 0.3)), "status": "COMPLETE" if i % 5 else "PRUNED"})
    return tidy_results(pd.DataFrame(rows))


@pytest.fixture
def epochs(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in results.itertuples():
        for it in (1, 2):
            rows.append({"trial_id": r.trial_id, "training_iteration": it, "objective": r.objective * it / 2,
                         "val_pgd_acc_eps0.01": 0.8, "val_pgd_acc_eps0.05": 0.4, "val_pgd_acc_eps0.1": 0.1})
    return pd.DataFrame(rows)


def _labels(fig: Figure) -> tuple[str, str]:
    ax = fig.axes[0]
    return ax.get_xlabel(), ax.get_ylabel()


def test_robust_vs_lr(results: pd.DataFrame) -> None:
    fig = plots.robust_vs_lr(results)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "learning rate" in ax.get_xlabel() and "%" in ax.get_ylabel()
    assert sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets")) >= len(results)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["adam (n=8)", "rmsprop (n=8)", "sgd (n=8)"]  # fixed optimizer order and colours


def test_optimizer_colours_are_consistent(results: pd.DataFrame) -> None:
    fig = plots.clean_vs_robust(results)
    colours = {t.get_text(): h.get_facecolor()[0][:3] for t, h in zip(fig.axes[0].get_legend().get_texts(),
                                                                       fig.axes[0].get_legend().legend_handles, strict=True)
               if t.get_text() in plots.OPTIMIZER_COLORS}
    import matplotlib.colors as mcolors

    for opt, rgb in colours.items():
        assert np.allclose(rgb, mcolors.to_rgb(plots.OPTIMIZER_COLORS[opt]))


def test_distribution_heatmap_transform_and_importance(results: pd.DataFrame) -> None:
    x, y = _labels(plots.robust_by_optimizer(results))
    assert x == "optimizer" and y
    fig = plots.optimizer_patch_heatmap(results)
    assert fig.axes[0].get_xlabel() == "patch size w (pixels)"
    fig = plots.transform_effect(results)
    assert len(fig.axes[0].patches) == len(OPS) and "percentage points" in fig.axes[0].get_xlabel()
    fig = plots.param_importances({"lr_adam": 0.6, "optimizer": 0.3, "patch_size": 0.1})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["patch_size", "optimizer", "lr_adam"]


def test_pareto_front_is_non_dominated(results: pd.DataFrame) -> None:
    front = pareto_front(results, "val_clean_acc", "val_pgd_acc")
    for _, p in front.iterrows():
        dominated = (results["val_clean_acc"] >= p["val_clean_acc"]) & (results["val_pgd_acc"] > p["val_pgd_acc"])
        assert not dominated.any()
    fig = plots.clean_vs_robust(results)
    assert "clean" in fig.axes[0].get_xlabel()


def test_eps_curves_and_learning_curves(results: pd.DataFrame, epochs: pd.DataFrame) -> None:
    curves = eps_curves(results, epochs)
    assert sorted(curves["eps"].unique()) == [0.01, 0.05, 0.1] and len(curves) == 3 * len(results)
    curves["model"] = curves["trial_id"]
    fig = plots.accuracy_vs_eps(curves[curves.trial_id.isin(["t0", "t1"])])
    assert len(fig.axes[0].lines) == 2 and "eps" in fig.axes[0].get_xlabel()
    fig = plots.learning_curves(epochs_long(epochs, results))
    assert len(fig.axes[0].lines) >= len(results) and fig.axes[0].get_xlabel() == "fine-tuning epoch"


def test_analysis_imports_neither_torch_nor_ray() -> None:
    code = ("import sys, analysis.load, analysis.plots, analysis.report, analysis.paper, analysis.audit_tables, analysis.grid, "
            "analysis.reproduction, analysis.stats, analysis.tables\n"
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]\nprint(bad)\nsys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_audit_bars() -> None:
    from analysis.audit_tables import bars_frame
    from analysis.plots import audit_bars

    rep = {"eps": 0.3, "worst_case_acc": 0.0, "worst_case_ci95": [0.0, 0.07],
           "rows": [{"name": "clean", "params": {}, "acc": 0.9, "ci95": [0.8, 0.95]},
                    {"name": "paper_pgd10", "params": {}, "acc": 0.5, "ci95": [0.4, 0.6]},
                    {"name": "strong_pgd100x5", "params": {"eps": 0.3, "steps": 100, "restarts": 5, "alpha": 0.0075},
                     "acc": 0.02, "ci95": [0.0, 0.05]}]}
    frame = bars_frame([rep, rep], ["a", "b"])
    assert list(frame["attack"][:4]) == ["Clean", "PGD-10, alpha 0.01 (paper; cannot reach eps > 0.1)",
                                         "PGD-100 x5 restarts, alpha = eps/40", "Worst case"]
    fig = audit_bars(frame)
    ax = fig.axes[0]
    assert len(ax.patches) == 8 and "accuracy (%)" in ax.get_ylabel()
    # the dashed line parts the paper's attacks (left) from the strong ones (right)
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [1.5]
    assert [round(p.get_height(), 1) for p in ax.patches[:4]] == [90.0, 50.0, 2.0, 0.0]
    from analysis.audit_tables import headline

    rep.update(n=500, clean_acc=0.9, verdict="PASS", checks=[{"name": "noise", "status": "PASS", "detail": ""}])
    text = headline(rep)
    assert "paper PGD-10 50.00 %" in text and "worst case 0.00 % [0.0, 7.0]" in text and "masking checks PASS" in text
    assert "overstates robustness by 50.0 pt" in text
    rep["rows"][1]["acc"] = 0.0
    assert "overstates" not in headline(rep)


def _bar_colours(fig: Figure) -> dict[str, str]:
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    return {label: mcolors.to_hex(h.patches[0].get_facecolor()) for h, label in zip(handles, labels, strict=True)
            if hasattr(h, "patches")}


def test_method_bars_take_methods_labels_and_colours_from_the_metadata() -> None:
    frame = repro_frame(seeds=3, shuffle=True)
    fig = repro_plots.method_bars(frame, paper=paper_by_method(frame, "fmnist"), dataset="fmnist")
    ax = fig.axes[0]
    colours = _bar_colours(fig)
    assert list(colours) == ["undefended", "patch + Adam", "patch + RMSProp", "patch + Adam (long)",
                             "patch + RMSProp (long)", "paper FGSM-AT", "paper IFGSM-AT", "paper PGD-AT"]
    paper_cells = [m for m in CELLS if not GRID[m].robust]  # robust fine-tunes: `optimizer_bars`
    assert len(ax.patches) == 4 * len(paper_cells) == 32 and ax.get_ylabel() == "test accuracy (%)"
    assert colours["patch + Adam"] == plots.OPTIMIZER_COLORS["adam"]
    assert colours["patch + RMSProp"] == plots.OPTIMIZER_COLORS["rmsprop"]
    for opt in ("Adam", "RMSProp"):  # a long fine-tune: the same hue, lighter
        short, long = (np.array(mcolors.to_rgb(colours[k])) for k in (f"patch + {opt}", f"patch + {opt} (long)"))
        assert (long >= short).all() and long.sum() > short.sum() + 0.3
    assert len(set(colours.values())) == len(colours)  # every method distinguishable
    ticks = [line for line in ax.lines if line.get_linewidth() == 2 and line.get_color() == "black"]
    assert len(ticks) == 4 + 3 + 3  # the paper's values: undefended (4 keys), patch + Adam / RMSProp (3 attacks each)
    renamed = frame.assign(cell=frame["cell"] + "_x")  # the names are only identifiers
    assert _bar_colours(repro_plots.method_bars(renamed)) == colours
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["clean", "FGSM", "IFGSM\n(cannot reach eps)", "PGD-10\n(cannot reach eps)"]  # F-MNIST's eps 0.3
    assert [t.get_text() for t in repro_plots.method_bars(frame, dataset="cifar10").axes[0].get_xticklabels()][3] == "PGD-10"


def test_optimizer_bars_group_the_methods_and_colour_the_optimizers() -> None:
    frame = repro_frame(seeds=3, shuffle=True, strong=True)
    fig = repro_plots.optimizer_bars(frame, "strong/pgd", "PGD-100 x5 accuracy at eps 0.3 (%)")
    clean, robust = fig.axes
    assert [t.get_text() for t in robust.get_xticklabels()] == ["patch", "FGSM-RS", "PGD-5-AT"]
    assert robust.get_title() == "PGD-100 x5 accuracy at eps 0.3 (%)" and clean.get_title() == "clean"
    assert len(robust.patches) == 2 + 3 + 3  # patch: Adam, RMSProp; each robust method: three optimizers
    heights = {(round(b.get_x() + b.get_width() / 2, 2)): b.get_height() for b in robust.patches}
    pgd = [h for x, h in sorted(heights.items()) if x > 1.5]
    assert pgd == pytest.approx([22.0, 28.0, 12.0], abs=0.5)  # PGD-AT Adam, RMSProp, SGD: strong = level - 8 pt
    assert [mcolors.to_hex(b.get_facecolor()) for b in robust.patches[-3:]] == [
        plots.OPTIMIZER_COLORS[o] for o in ("adam", "rmsprop", "sgd")]
    dots = [c for c in robust.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in dots) == 8 * 3  # every seed a dot
    legend = [t.get_text() for t in robust.get_legend().get_texts()]
    assert legend == ["adam", "rmsprop", "sgd", "undefended"]


def test_reproduction_cost_puts_each_fine_tuned_model_at_its_compute() -> None:
    frame = repro_frame(seeds=2, strong=True)
    fig = repro_plots.reproduction_cost(frame, "strong/pgd", "PGD-100 x5 accuracy at eps 0.3 (%)")
    ax = fig.axes[0]
    fine_tuned = [m for m in CELLS if not GRID[m].undefended]  # every cell but the base itself
    assert sum(len(c.get_offsets()) for c in ax.collections) == 2 * len(fine_tuned)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:6] == ["fgsm_rs", "paper_fgsm_at", "paper_ifgsm_at", "paper_pgd_at", "patch", "pgd_at"]
    assert "base (0.0 %)" in legend  # the undefended model
    assert ax.get_xlabel() == "training compute (device-seconds)"


def test_settings_bars_show_the_table1_models_with_the_paper_lines() -> None:
    frame = repro_frame(seeds=2)
    fig = repro_plots.settings_bars(frame, SETTINGS, SETTING_LABELS, paper=paper_by_method(frame, "fmnist", defended_only=True))
    ax = fig.axes[0]
    assert list(_bar_colours(fig)) == ["undefended", "patch + Adam", "patch + RMSProp", "patch + Adam (long)",
                                       "patch + RMSProp (long)"]
    assert len(ax.patches) == 5 * len(SETTINGS) and ax.get_xlabel() == "evaluation setting"
    assert sorted(line.get_ydata()[0] for line in ax.lines) == [50.08, 53.72]
    adam_normeps = ax.patches[len(SETTINGS) + SETTINGS.index("normeps")]
    assert adam_normeps.get_height() == pytest.approx(53.0)


def test_the_objective_attack_is_named_with_its_strength() -> None:
    from pathlib import Path

    from analysis.load import StudyData
    from study.spec import parse_spec

    def label(spec: dict) -> str:
        """The label of a study with this spec, from its resolved spec.yaml as a study directory holds it."""
        resolved = parse_spec({"name": "s", **spec}).resolved().to_json()
        return StudyData(Path("s"), resolved, pd.DataFrame(), pd.DataFrame(), None).pgd_label

    # the default since the objective's alpha became 2.5 eps / steps; the paper's eps per data set
    assert label({"data": {"dataset": "fmnist"}}) == "val PGD-10 accuracy, eps 0.3, alpha 0.075 (%)"
    assert label({"data": {"dataset": "cifar10"}}) == "val PGD-10 accuracy, eps 0.03, alpha 0.0075 (%)"
    assert label({"objective": {"restarts": 3}}) == "val PGD-10 x3 accuracy, eps 0.3, alpha 0.075 (%)"
    # studies that scored with the paper's alpha say that it cannot reach eps
    assert label({"objective": {"eps": 0.3, "alpha": 0.01, "steps": 10}}) == \
        "val PGD-10 accuracy, eps 0.3, alpha 0.01 (cannot reach eps) (%)"


def test_robust_vs_cost_per_method(results: pd.DataFrame) -> None:
    frame = results.copy()
    methods = [("patch", None), ("fgsm_rs", False), ("pgd_at", True), ("pgd_at", False)]
    frame["method"] = [methods[i % 4][0] for i in range(len(frame))]
    frame["augment"] = [methods[i % 4][1] for i in range(len(frame))]
    frame["cost_device_s"] = [{"patch": 10.0, "fgsm_rs": 20.0, "pgd_at": 60.0}[m] for m in frame["method"]]
    frame.loc[0, "cost_device_s"] = np.nan  # a failed trial has no cost: left out, not drawn at 0
    fig = plots.robust_vs_cost(frame, robust_label="val PGD-10 accuracy, eps 0.1 (%)", base=0.08)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training compute (device-seconds)" and ax.get_ylabel().startswith("val PGD-10")
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn == len(frame) - 1
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:4] == ["fgsm_rs", "patch", "pgd_at", "pgd_at+patch"] and "base (8.0 %)" in legend
    assert {"adam", "rmsprop", "sgd"} <= set(legend)
    assert plots.method_label("pgd_at", True) == "pgd_at+patch" and plots.method_label(None, None) == "patch"


def test_report_page_embeds_figures_renders_tables_and_escapes_html(tmp_path) -> None:
    from analysis.html import render_page

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    (tmp_path / "fig.png").write_bytes(png)
    md = "# Study `x`\n\n<script>alert(1)</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![fig](fig.png)\n"
    page = render_page("Study x <1>", md, tmp_path)
    assert "<title>Study x &lt;1&gt;</title>" in page and "<h1>Study <code>x</code></h1>" in page
    assert "<th>a</th>" in page and "<td>2</td>" in page
    assert "<script>" not in page, "raw HTML in the Markdown is escaped, not run"
    src = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="fig"', page)
    assert src is not None and base64.b64decode(src.group(1)) == png
    with pytest.raises(FileNotFoundError):
        render_page("t", "![gone](gone.png)", tmp_path)


def test_audit_table_names_what_ran_in_the_audits_order() -> None:
    """A reduced AutoAttack is named (components, Square queries), never "standard"; rows keep the audit's order
    (clean, paper, strong PGD, AutoAttack, worst case), and the strong PGD, whose step grows with eps, is one row
    across budgets."""
    from analysis.audit_tables import side_by_side

    def rep(eps: float, components: list[str], queries: int) -> dict[str, object]:
        alpha = 2.5 * eps / 50
        return {"eps": eps, "worst_case_acc": 0.1, "worst_case_ci95": [0.05, 0.2], "seconds": 4, "rows": [
            {"name": "clean", "params": {}, "acc": 0.9, "ci95": [0.8, 0.95], "max_linf": 0, "seconds": 1},
            {"name": "paper_pgd10", "params": {}, "acc": 0.5, "ci95": [0.4, 0.6], "max_linf": eps, "seconds": 1},
            {"name": "strong_pgd50x3", "params": {"eps": eps, "steps": 50, "restarts": 3, "alpha": alpha}, "acc": 0.2,
             "ci95": [0.1, 0.3], "max_linf": eps, "seconds": 1},
            {"name": "autoattack", "params": {"components": components, "square_queries": queries}, "acc": 0.1,
             "ci95": [0.05, 0.2], "max_linf": eps, "seconds": 1}]}

    table = side_by_side([rep(0.1, ["apgd-ce", "apgd-t", "square"], 1000), rep(0.3, ["apgd-ce", "apgd-t", "square"], 1000)],
                         ["t", "t"])
    assert list(table["attack"]) == ["Clean", "PGD-10, alpha 0.01 (paper; cannot reach eps > 0.1)",
                                     "PGD-50 x3 restarts, alpha = eps/20",
                                     "AutoAttack (apgd-ce, apgd-t, square; Square 1000 queries)",
                                     "Worst case (per sample, all rows)"]
    standard = side_by_side([rep(0.3, ["apgd-ce", "apgd-t", "fab-t", "square"], 5000)], ["t"])
    assert "AutoAttack (standard)" in list(standard["attack"])


def _with_methods(results: pd.DataFrame, confounded: bool) -> pd.DataFrame:
    """Adam trials all `patch` and the others all `pgd_at` (confounded), or both methods under every optimizer."""
    frame = results.copy()
    if confounded:
        frame["method"] = np.where(frame["optimizer"] == "adam", "patch", "pgd_at")
    else:
        frame["method"] = np.where(frame.groupby("optimizer").cumcount() % 2 == 0, "patch", "pgd_at")
    return frame


def test_optimizer_findings_never_report_a_method_difference_as_an_optimizer_one(results: pd.DataFrame) -> None:
    from analysis.report import optimizer_sentence

    finished = results[(results["status"] == "COMPLETE") & results["optimizer"].isin(["adam", "rmsprop"])]
    confounded = _with_methods(finished, confounded=True)
    confounded.loc[confounded["method"] == "pgd_at", "objective"] += 0.4  # a large difference... of method
    text = optimizer_sentence(confounded, "pgd_acc")
    assert "cannot separate the optimizer from the fine-tuning method" in text and "No optimizer finding" in text
    assert "p=" not in text
    mixed = optimizer_sentence(_with_methods(finished, confounded=False), "pgd_acc")
    assert "among the patch trials" in mixed and "among the pgd_at trials" in mixed and "Welch p=" in mixed


def test_optimizer_figures_show_the_method(results: pd.DataFrame) -> None:
    frame = _with_methods(results, confounded=False)
    fig = plots.robust_vs_lr(frame)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["method patch", "method pgd_at"]
    fig = plots.robust_by_optimizer(frame)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["patch", "pgd_at"]
