"""A small real study and a tiny real reproduction on real Ray, each built once for this module, checked end
to end: their result files, both analysis notebooks executed headless (nbclient), and `patchtune report`."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import optuna
import pandas as pd
import pytest
import yaml
from doc_blocks import block_run_by
from nbclient import NotebookClient
from repro_frame import CELLS, GRID

from conftest import ensure_local_ray
from trainables.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "analysis" / "notebooks"
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def api_example() -> str:
    """The Python API page's example (docs/guide/api.md), as a user would paste it."""
    return block_run_by("tests/test_end_to_end.py::test_python_api_gives_the_study_files_as_typed_objects").text


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Python API page's example run as written, in a directory holding a small real `study.yaml`; the
    names it defines (`study`, `curves`, `report`, ...) are returned. Its study is the one this module checks: a
    base pretrained first, TPE + ASHA over 4 trials of 2 epochs (one at a time, so ASHA's decisions do not depend
    on timing), the best trial on the test split, the `audit:` option, and every trial logged to an MLflow file
    store."""
    ensure_local_ray()
    work = tmp_path_factory.mktemp("api")
    (work / "study.yaml").write_text(yaml.safe_dump({
        "name": "e2e", "storage": str(work / "studies"),
        "base": {"pretrain": {"epochs": 1, "limit_train": 1000, "limit_eval": 150}},
        "data": {"dataset": "fmnist", "limit_train": 400, "limit_val": 80, "limit_test": 100},
        "search": {"lr": {"adam": [1e-4, 1e-2], "rmsprop": [1e-4, 1e-2]}, "batch_size": [64, 128], "patch_size": [4, 10]},
        "epochs": 2, "objective": {"metric": "robust_auc", "eps_grid": [0.02, 0.05], "steps": 5},
        "num_samples": 2, "max_concurrent": 1,  # the example asks for 4
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "sampler": {"type": "tpe", "n_startup_trials": 2},
        "audit": {"enabled": True, "limit": 16, "strong_steps": 10, "strong_restarts": 2, "check_limit": 8,
                  "components": ["apgd-ce", "square"]},
        "tracking": {"mlflow": (work / "mlruns").as_uri()},
    }))
    names: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        exec(compile(api_example(), "docs/guide/api.md (Python API)", "exec"), names)
    finally:
        os.chdir(cwd)
    return names


@pytest.fixture(scope="module")
def tiny_study_dir(api_run: dict[str, Any]) -> Path:
    path: Path = api_run["study"].path
    return path


def test_python_api_gives_the_study_files_as_typed_objects(api_run: dict[str, Any], tiny_study_dir: Path) -> None:
    from study import api
    from trainables.vocab import UserError

    study = api_run["study"]
    assert isinstance(study, api.Study) and study.complete and study.spec.tracking.mlflow
    pd.testing.assert_frame_equal(study.results, pd.read_parquet(tiny_study_dir / "results.parquet"))
    pd.testing.assert_frame_equal(study.epochs, pd.read_parquet(tiny_study_dir / "epochs.parquet"))
    pd.testing.assert_frame_equal(api.load(tiny_study_dir).results, study.results)
    assert set(api_run["curves"].columns) == set(study.results["trial_id"])
    status = api.status(tiny_study_dir)
    assert isinstance(status, api.Status) and str(status).splitlines()[1] == study.verdict == status.verdict
    assert len(status.trials) == 4 and set(status.trials["optuna_state"]) <= {"COMPLETE", "PRUNED"}
    assert study.best_checkpoint == tiny_study_dir / "best.pt" and study.best_checkpoint.is_file()
    report = api_run["report"]
    assert isinstance(report, api.Report) and report.html.is_file() and len(report.figures) >= 8
    assert study.finished_trials()["objective"].is_monotonic_decreasing
    with pytest.raises(UserError, match="is not a patchtune study directory"):
        api.load(tiny_study_dir.parent)
    with pytest.raises(TypeError, match="unknown keyword"):
        api.load_spec("quick", frobnicate=1)
    audit = api.audit(study.best_checkpoint, eps=0.1, limit=8, strong_steps=3, strong_restarts=1, autoattack=False,
                      check_limit=8)
    frame = audit.to_frame()
    assert list(frame["eps"].unique()) == [0.1] and frame["attack"].iloc[-1] == "worst case"
    assert frame["accuracy"].between(0, 1).all() and (frame["ci95_low"] <= frame["accuracy"]).all()


def test_mlflow_holds_every_trial_and_the_best_checkpoint(api_run: dict[str, Any], tmp_path: Path) -> None:
    """Tune's MLflowLoggerCallback logged each trial as a run (params, every epoch's metrics), and the study its
    best checkpoint and test scores: read back with MLflow's own client from the real file store."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    study = api_run["study"]
    client = MlflowClient(tracking_uri=study.spec.tracking.mlflow)
    experiment = client.get_experiment_by_name("e2e")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {f"trial_{t}" for t in study.results["trial_id"]}
    for row in study.results.to_dict("records"):
        run = runs[f"trial_{row['trial_id']}"]
        assert run.data.tags["patchtune.study"] == "e2e" and run.info.status == "FINISHED"
        assert run.data.params["optimizer"] == row["optimizer"]
        epochs = study.epochs[study.epochs["trial_id"] == row["trial_id"]].sort_values("training_iteration")
        history = sorted(client.get_metric_history(run.info.run_id, "objective"), key=lambda m: m.step)
        assert [m.step for m in history] == list(epochs["training_iteration"])
        assert [m.value for m in history] == pytest.approx(list(epochs["objective"]), abs=1e-6)
    best = study.best["trials"][0]
    run = runs[f"trial_{best['trial_id']}"]
    assert run.data.tags["patchtune.best_rank"] == "0"
    assert run.data.metrics["test_clean_acc"] == pytest.approx(best["test"]["accuracy"]["clean"])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "best")] == ["best/best.pt"]
    copy = client.download_artifacts(run.info.run_id, "best/best.pt", str(tmp_path))
    assert Path(copy).read_bytes() == (study.path / "best.pt").read_bytes()


