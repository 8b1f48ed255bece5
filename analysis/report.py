"""`patchtune report DIR`: every plot (PNG + SVG), a Markdown report and the same as one self-contained HTML
page (figures embedded) in DIR/report/, no Jupyter needed."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from analysis import grid, plots, repro_plots, stats, tables, versus_base
from analysis.audit_tables import bars_frame, checks_frame, headline, side_by_side
from analysis.html import render_page
from analysis.load import (
    StudyData,
    base_eps_curve,
    epochs_long,
    eps_curves,
    load_reproduction_files,
    load_study,
    open_optuna_storage,
)
from analysis.paper import paper_value
from analysis.repro_tables import SETTING_LABELS, SETTINGS, paper_by_method, robust_axis_label, robust_measure
from analysis.reproduction import render
from analysis.tables import attack_text
from trainables.atomic import atomic_write_bytes
from trainables.vocab import warmup_text


def optuna_importances(data: StudyData) -> dict[str, float]:
    """PED-ANOVA importances of the searched parameters for the objective (Optuna's default evaluator)."""
    import optuna

    study = optuna.load_study(study_name=data.name, storage=open_optuna_storage(data.optuna_url))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    with warnings.catch_warnings():
        # one warning per parameter with a sparse regime: a screenful on every small study; the figure's title
        # says how many trials the importances rest on instead
        warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)
        return dict(optuna.importance.get_param_importances(study, target=target))


def optimizer_finding(data: StudyData) -> str:
    """Whether the optimizer matters in this study's trials, compared within each fine-tuning method."""
    return optimizer_sentence(data.finished(), data.objective)


def optimizer_sentence(frame: pd.DataFrame, objective: str) -> str:
    """Plain sentences comparing the two most-sampled optimizers under the objective, within each fine-tuning
    method that has at least two finished trials of each (Welch t-test). A study whose methods differ between
    its optimizers would otherwise report a difference of method as one of optimizer; where no method has trials
    of both, it says so and states no p-value."""
    counts = frame["optimizer"].value_counts()
    if len(counts) < 2 or counts.iloc[1] < 2:
        return "Too few finished trials per optimizer to compare optimizers in this study."
    a, b = sorted(counts.index[:2])
    methods = frame["method"] if "method" in frame else pd.Series("patch", index=frame.index)
    sentences = []
    for method, sub in frame.groupby(methods):
        va, vb = (100 * sub.loc[sub.optimizer == o, "objective"] for o in (a, b))
        if len(va) >= 2 and len(vb) >= 2:
            sentences.append(stats.verdict_sentence(
                f"{a} beats {b} on the objective ({objective}, validation split) among the {method} trials",
                stats.welch(va, vb), p_label="Welch p", unit="trial",
                detail=f"n={len(va)} vs {len(vb)}; the trials differ in their other hyperparameters too"))
    if sentences:
        return " ".join(sentences)
    split = "; ".join(f"{method}: {(sub.optimizer == a).sum()} {a} / {(sub.optimizer == b).sum()} {b}"
                      for method, sub in frame.groupby(methods))
    return (f"This study's trials cannot separate the optimizer from the fine-tuning method: no method has at least "
            f"two finished trials with each of {a} and {b} ({split}), so any difference between them may be one of "
            f"method. No optimizer finding is claimed.")


def _save(fig: Figure, out: Path, name: str) -> str:
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120 if ext == "png" else None)
        atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue())
    plt.close(fig)
    return f"{name}.png"


