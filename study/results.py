"""A study's results: results.parquet / epochs.parquet from Tune's ResultGrid and Optuna, and the status table.

Optuna's side comes from `Study.trials_dataframe()`, Tune's from the ResultGrid's `Result`s (their last
metrics, per-epoch `metrics_dataframe` and errors).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from analysis import versus_base
from analysis.load import open_optuna_storage
from analysis.tables import test_line
from study.preflight import load_study_spec
from study.spec import StudySpec
from trainables.atomic import atomic_open
from trainables.config import TRIAL_CONFIG_KEYS


def optuna_trials(spec: StudySpec) -> pd.DataFrame:
    """Optuna's view: number, state, value, params, ray_trial_id and error per trial (`Study.trials_dataframe`)."""
    study = optuna.load_study(study_name=spec.name, storage=open_optuna_storage(spec.optuna_url()))
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs"), multi_index=False)
    if frame.empty:
        return frame
    # "value", or with named metrics (set_metric_names) "value_<name>"; multi-objective "values_<name or i>": the first
    value = next((c for c in frame.columns if c == "value" or c.startswith(("value_", "values_"))), "value")
    def column(name: str) -> pd.Series:  # None where missing, as in the Optuna trial itself (not NaN)
        col = frame[name] if name in frame else pd.Series(None, index=frame.index)
        return col.astype(object).where(col.notna(), None)

    out = pd.DataFrame({
        "optuna_number": frame["number"],
        "optuna_state": frame["state"],
        "optuna_value": column(value),
        "trial_id": column("user_attrs_ray_trial_id"),
        "optuna_error": column("user_attrs_error"),
    })
    params = {c: "param_" + c.removeprefix("params_") for c in frame.columns if c.startswith("params_")}
    return pd.concat([out, frame[list(params)].rename(columns=params)], axis=1)


def collect_results(spec: StudySpec, grid: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results: one row per trial, epochs: one row per trial and epoch) from a ResultGrid + Optuna."""
    rows, epochs = [], []
    for result in grid:
        config = dict(result.config or {})
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        if history is not None and len(history):
            h = history.copy()
            h["trial_id"] = trial_id
            epochs.append(h)
        rows.append({
            "trial_id": trial_id,
            **{k: config.get(k) for k in TRIAL_CONFIG_KEYS},
            **{f"pool_{op.value}": op.value in str(config.get("pool", "")).split(",") for op in spec.search.pool},
            "epochs_done": int(metrics.get("training_iteration", 0) or 0),
            **{k: metrics.get(k) for k in ("objective", "val_clean_acc", "val_pgd_acc", "val_paper_pgd_acc", "val_robust_auc",
                                           "train_loss", "cost_device_s", "cost_fwd_passes", "cost_bwd_passes")},
            "error": metrics.get("error") or (str(result.error).splitlines()[0][:500] if result.error else ""),
            "node_id": metrics.get("node_id"),
            "device": metrics.get("device"),
            "path": str(result.path),
        })
    results = pd.DataFrame(rows)
    ot = optuna_trials(spec)
    if len(results) and len(ot):
        results = results.merge(ot, on="trial_id", how="left")
    if len(results):
        results["status"] = [_status(r) for r in results.to_dict("records")]
    history = pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()
    if len(history):
        # An epoch replayed after a driver crash (finished after the last snapshot) is counted once.
        history = history.drop_duplicates(["trial_id", "training_iteration"], keep="last").reset_index(drop=True)
    return results, history


def _status(row: dict[str, Any]) -> str:
    if row.get("error") or row.get("optuna_state") == "FAIL":
        return "FAILED"
    if row.get("optuna_state") == "PRUNED":
        return "PRUNED"
    if row.get("epochs_done", 0) >= (row.get("epochs") or math.inf):
        return "COMPLETE"
    return "INCOMPLETE"


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        frame.to_parquet(f, index=False)


def status_table(study_dir: Path, trials: pd.DataFrame | None = None) -> str:
    """A one-screen summary from the study's files (works while the study runs); `trials`: Optuna's trials
    when the caller has read them already."""
    study_dir = study_dir.expanduser().resolve()
    spec = load_study_spec(study_dir)
    lines = [f"study {spec.name} ({spec.data.dataset.value}, {spec.arch}), objective {spec.objective.metric.value}, "
             f"{spec.num_samples} trials requested — {study_dir}"]
    ot = trials
    if ot is None:
        try:
            ot = optuna_trials(spec)
        except Exception as exc:  # storage missing while the study has not started
            ot = pd.DataFrame()
            lines.append(f"(Optuna storage not readable yet: {str(exc).splitlines()[0][:120]})")
    if len(ot):
        counts = ot["optuna_state"].value_counts().to_dict()
        lines.append("Optuna states: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        cols = [c for c in ("optuna_number", "optuna_state", "optuna_value", "param_method", "param_optimizer",
                            "param_batch_size", "param_patch_size", "trial_id", "optuna_error") if c in ot.columns]
        shown = ot[cols].copy()
        # an integer parameter only some trials have (patch_size: not every method patches) comes back as floats
        # with NaN; "-" where the trial has no such parameter
        for c in ("param_batch_size", "param_patch_size"):
            if c in shown:
                shown[c] = shown[c].map(lambda v: "-" if pd.isna(v) else f"{v:g}")
        with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 40):
            lines.append(shown.to_string(index=False, na_rep="-"))
    best = study_dir / "best.json"
    if best.is_file():
        payload = json.loads(best.read_text())
        verdict = versus_base.lines(payload["trials"])
        lines[1:1] = verdict[:1]  # the verdict leads, right after the study's name
        for entry in payload["trials"]:
            lines.append(f"best trial {entry['trial_id']}: test ({entry['test']['n']} images) {test_line(entry['test'])}")
        audit = study_dir / "audit.json"
        if audit.is_file():
            for trial in json.loads(audit.read_text())["trials"]:
                for rep in trial["audits"]:
                    lines.append(f"audit of {trial['trial_id']}: eps {rep['eps']:g}, {rep['n']} test images: worst case "
                                 f"{100 * rep['worst_case_acc']:.2f}% over paper + strong attacks, masking checks {rep['verdict']}")
        lines += verdict[1:]
    elif (study_dir / "results.parquet").is_file():
        lines.append("results.parquet written; no best.json (study incomplete or no trial completed)")
    else:
        lines.append(f"running or interrupted; `patchtune resume {study_dir}` continues an interrupted study")
    return "\n".join(lines)

