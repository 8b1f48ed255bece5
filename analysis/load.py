"""Study and reproduction directories -> tidy DataFrames (no torch, no Ray).

A study directory (see `study/runner.py`) holds results.parquet (trial rows), epochs.parquet (trial x epoch
rows), spec.yaml (the resolved spec: every value the analysis needs is there, nothing is computed again),
best.json and the Optuna storage; `load_study` reads them into one `StudyData`. A reproduction directory holds
results.parquet and reproduction.json (`load_reproduction_files`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis import versus_base
from trainables.vocab import PatchOp, values

OPS = values(PatchOp)


@dataclasses.dataclass
class StudyData:
    path: Path
    spec: dict[str, Any]
    results: pd.DataFrame  # one row per trial
    epochs: pd.DataFrame  # one row per trial and epoch
    best: dict[str, Any] | None
    base: dict[str, Any] | None = None  # base.json: the base checkpoint and its validation scores

    @property
    def name(self) -> str:
        return str(self.spec.get("name", self.path.name))

    @property
    def verdict(self) -> str | None:
        """The line every summary leads with: does the best trial beat its own base model, by how much, under
        which attack and on which split. None until the study is complete."""
        return versus_base.verdict(self.best)

    @property
    def dataset(self) -> str:
        return str(self.spec["data"]["dataset"])

    @property
    def arch(self) -> str:
        return str(self.spec["model"]["arch"])

    @property
    def objective(self) -> str:
        return str(self.spec["objective"]["metric"])

    @property
    def pgd_label(self) -> str:
        """How `val_pgd_acc` was measured: "val PGD-10 accuracy, eps 0.3, alpha 0.075 (%)", flagged when alpha x steps
        cannot reach eps."""
        o = self.spec["objective"]
        steps, eps, alpha = int(o["steps"]), float(o["eps"]), float(o["alpha"])
        short = " (cannot reach eps)" if alpha * steps < eps else ""
        starts = f" x{o['restarts']}" if int(o["restarts"]) > 1 else ""
        return f"val PGD-{steps}{starts} accuracy, eps {eps:g}, alpha {alpha:g}{short} (%)"

    @property
    def objective_label(self) -> str:
        """The objective as an axis label: which attack, how strong, on which split."""
        if self.objective == "pgd_acc":
            return self.pgd_label
        o = self.spec["objective"]
        grid = ", ".join(f"{float(e):g}" for e in o["eps_grid"])
        return f"val robust AUC (%)\n(mean PGD-{o['steps']} accuracy over eps {grid}, alpha 2.5 eps / {o['steps']})"

    @property
    def optuna_url(self) -> str:
        return optuna_url(self.path, self.spec["optuna_storage"])

    def finished(self) -> pd.DataFrame:
        """Trials that ran their whole fine-tuning budget (not pruned, not failed)."""
        if "status" not in self.results:
            return self.results
        return self.results[self.results["status"] == "COMPLETE"]


def load_study(path: str | Path) -> StudyData:
    path = Path(path)
    if not (path / "results.parquet").is_file() or not (path / "spec.yaml").is_file():
        raise FileNotFoundError(f"{path} has no results.parquet or spec.yaml (is it a finished patchtune study "
                                "directory?)")
    spec = yaml.safe_load((path / "spec.yaml").read_text())
    results = pd.read_parquet(path / "results.parquet")
    epochs = pd.read_parquet(path / "epochs.parquet") if (path / "epochs.parquet").is_file() else pd.DataFrame()
    best = json.loads((path / "best.json").read_text()) if (path / "best.json").is_file() else None
    base = json.loads((path / "base.json").read_text()) if (path / "base.json").is_file() else None
    return StudyData(path, spec, tidy_results(results), epochs, best, base)


def load_reproduction_files(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A `patchtune reproduce` directory: its settings and sizes (reproduction.json) and its results frame."""
    where = Path(path).expanduser()
    if not (where / "reproduction.json").is_file() or not (where / "results.parquet").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a finished `patchtune reproduce` directory (no "
                                "reproduction.json or results.parquet)")
    meta = json.loads((where / "reproduction.json").read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{where / 'reproduction.json'} is not a JSON object")
    return meta, pd.read_parquet(where / "results.parquet")


def base_eps_curve(base: dict[str, Any] | None) -> pd.DataFrame:
    """The base model's validation accuracy per eps (from base.json), in the `accuracy_vs_eps` layout."""
    scores = (base or {}).get("val") or {}
    rows = [{"model": "base (undefended)", "optimizer": None, "eps": float(k.removeprefix("val_pgd_acc_eps")),
             "accuracy": float(v)} for k, v in scores.items() if k.startswith("val_pgd_acc_eps")]
    return pd.DataFrame(rows, columns=["model", "optimizer", "eps", "accuracy"])


def tidy_results(results: pd.DataFrame) -> pd.DataFrame:
    """Add derived columns the plots use: percentages, log learning rate, pool size."""
    out = results.copy()
    for col in ("objective", "val_clean_acc", "val_pgd_acc", "val_robust_auc"):
        if col in out:
            out[f"{col}_pct"] = 100 * out[col].astype(float)
    if "pool" in out:
        out["pool_size"] = out["pool"].fillna("").map(lambda p: len([o for o in str(p).split(",") if o]))
        for op in OPS:
            if f"pool_{op}" not in out:
                out[f"pool_{op}"] = out["pool"].fillna("").map(lambda p, op=op: op in str(p).split(","))
    return out


def epochs_long(epochs: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch rows joined with each trial's optimizer (for learning curves)."""
    if epochs.empty:
        return epochs
    keep = [c for c in ("trial_id", "optimizer", "status") if c in results]
    return epochs.merge(results[keep], on="trial_id", how="left")


def eps_curves(results: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Long frame (trial_id, optimizer, eps, accuracy) from each trial's last epoch's val_pgd_acc_eps* columns."""
    if epochs.empty:
        return pd.DataFrame(columns=["trial_id", "optimizer", "eps", "accuracy"])
    last = epochs.sort_values("training_iteration").groupby("trial_id").tail(1)
    cols = [c for c in last.columns if c.startswith("val_pgd_acc_eps")]
    long = last.melt(id_vars=["trial_id"], value_vars=cols, var_name="eps", value_name="accuracy")
    long["eps"] = long["eps"].str.removeprefix("val_pgd_acc_eps").astype(float)
    long = long.merge(results[["trial_id", "optimizer", "objective"]], on="trial_id", how="left")
    return long.dropna(subset=["accuracy"])


def pareto_front(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated in (x, y), both maximised, sorted by x."""
    pts = frame[[x, y]].dropna().sort_values([x, y], ascending=[False, False])
    front, best_y = [], -float("inf")
    for idx, row in pts.iterrows():
        if row[y] > best_y:
            front.append(idx)
            best_y = row[y]
    return frame.loc[front].sort_values(x)


def optuna_url(study_dir: Path, configured: str | None = None) -> str:
    """A study's Optuna storage URL: the configured one, else the SQLite file inside the study directory."""
    return configured or f"sqlite:///{study_dir / 'optuna.db'}"


def open_optuna_storage(url: str) -> Any:
    """An Optuna storage from a study's URL: `journal:PATH` is a JournalStorage on a file (NFS-friendly), anything
    else an SQLAlchemy URL (sqlite:///..., postgresql://...). Imported lazily: Optuna is only needed here."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url)