def study_figures(data: StudyData) -> dict[str, Callable[[], Figure]]:
    results = data.results.dropna(subset=["objective"]) if "objective" in data.results else data.results
    results = results[results.get("status", "COMPLETE") != "FAILED"]
    label = data.objective_label
    figures: dict[str, Callable[[], Figure]] = {
        "robust_vs_lr": lambda: plots.robust_vs_lr(results, "objective", label),
        "robust_by_optimizer": lambda: plots.robust_by_optimizer(results, "objective", label),
        "optimizer_patch_heatmap": lambda: plots.optimizer_patch_heatmap(results, "objective", label),
        "transform_effect": lambda: plots.transform_effect(results, "objective", label),
        "clean_vs_robust": lambda: plots.clean_vs_robust(results, robust_label=data.pgd_label),
        "learning_curves": lambda: plots.learning_curves(epochs_long(data.epochs, data.results), "objective", label),
    }
    if "cost_device_s" in results and results["cost_device_s"].notna().any():
        base_objective = ((data.base or {}).get("val") or {}).get("objective")
        figures["robust_vs_cost"] = lambda: plots.robust_vs_cost(results, "objective", robust_label=label,
                                                                 base=base_objective)
    curves = eps_curves(data.results, data.epochs)
    if len(curves):
        best_per_opt = data.finished().sort_values("objective").groupby("optimizer").tail(1)["trial_id"]
        chosen = curves[curves["trial_id"].isin(best_per_opt)].copy()
        chosen["model"] = chosen["optimizer"].astype(str) + " best (" + chosen["trial_id"].astype(str) + ")"
        base = base_eps_curve(data.base)
        chosen = pd.concat([base, chosen[base.columns]], ignore_index=True) if len(base) else chosen
        if len(chosen):
            figures["accuracy_vs_eps"] = lambda: plots.accuracy_vs_eps(chosen)
    importances = optuna_importances(data)
    if importances:
        figures["param_importances"] = lambda: plots.param_importances(importances, len(data.finished()))
    return figures


MD_FLOATS = ".4g"  # float cells of the study report's tables


def write_study_report(path: str | Path) -> Path:
    data = load_study(path)
    out = data.path / "report"
    out.mkdir(exist_ok=True)
    images = {name: _save(make(), out, name) for name, make in study_figures(data).items()}
    r = data.results
    md = [f"# Study `{data.name}`", ""]
    verdict = versus_base.lines(data.best["trials"]) if data.best else []
    if verdict:  # the answer first: is the best trial better than the model it started from?
        md += [f"**{verdict[0]}**", "", *(f"- {line.strip()}" for line in verdict[1:]), ""]
    dataset, arch = data.dataset, data.arch
    md += [f"Data set **{dataset}**, arch **{arch}**, objective **{data.objective}** "
           f"on the validation split; {len(r)} trials: " +
           ", ".join(f"{k} {v}" for k, v in r["status"].value_counts().items()) + ".", ""]
    if data.best:
        md += ["## Best trial(s) on the test split (paper's attack parameters)", ""]
        rows = []
        for entry in data.best["trials"]:
            opt, n = entry["config"]["optimizer"], int(entry["test"]["n"])
            described = entry["test"].get("attacks") or data.best["test_split"].get("attacks") or {}
            for attack, acc in entry["test"]["accuracy"].items():
                column = "undefended" if attack == "clean" else opt
                paper = paper_value(dataset, attack, column)
                lo, hi = stats.wilson(round(acc * n), n)
                rows.append({"trial": entry["trial_id"], "optimizer": opt,
                             "attack": attack_text(described.get(attack) or {"name": attack}),
                             "ours (%) [95 % CI]": f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                             "paper (%)": "-" if paper is None else paper})
        frame = pd.DataFrame(rows)
        covered = (frame["paper (%)"] != "-").any()  # a data set the paper does not cover has no paper column
        md += [tables.markdown(frame if covered else frame.drop(columns="paper (%)"), floats=MD_FLOATS), "",
               f"n = {data.best['test_split']['n']} test images; intervals are Wilson 95 %. "
               + ("The paper's clean number is its undefended model's. " if covered else "")
               + "An attack flagged \"cannot reach eps\" overstates robustness"
               + ("; the audit below gives the strong attacks' numbers." if (data.path / "audit.json").is_file()
                  else ": `patchtune audit` the best checkpoint for a strong attack's number."), ""]
    audit_path = data.path / "audit.json"
    if audit_path.is_file():
        md += _audit_section(json.loads(audit_path.read_text()), out)
    md += ["## Findings", "", "- " + optimizer_finding(data)]
    finished = data.finished()
    by = ["method", "optimizer"] if "method" in finished else ["optimizer"]  # never pooled over methods
    for keys, sub in finished.groupby(by):
        iv = stats.t_interval(100 * sub["objective"])
        interval = f"[95 % CI {iv.lo:.1f}, {iv.hi:.1f}]" if len(sub) > 1 else "(one trial: no interval)"
        md.append(f"- {' + '.join(map(str, keys if isinstance(keys, tuple) else (keys,)))}: mean objective "
                  f"{iv.mean:.1f} % {interval} over {len(sub)} finished trial{'s' if len(sub) > 1 else ''}.")
    md += ["", "## Top trials", ""]
    cols = [c for c in ("trial_id", "status", "optimizer", "lr", "batch_size", "patch_size", "num_patches", "pool",
                        "objective", "val_clean_acc", "val_pgd_acc", "val_robust_auc") if c in r]
    top = r.sort_values("objective", ascending=False)[cols].head(10)
    md += [tables.markdown(top, floats=MD_FLOATS), "", "## Figures", ""]
    for name, file in images.items():
        md += [f"### {name.replace('_', ' ')}", "", f"![{name}]({file})", ""]
    return _write(out, f"Study {data.name}", "\n".join(md))