@pytest.fixture(scope="module")
def tiny_repro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real `patchtune reproduce fmnist` (2 seeds x the paper's grid and PGD-AT fine-tuning with Adam and
    RMSProp) on real Ray: bases pretrained on 500 images and scored on 100, 10 test images, a strong PGD-20 x2 instead of the
    default PGD-100 x5."""
    from study import api

    ensure_local_ray()
    repro = api.reproduce("fmnist", storage=tmp_path_factory.mktemp("repro"), name="tiny", seeds=2, limit_train=100,
                          limit_test=10, limit_val=50, pretrain_epochs=1, pretrain_limit_train=500,
                          pretrain_limit_eval=100, epochs=1, eot_draws=2, long_epochs=2, at_from_scratch=True,
                          strong_steps=20, strong_restarts=2, robust_methods=("pgd_at",), optimizers=("adam", "rmsprop"))
    assert isinstance(repro, api.Reproduction) and repro.dataset == "fmnist" and repro.results["seed"].nunique() == 2
    return repro.path


# ----------------------------------------------------------------------------------------- result files


def optuna_states(study_dir: Path, name: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    return {t.user_attrs.get("ray_trial_id", f"#{t.number}"): t for t in study.get_trials()}


def test_study_end_to_end_with_pretrained_base_asha_and_best_on_test(tiny_study_dir: Path) -> None:
    study_dir = tiny_study_dir
    assert study_dir.name == "e2e"
    results = pd.read_parquet(study_dir / "results.parquet")
    assert len(results) == 4 and results["trial_id"].is_unique
    states = optuna_states(study_dir, "e2e")
    assert len(states) == 4 and set(states) == set(results["trial_id"])
    assert not [t for t in states.values() if t.state.name == "RUNNING"]
    for row in results.to_dict("records"):
        t = states[row["trial_id"]]
        # ASHA-stopped trials are PRUNED in Optuna, never COMPLETE with a truncated score
        expected = "PRUNED" if row["epochs_done"] < 2 else "COMPLETE"
        assert t.state.name == expected == row["status"] == row["optuna_state"]
        assert t.params["optimizer"] == row["optimizer"] and 1e-4 <= row["lr"] <= 1e-2
        assert 0.0 <= row["objective"] <= row["val_clean_acc"] <= 1.0
        if expected == "COMPLETE":  # Optuna's value column is named after the metric (set_metric_names)
            assert row["optuna_value"] == pytest.approx(row["objective"]), row
    assert (results["status"] == "PRUNED").any(), "with these seeds ASHA stops at least one trial"
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    assert len(epochs) == results["epochs_done"].sum()
    assert {"val_clean_acc", "val_pgd_acc", "val_robust_auc", "val_pgd_acc_eps0.02", "epoch_time_s", "node_id",
            "device"} <= set(epochs.columns)
    assert (epochs["train_time_s"] > 0).all() and (epochs["score_time_s"] > 0).all()
    assert (epochs["train_time_s"] + epochs["score_time_s"] <= epochs["epoch_time_s"] + 1e-6).all()
    timings = json.loads((study_dir / "timings.json").read_text())  # where the minutes went, phase by phase
    assert list(timings["phases_s"]) == ["preflight", "ray_start", "base", "trials", "collect", "test_eval", "audit"]
    assert timings["phases_s"]["trials"] >= epochs["train_time_s"].sum()  # one trial at a time
    assert sum(timings["phases_s"].values()) <= timings["total_s"] + 1e-6
    best = json.loads((study_dir / "best.json").read_text())
    entry = best["trials"][0]
    complete = results[results.status == "COMPLETE"].set_index("trial_id")
    assert complete.loc[entry["trial_id"], "objective"] == complete["objective"].max()  # ties: either is the best
    assert entry["test"]["n"] == 100 and set(entry["test"]["accuracy"]) == {"clean", "fgsm", "ifgsm", "pgd"}
    assert entry["test"]["attacks"]["pgd"]["eps"] == 0.3 and entry["test"]["attacks"]["pgd"]["alpha"] == 0.01
    acc = entry["test"]["accuracy"]
    assert all(0 <= v <= acc["clean"] for v in acc.values())
    # "better than the base?": paired on the same images, scored exactly as the trials and base.json were
    val = entry["vs_base"]["val"]
    base_val = json.loads((study_dir / "base.json").read_text())["val"]
    assert val["n"] == 80 and val["test"] == "paired t over samples"  # robust AUC: the fraction of the grid survived
    assert val["trial"] == pytest.approx(100 * complete.loc[entry["trial_id"], "objective"], abs=1e-9)
    assert val["base"] == pytest.approx(100 * base_val["objective"], abs=1e-9)
    assert val["lo"] <= val["diff"] <= val["hi"] and val["verdict"] in {"better", "not better", "worse"}
    [on_test] = entry["vs_base"]["test"]  # the audit's worst case at eps 0.3, against the base's on the same 16 images
    assert on_test["n"] == 16 and on_test["test"] == "McNemar exact" and "worst case at eps 0.3" in on_test["measure"]
    ckpt = load_checkpoint(study_dir / "best.pt", arch="cnn3", dataset="fmnist")
    assert ckpt.meta["trial_id"] == entry["trial_id"]
    assert list((study_dir.parent / "_bases").glob("fmnist-cnn3-*.pt")), "the pretrained base is cached for later studies"
    assert list(study_dir.glob("trial_*/events.out.tfevents.*")), "TensorBoard logs per trial"
    assert (study_dir / "spec.yaml").is_file()


def test_the_search_replays_asha_stops_the_trials_tune_stopped(tiny_study_dir: Path) -> None:
    """The search benchmark's ASHA (benchmarks/replay.py), fed this real study's epochs.parquet in the order Tune
    received the results (one trial at a time: Optuna's trial order), stops exactly the trials Tune's
    ASHAScheduler stopped, each at the epoch where Tune stopped it."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from benchmarks.replay import Asha
    from study.spec import load_spec

    spec = load_spec(str(tiny_study_dir / "spec.yaml"))
    assert spec.scheduler.type.value == "asha" and spec.max_concurrent == 1
    order = [t.user_attrs["ray_trial_id"] for t in sorted(optuna_states(tiny_study_dir, "e2e").values(),
                                                           key=lambda t: t.number)]
    epochs = pd.read_parquet(tiny_study_dir / "epochs.parquet")
    asha = Asha(spec.epochs, spec.scheduler.grace_period, spec.scheduler.reduction_factor)
    tunes = ASHAScheduler(metric="objective", mode="max", max_t=spec.epochs, grace_period=spec.scheduler.grace_period,
                          reduction_factor=spec.scheduler.reduction_factor)  # Tune's class, fed the same stream
    stopped_early = set()
    for trial_id in order:
        trial = Trial("finetune_trial", trial_id=trial_id, stub=True)
        tunes.on_trial_add(None, trial)
        rows = epochs[epochs["trial_id"] == trial_id].sort_values("training_iteration")
        for i, row in enumerate(rows.itertuples()):
            result = {"training_iteration": int(row.training_iteration), "objective": float(row.objective)}
            stop = asha.on_result(trial_id, result["training_iteration"], result["objective"])
            assert stop == (tunes.on_trial_result(None, trial, result) == TrialScheduler.STOP)
            last = i == len(rows) - 1
            assert stop == last, f"{trial_id} epoch {row.training_iteration}: ours {'stops' if stop else 'goes on'}"
            if stop:
                asha.on_complete(trial_id, result["training_iteration"], result["objective"])
                tunes.on_trial_complete(None, trial, result)
                if row.training_iteration < spec.epochs:
                    stopped_early.add(trial_id)
    results = pd.read_parquet(tiny_study_dir / "results.parquet").set_index("trial_id")
    assert stopped_early == set(results.index[results["status"] == "PRUNED"]) != set()


def test_reproduce_end_to_end_tiny(tiny_repro_dir: Path) -> None:
    out = tiny_repro_dir
    results = pd.read_parquet(out / "results.parquet")
    cells = [m for m in CELLS if not m.startswith("fgsm_rs") and m != "pgd_at_sgd"]  # the fixture's robust cells
    assert len(results) == 2 * len(cells) == 20 and set(results["cell"]) == set(cells)
    assert set(results["seed"]) == {0, 1}
    # Each row describes its cell as the grid declares it, so the analysis needs no cell names.
    for row in results.to_dict("records"):
        written = {k: None if pd.isna(row[k]) else row[k] for k in GRID[row["cell"]].columns()}  # parquet: NaN
        assert written == GRID[row["cell"]].columns()
    assert {"clean", "whitebox/pgd", "transfer/pgd", "ttt_eot/pgd", "strong/pgd"} <= set(results.columns)
    # PGD-20 x2 with alpha 2.5 eps / 20 is never much weaker than the paper's PGD-10 (per model, 10 images)
    assert (results["strong/pgd"] <= results["whitebox/pgd"] + 0.1).all()
    for key in [c for c in results.columns if "/" in c and not c.startswith("ttt")]:
        assert (results[key] <= results["clean"] + 1e-9).all(), key
    # per-image outcomes, in test-split order, for the findings' seeds x images comparisons
    for row in results.to_dict("records"):
        per_image = json.loads(row["per_image"])
        assert set(per_image) == {k for k in results.columns if "/" in k and not k.startswith("cost")} | {"clean"}
        for key, outcome in per_image.items():
            assert len(outcome) == 10 and outcome.count("1") / 10 == pytest.approx(row[key]), key
    text = (out / "tables.md").read_text()
    assert "53.72" in text and "RMSProp beats Adam under PGD-10 on F-MNIST" in text
    assert "Power: 2 seeds x 10 test images." in text
    findings = [line for line in text.splitlines() if line.startswith("- ")]
    assert all("(seeds x images, n=2 seeds x 10 images)" in f or ": undecided (" in f for f in findings
               if "beats" in f or "raises" in f or "overstates" in f), findings
    assert "strong PGD-20 x2 (ours only)" in text and "The paper's PGD-10 overstates the robustness of" in text
    assert "alpha = 2.5 eps / 20 steps, 2 random starts" in text
    # robust fine-tuning x optimizers, with its training compute: PGD-5 costs 6 passes per image, patch 2 images
    by = results.groupby("cell")
    assert (by["cost_fwd_passes"].first()["pgd_at_rmsprop"] == 100 * 1 * 6 and by["cost_fwd_passes"].first()["patch_adam"]
            == 100 * 1 * 2 * 1 and by["cost_fwd_passes"].first()["undefended"] == 0)
    assert (results.loc[results.cell != "undefended", "cost_device_s"] > 0).all()
    assert "## Robust fine-tuning: does the optimizer matter?" in text
    assert "RMSProp beats Adam under PGD-5-AT fine-tuning on F-MNIST at eps 0.3 (PGD-20 x2): " in text
    assert "SGD" not in text.split("## Robust fine-tuning")[1]  # --optimizers adam,rmsprop
    bases = sorted((out.parent / "_bases").glob("fmnist-cnn3-*.pt"))  # the study's base cache, one base per seed
    assert len(bases) == 2 and {load_checkpoint(b).meta["seed"] for b in bases} == {0, 1}
    meta = load_checkpoint(bases[0], arch="cnn3", dataset="fmnist").meta  # the images it was pretrained and scored on
    assert (meta["train_size"], meta["val_size"], meta["test_size"]) == (500, 100, 100)


# ----------------------------------------------------------------------------------------- notebooks, reports


def run_notebook(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment: that is how the notebooks are parameterized
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            images += "image/png" in data
            text.append(str(data.get("text/markdown", "")) + str(data.get("text/plain", "")) + str(out.get("text", "")))
    return "\n".join(text), images


def test_notebooks_are_paired_with_jupytext_scripts() -> None:
    import jupytext

    for name in ("optimizer_role", "adversarial_training"):
        paired = jupytext.read(NOTEBOOKS / f"{name}.py")
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert [c.source for c in paired.cells] == [c.source for c in notebook.cells], f"{name}: .py and .ipynb differ"


def test_optimizer_role_notebook(tiny_study_dir: Path, tiny_repro_dir: Path) -> None:
    nb = run_notebook("optimizer_role", {"PATCHTUNE_STUDY_DIR": str(tiny_study_dir), "PATCHTUNE_REPRO_DIR": str(tiny_repro_dir)})
    text, images = outputs(nb)
    assert "Table 1 (reproduction" in text and "adam (paper)" in text and "53.72" in text
    assert "Best study trial(s) on the test split" in text
    assert "RMSProp beats Adam under PGD-10" in text
    assert "RMSProp beats Adam under PGD-5-AT fine-tuning on F-MNIST at eps 0.3" in text and "PGD-5-AT + RMSProp" in text
    assert images >= 8


def test_adversarial_training_notebook(tiny_repro_dir: Path) -> None:
    nb = run_notebook("adversarial_training", {"PATCHTUNE_REPRO_DIR": str(tiny_repro_dir)})
    text, images = outputs(nb)
    assert "pgd_at (ours)" in text and "proposed (ours)" in text and "test-time transform + EOT" in text
    assert images >= 2


def test_report_writes_every_figure(api_run: dict[str, Any], tiny_study_dir: Path, tiny_repro_dir: Path) -> None:
    from analysis.report import write_reproduction_report

    report = api_run["report"].markdown  # the API example's `api.report`
    assert report == tiny_study_dir / "report" / "report.md"
    text = report.read_text()
    for name in ("robust_vs_lr", "robust_by_optimizer", "optimizer_patch_heatmap", "transform_effect",
                 "clean_vs_robust", "learning_curves", "accuracy_vs_eps"):
        assert (report.parent / f"{name}.png").stat().st_size > 5000 and (report.parent / f"{name}.svg").is_file()
        assert f"({name}.png)" in text
    assert "## Findings" in text and "| trial |" in text
    page = report.with_suffix(".html").read_text()  # the same report as one self-contained page
    images = re.findall(r'<img src="([^"]+)" alt="([^"]+)"', page)
    assert {alt for _, alt in images} >= {"robust_vs_lr", "learning_curves", "accuracy_vs_eps", "audit"}
    assert all(src.startswith("data:image/png;base64,") for src, _ in images), "figures embedded, nothing fetched"
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src, _ in images)
    assert "<table>" in page and "<th>trial</th>" in page and f"Study <code>{tiny_study_dir.name}</code>" in page
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "no NaN cell or interval in the report"
    # the study's `audit:` option audited the best trial: paper vs strong attacks side by side, with the checks
    audit = json.loads((tiny_study_dir / "audit.json").read_text())
    [trial] = audit["trials"]
    [rep] = trial["audits"]
    assert rep["n"] == 16 and rep["eps"] == 0.3 and {c["name"] for c in rep["checks"]} >= {"budget", "blackbox", "noise"}
    assert "## Robustness audit" in text and "PGD-10, alpha 0.01 (paper; cannot reach eps > 0.1)" in text and "Worst case" in text
    assert f"### Checks: trial {trial['trial_id']}, eps 0.3" in text and "(audit.png)" in text
    assert (report.parent / "audit.png").stat().st_size > 5000
    from study.runner import status_table

    status = status_table(tiny_study_dir).splitlines()
    header = next(i for i, line in enumerate(status) if line.split()[:1] == ["optuna_number"])
    column = status[header].split().index("param_patch_size")
    assert all(re.fullmatch(r"\d+|-", line.split()[column]) for line in status[header + 1:header + 5])  # not 8.0, NaN
    assert f"audit of {trial['trial_id']}: eps 0.3, 16 test images" in "\n".join(status)
    # the verdict leads the status (second line, after the study's name) and the report (after the title)
    headline = status[1]
    assert headline.startswith(("BETTER THAN THE BASE: ", "NO TRIAL IS BETTER THAN THE BASE: ")), headline
    assert text.splitlines()[2] == f"**{headline}**"
    assert len(audit["base_audits"]) == 1 and audit["base_audits"][0]["checks"] == []
    from analysis.load import base_eps_curve, load_study

    base = base_eps_curve(load_study(tiny_study_dir).base)
    assert list(base["eps"]) == [0.02, 0.05] and base["accuracy"].between(0, 1).all()
    repro = write_reproduction_report(tiny_repro_dir)
    assert (repro.parent / "method_bars.png").is_file() and "## Table 1 (fmnist)" in repro.read_text()
    assert '<img src="data:image/png;base64,' in repro.with_suffix(".html").read_text()
    for name in ("optimizer_bars", "robust_vs_cost"):
        assert (repro.parent / f"{name}.png").stat().st_size > 5000 and f"({name}.png)" in repro.read_text()


# ----------------------------------------------------------------------------------------- watching a study


def test_tensorboard_reads_each_trials_objective(tiny_study_dir: Path) -> None:
    """TensorBoard's own event reader finds every trial's `objective` scalar, one point per epoch reported,
    with the values of epochs.parquet: what `tensorboard --logdir <study dir>` plots."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = pd.read_parquet(tiny_study_dir / "epochs.parquet")
    for trial_id, rows in epochs.groupby("trial_id"):
        [events] = tiny_study_dir.glob(f"trial_{trial_id}/events.out.tfevents.*")
        reader = EventAccumulator(str(events))
        reader.Reload()
        points = reader.Scalars("ray/tune/objective")
        assert [p.step for p in points] == sorted(rows["epoch"])
        assert [p.value for p in points] == pytest.approx(list(rows.sort_values("epoch")["objective"]), abs=1e-6)


@pytest.fixture(scope="module")
def optuna_dashboard(tiny_study_dir: Path) -> Iterator[str]:
    """The real optuna-dashboard server on the study's storage, started as docs/guide/watching.md says (bound to 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(exe), f"sqlite:///{tiny_study_dir / 'optuna.db'}", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/studies", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.5)
        yield url
    finally:
        server.kill()
        server.wait(timeout=30)


def test_optuna_dashboard_serves_the_study(optuna_dashboard: str) -> None:
    """Its API lists the study and its trials with their named objective."""
    with urllib.request.urlopen(f"{optuna_dashboard}/api/studies", timeout=30) as r:
        [study] = json.loads(r.read())["study_summaries"]
    assert study["study_name"] == "e2e" and study["directions"] == ["maximize"]
    with urllib.request.urlopen(f"{optuna_dashboard}/api/studies/{study['study_id']}?after=0", timeout=30) as r:
        detail = json.loads(r.read())
    assert detail["name"] == "e2e" and len(detail["trials"]) == 4
    assert detail["objective_names"] == ["val_robust_auc"], "the value is named, not 'Objective 0'"


# ----------------------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium (`make test` installs it where apt-get runs as root), driven by Playwright."""
    exe = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if exe is None:
        pytest.skip("no Chromium on this machine (`make test` installs Debian's chromium where apt-get runs as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it comes with the dev extra)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A page at `url` (1280 px wide) and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.goto(url, wait_until="load")
    return page, errors


def test_report_page_in_a_real_browser(browser: Any, api_run: dict[str, Any], tiny_study_dir: Path) -> None:
    """report.html as a person sees it: the study's name and verdict, the best-trial table, every figure
    decoded (none broken), no console error. The screenshot stays in the study directory."""
    page, errors = open_page(browser, api_run["report"].html.as_uri())
    assert page.inner_text("h1") == f"Study {tiny_study_dir.name}"
    assert page.locator("p strong").first.inner_text() == api_run["study"].verdict
    best = page.locator("h2", has_text="Best trial(s) on the test split")
    assert best.count() == 1
    table = best.locator("xpath=following-sibling::table[1]")
    assert table.locator("th").all_inner_texts()[:3] == ["trial", "optimizer", "attack"]
    attacks = table.locator("td:nth-child(3)").all_inner_texts()
    assert attacks[:2] == ["clean", "FGSM, eps 0.3"], attacks
    assert "PGD-10, eps 0.3, alpha 0.01 (cannot reach eps: alpha x steps = 0.1)" in attacks
    sizes = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete ? i.naturalWidth : 0])")
    assert len(sizes) >= 8 and all(width > 100 for _, width in sizes), sizes
    shot = tiny_study_dir / "screenshots" / "report.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000 and errors == []


def test_optuna_dashboard_in_a_real_browser(browser: Any, optuna_dashboard: str, tiny_study_dir: Path) -> None:
    """optuna-dashboard's page for the study renders its history with the named objective and the best trial,
    with no console error."""
    page, errors = open_page(browser, f"{optuna_dashboard}/dashboard/")
    page.get_by_text("e2e").first.wait_for(timeout=30_000)  # the study list
    page.get_by_text("e2e").first.click()
    page.get_by_text("Best Trial").first.wait_for(timeout=30_000)
    page.get_by_text("val_robust_auc").first.wait_for(timeout=30_000)  # the objective's name, on the plots
    shot = tiny_study_dir / "screenshots" / "optuna-dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000 and errors == []
