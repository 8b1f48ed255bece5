"""Real studies on real local Ray on tiny F-MNIST (multi-node, with a node lost: test_reliability.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from study.runner import run_study
from study.spec import parse_spec
from trainables.checkpoint import load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def tiny(storage: Path, name: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name, "dataset": "fmnist", "storage": str(storage),
        "data": {"limit_train": 800, "limit_test": 200},
        "search": {"lr": {"adam": [1e-4, 1e-2], "rmsprop": [1e-4, 1e-2]}, "batch_size": [64, 128], "patch_size": [4, 10]},
        "epochs": 2,
        "objective": {"metric": "robust_auc", "eps_grid": [0.02, 0.05], "val_limit": 150},
        "num_samples": 4, "max_concurrent": 2,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "sampler": {"type": "tpe", "n_startup_trials": 2},
    }
    spec.update(over)
    return spec


def optuna_states(study_dir: Path, name: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    return {t.user_attrs.get("ray_trial_id", f"#{t.number}"): t for t in study.get_trials()}


def test_study_end_to_end_with_pretrained_base_asha_and_best_on_test(tmp_path: Path) -> None:
    spec = parse_spec(tiny(tmp_path, "e2e", num_samples=6, max_concurrent=1,
                           base={"pretrain": {"epochs": 1, "limit_train": 2000}}))
    study_dir = run_study(spec)
    assert study_dir == tmp_path / "e2e"
    results = pd.read_parquet(study_dir / "results.parquet")
    assert len(results) == 6 and results["trial_id"].is_unique
    states = optuna_states(study_dir, "e2e")
    assert len(states) == 6 and set(states) == set(results["trial_id"])
    assert not [t for t in states.values() if t.state.name == "RUNNING"]
    for row in results.to_dict("records"):
        t = states[row["trial_id"]]
        # ASHA-stopped trials are PRUNED in Optuna, never COMPLETE with a truncated score
        expected = "PRUNED" if row["epochs_done"] < 2 else "COMPLETE"
        assert t.state.name == expected == row["status"] == row["optuna_state"]
        assert t.params["optimizer"] == row["optimizer"] and 1e-4 <= row["lr"] <= 1e-2
        assert 0.0 <= row["objective"] <= row["val_clean_acc"] <= 1.0
    assert (results["status"] == "PRUNED").any(), "with these seeds ASHA stops at least one trial"
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    assert len(epochs) == results["epochs_done"].sum()
    assert {"val_clean_acc", "val_pgd_acc", "val_robust_auc", "val_pgd_acc_eps0.02", "epoch_time_s", "node_id",
            "device"} <= set(epochs.columns)
    best = json.loads((study_dir / "best.json").read_text())
    entry = best["trials"][0]
    assert entry["trial_id"] == results[results.status == "COMPLETE"].sort_values("objective").iloc[-1]["trial_id"]
    assert entry["test"]["n"] == 200 and set(entry["test"]["accuracy"]) == {"clean", "fgsm", "ifgsm", "pgd"}
    assert entry["test"]["attacks"]["pgd"]["eps"] == 0.3 and entry["test"]["attacks"]["pgd"]["alpha"] == 0.01
    acc = entry["test"]["accuracy"]
    assert all(0 <= v <= acc["clean"] for v in acc.values())
    ckpt = load_checkpoint(study_dir / "best.pt", arch="cnn3", dataset="fmnist")
    assert ckpt.meta["trial_id"] == entry["trial_id"]
    assert list((tmp_path / "_bases").glob("fmnist-cnn3-*.pt")), "the pretrained base is cached for later studies"
    assert list(study_dir.glob("trial_*/events.out.tfevents.*")), "TensorBoard logs per trial"
    assert (study_dir / "spec.yaml").is_file()


def _count(db: Path, state: str) -> int:
    try:
        with sqlite3.connect(db) as con:
            return int(con.execute("select count(*) from trials where state = ?", (state,)).fetchone()[0])
    except sqlite3.Error:
        return 0


def _snapshotted_terminated(study_dir: Path) -> bool:
    for state in study_dir.glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (ValueError, KeyError, OSError):
            continue
        if any(json.loads(t)["status"] == "TERMINATED" for t, _ in trials):
            return True
    return False


def test_resume_after_the_driver_is_killed(tmp_path: Path, base_ckpt: Path) -> None:
    import yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny(tmp_path / "studies", "res", base={"checkpoint": str(base_ckpt)},
                                             num_samples=4, max_concurrent=1, epochs=3, scheduler={"type": "fifo"},
                                             sampler={"type": "random"})))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "study.cli"]
    with (tmp_path / "run.log").open("w") as log:
        proc = subprocess.Popen([*cmd, "run", str(spec_file)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    db = tmp_path / "studies" / "res" / "optuna.db"
    deadline = time.time() + 240
    # Kill once a finished trial is in Tune's experiment snapshot and the next one is running.
    while time.time() < deadline and not (_snapshotted_terminated(db.parent) and _count(db, "RUNNING") >= 1):
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.25)
    finished_before = {t.user_attrs["ray_trial_id"] for t in optuna_states(tmp_path / "studies" / "res", "res").values()
                       if t.state.name == "COMPLETE"}
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started die together
    killed_at = time.time()
    proc.wait()
    assert finished_before, "at least one trial had finished before the kill"

    out = subprocess.run([*cmd, "resume", str(tmp_path / "studies" / "res")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = tmp_path / "studies" / "res"
    results = pd.read_parquet(study_dir / "results.parquet")
    states = optuna_states(study_dir, "res")
    assert len(results) == 4 and len(states) == 4, "exactly num_samples trials in Tune and in Optuna"
    assert {t.state.name for t in states.values()} == {"COMPLETE"}
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    for trial_id, rows in epochs.groupby("trial_id"):
        assert sorted(rows["training_iteration"]) == [1, 2, 3], f"{trial_id} lost or repeated an epoch"
        if trial_id in finished_before:  # finished trials are not rerun
            assert (rows["timestamp"] < killed_at).all(), f"{trial_id} was rerun after the resume"
    assert (study_dir / "best.json").is_file()


def test_multi_objective_study_with_diverging_trials(tmp_path: Path, base_ckpt: Path) -> None:
    """NSGA-II over (robust, clean) accuracy: finished trials carry both values and a Pareto front exists;
    diverging trials (sgd at lr 5-10) end FAIL with their reason, and the study goes on."""
    spec = parse_spec(tiny(tmp_path, "pareto", base={"checkpoint": str(base_ckpt)}, num_samples=5, epochs=1,
                           search={"lr": {"adam": [1e-3, 1e-3], "sgd": [5.0, 10.0]}, "batch_size": [64],
                                   "patch_size": [4, 8]},
                           objective={"metric": "pgd_acc", "eps": 0.05, "alpha": 0.0125, "val_limit": 150,
                                      "multi_objective": True},
                           scheduler={"type": "fifo"}, sampler={"type": "nsga2", "seed": 3}))
    study_dir = run_study(spec)
    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    results = pd.read_parquet(study_dir / "results.parquet")
    assert len(results) == 5 and set(results["optimizer"]) == {"adam", "sgd"}
    states = optuna_states(study_dir, "pareto")
    for row in results.to_dict("records"):
        t = states[row["trial_id"]]
        if row["optimizer"] == "sgd":
            assert row["status"] == "FAILED" and "loss became" in row["error"]
            assert t.state.name == "FAIL" and "loss became" in t.user_attrs["error"]
        else:
            assert row["status"] == "COMPLETE" and t.state.name == "COMPLETE" and row["error"] == ""
            assert len(t.values) == 2 and t.values == pytest.approx([row["val_pgd_acc"], row["val_clean_acc"]])
    assert study.best_trials, "a Pareto front exists"
    assert (study_dir / "best.json").is_file()