def _write(out: Path, title: str, markdown_text: str) -> Path:
    """report.md and report.html (the same, figures embedded) in `out`; returns report.md's path."""
    atomic_write_bytes(out / "report.md", markdown_text.encode())
    atomic_write_bytes(out / "report.html", render_page(title, markdown_text, out).encode())
    return out / "report.md"


def _audit_section(payload: dict[str, object], out: Path) -> list[str]:
    """Paper-parameter vs strong-attack accuracy of the audited best trial(s), side by side, with the checks."""
    trials = payload["trials"]
    assert isinstance(trials, list)
    reports = [rep for t in trials for rep in t["audits"]]
    labels = [str(t["trial_id"]) for t in trials for _ in t["audits"]]
    figure = _save(plots.audit_bars(bars_frame(reports, labels)), out, "audit")
    table = side_by_side(reports, labels)
    for col in table.columns[1:]:  # "-": an attack row that was not run at that eps (its alpha depends on eps)
        table[col] = table[col].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    md = ["## Robustness audit (test split): paper parameters vs strong attacks", "",
          tables.markdown(table, floats=MD_FLOATS), "",
          "Rows: the paper's FGSM / IFGSM-10 / PGD-10 (alpha 0.01), PGD with alpha = 2.5 eps / steps and restarts, "
          "AutoAttack (\"standard\": APGD-CE, APGD-T, FAB-T and Square at the reference parameters; otherwise the "
          "components and Square queries run are named), and the per-sample "
          "worst case over all of them — the number to quote.", ""]
    for label, rep in zip(labels, reports, strict=True):
        md += [f"### Checks: trial {label}, eps {rep['eps']:g}", "", headline(rep), "",
               tables.markdown(checks_frame(rep), floats=MD_FLOATS), ""]
    md += [f"![audit]({figure})", ""]
    return md


def write_reproduction_report(path: str | Path) -> Path:
    """Tables, findings and figures of a `patchtune reproduce` directory into DIR/report/."""
    path = Path(path)
    meta, results = load_reproduction_files(path)
    dataset, arch = str(meta["data"]["dataset"]), str(meta["model"]["arch"])
    out = path / "report"
    out.mkdir(exist_ok=True)
    images = {
        "method_bars": _save(repro_plots.method_bars(results, paper=paper_by_method(results, dataset), dataset=dataset), out, "method_bars"),
        "settings_bars": _save(repro_plots.settings_bars(
            results, SETTINGS, SETTING_LABELS, paper=paper_by_method(results, dataset, defended_only=True)),
            out, "settings_bars"),
    }
    if grid.robust_cells(results):
        key, label = robust_measure(results)[0], robust_axis_label(results, dataset)
        images["optimizer_bars"] = _save(repro_plots.optimizer_bars(results, key, label), out, "optimizer_bars")
        if "cost_device_s" in results:
            images["robust_vs_cost"] = _save(repro_plots.reproduction_cost(results, key, label), out, "robust_vs_cost")
    header = (f"# Reproduction: {dataset}, {arch}\n\n{meta['train_images']} fine-tuning images, "
              f"{meta['test_images']} test images, {meta['epochs']} epochs, lr {meta['lr']:g}"
              + (f"; robust fine-tunes: {warmup_text(meta['eps_warmup'])}" if meta.get("eps_warmup") else "")
              + f"; wall time {meta['seconds'] / 60:.1f} min.\n")
    text = render(results, dataset, header) + "\n## Figures\n\n" + "\n\n".join(f"![{k}]({v})" for k, v in images.items())
    return _write(out, f"Reproduction {dataset} {arch}", text)
