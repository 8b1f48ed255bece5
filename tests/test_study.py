"""Real studies on real local Ray on tiny F-MNIST: a driver killed and a Ctrl-C, then resumed; a multi-objective
study with diverging trials. (A study end to end: test_end_to_end.py; multi-node with a node lost:
test_reliability.py.)"""

from __future__ import annotations

import json
import os
import re
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

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
WORKER_LINE = re.compile(r"(\x1b\[\d+m)?\(\w+ pid=\d+(, ip=[\d.]+)?\)")  # a line Ray forwards from a worker


def tiny(storage: Path, name: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name, "storage": str(storage),
        "data": {"dataset": "fmnist", "limit_train": 200, "limit_val": 80, "limit_test": 100},
        "search": {"lr": {"adam": [1e-4, 1e-2], "rmsprop": [1e-4, 1e-2]}, "batch_size": [64, 128], "patch_size": [4, 10]},
        "epochs": 2,
        # PGD-5 on 80 images: scoring, not training, is most of a tiny trial's time
        "objective": {"metric": "robust_auc", "eps_grid": [0.02, 0.05], "steps": 5},
        "num_samples": 4, "max_concurrent": 2,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "sampler": {"type": "tpe", "n_startup_trials": 2},
    }
    spec.update(over)
    return spec


def optuna_states(study_dir: Path, name: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    return {t.user_attrs.get("ray_trial_id", f"#{t.number}"): t for t in study.get_trials()}


def _count(db: Path, state: str) -> int:
    try:
        with sqlite3.connect(db) as con:
            return int(con.execute("select count(*) from trials where state = ?", (state,)).fetchone()[0])
    except sqlite3.Error:
        return 0


def _snapshotted_terminated(study_dir: Path) -> set[str]:
    """Ids of the trials Tune's experiment snapshot holds as TERMINATED."""
    done: set[str] = set()
    for state in study_dir.glob("experiment_state-*.json"):
        try:
            trials = [json.loads(t) for t, _ in json.loads(state.read_text())["trial_data"]]
        except (ValueError, KeyError, OSError):
            continue
        done |= {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}
    return done


def _launch(args: list[str], cwd: Path, log: Path, **env_over: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env_over}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(proc: subprocess.Popen[bytes], log: Path, condition: Any, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"exited before {what}:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}:\n" + log.read_text()[-3000:]
        time.sleep(0.2)


def test_driver_killed_then_ctrl_c_then_resumed(tmp_path: Path, base_ckpt: Path, local_ray: None) -> None:
    """`patchtune run` loses its driver (SIGKILL to the process group, Ray included) after one trial; `patchtune
    resume --address` on a running cluster (the suite's Ray) is stopped with Ctrl-C after another; a last resume
    finishes the study. No trial is lost or counted twice, in Tune or in Optuna, no epoch is repeated, and no
    trial in Tune's last snapshot as finished is rerun. (One that finished between that snapshot and the kill
    replays its reports: the next test times the kill into that window.)"""
    import ray
    import yaml

    from study.runner import resume_study

    spec_file = tmp_path / "spec.yaml"
    # 400 images: a trial long enough that the kill (which waits for Tune's snapshot) seldom comes after a second
    # trial finished; 4 trials, so that even then the resume has two to run and the Ctrl-C comes before the last
    spec_file.write_text(yaml.safe_dump(tiny(tmp_path / "studies", "res", base={"checkpoint": str(base_ckpt)},
                                             data={"dataset": "fmnist", "limit_train": 400, "limit_val": 60,
                                                   "limit_test": 100},
                                             num_samples=4, max_concurrent=1, epochs=2, scheduler={"type": "fifo"},
                                             sampler={"type": "random"},
                                             objective={"metric": "pgd_acc", "eps_grid": [0.05], "steps": 5})))
    study_dir = tmp_path / "studies" / "res"
    db = study_dir / "optuna.db"

    def complete() -> set[str]:
        return {k for k, t in optuna_states(study_dir, "res").items() if t.state.name == "COMPLETE"}

    # 1. Kill the driver once a finished trial is in Tune's experiment snapshot and the next one is running.
    log = tmp_path / "run.log"
    proc = _launch(["run", str(spec_file)], tmp_path, log)
    _wait_for(proc, log, lambda: _snapshotted_terminated(study_dir) and _count(db, "RUNNING") >= 1,
              "a finished trial and a running one")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started die together
    killed_at = time.time()
    proc.wait()
    finished_before, snapshotted = complete(), _snapshotted_terminated(study_dir)
    assert snapshotted and snapshotted <= finished_before, (snapshotted, finished_before)
    values_before = {k: t.values for k, t in optuna_states(study_dir, "res").items() if k in finished_before}

    # 2. Resume on a running cluster, and press Ctrl-C (SIGINT to the driver's group) once one more trial has finished.
    log = tmp_path / "resume.log"
    proc = _launch(["resume", str(study_dir), "--address", ray.get_runtime_context().gcs_address], tmp_path, log)
    # SIGINT as soon as the next trial starts: its whole run is the margin before the study could end on its own
    _wait_for(proc, log, lambda: _count(db, "COMPLETE") > len(finished_before) and _count(db, "RUNNING") >= 1,
              "one more finished trial and the next one started")
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    output = log.read_text()
    # The driver (patchtune) prints no traceback. A trial actor terminated mid-step may: Ray's SIGTERM handler
    # raises SystemExit inside a weakref callback, printed as "Exception ignored", prefixed "(finetune_trial pid=N)".
    driver = [line for line in output.split("Trial status")[-1].splitlines() if not WORKER_LINE.match(line)]
    assert not any("Traceback" in line for line in driver), output[-3000:]
    assert f"patchtune resume {study_dir}" in output, output[-3000:]
    assert f"{study_dir}/best.json" not in output, "an incomplete study names no best.json among its results"
    assert len(complete()) < 4, "the Ctrl-C came before the study ended"

    # 3. Resume to the end (in this process, on the suite's Ray).
    resume_study(study_dir)
    results = pd.read_parquet(study_dir / "results.parquet")
    states = optuna_states(study_dir, "res")
    assert len(results) == 4 and len(states) == 4, "exactly num_samples trials in Tune and in Optuna"
    assert {t.state.name for t in states.values()} == {"COMPLETE"}
    assert {k: states[k].values for k in finished_before} == values_before, "a finished trial's values changed"
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    for trial_id, rows in epochs.groupby("trial_id"):
        assert sorted(rows["training_iteration"]) == [1, 2], f"{trial_id} lost or repeated an epoch"
        if trial_id in snapshotted:  # finished trials are not rerun
            assert (rows["timestamp"] < killed_at).all(), f"{trial_id} was rerun after the resume"
    assert (study_dir / "best.json").is_file()


def test_a_trial_that_finished_after_tunes_last_snapshot_is_not_run_again(tmp_path: Path, base_ckpt: Path,
                                                                          local_ray: None) -> None:
    """The window: Optuna holds a trial COMPLETE while Tune's last experiment snapshot holds it unfinished. The
    driver is killed right after Optuna's first tell (PATCHTUNE_TEST_KILL_AFTER_TELLS=1), with Tune's periodic
    snapshots held off (TUNE_GLOBAL_CHECKPOINT_S). Tune still snapshots after every second trial checkpoint (it
    keeps 2), so with 3 epochs its last snapshot holds the trial unfinished at epoch 2's checkpoint, and a resume
    would train epoch 3 again. Instead the trial replays its report of epoch 3; Optuna, results.parquet and
    epochs.parquet agree."""
    import yaml

    from study.runner import resume_study

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny(tmp_path / "studies", "window", base={"checkpoint": str(base_ckpt)},
                                             num_samples=2, max_concurrent=1, epochs=3, scheduler={"type": "fifo"},
                                             sampler={"type": "random"},
                                             objective={"metric": "pgd_acc", "eps_grid": [0.05], "steps": 5})))
    study_dir = tmp_path / "studies" / "window"
    log = tmp_path / "run.log"
    proc = _launch(["run", str(spec_file)], tmp_path, log, PATCHTUNE_TEST_KILL_AFTER_TELLS="1",
                   TUNE_GLOBAL_CHECKPOINT_S="3600")
    assert proc.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    [first] = [k for k, t in optuna_states(study_dir, "window").items() if t.state.name == "COMPLETE"]
    assert first not in _snapshotted_terminated(study_dir), "the kill came after Tune's snapshot of the finished trial"
    [trial_dir] = study_dir.glob("trial_*")
    def checkpoints() -> dict[str, int]:  # a rerun epoch writes its checkpoint again
        return {p.parent.name: p.stat().st_mtime_ns for p in trial_dir.glob("checkpoint_*/state.pt")}

    before = checkpoints()

    resume_study(study_dir)
    states = optuna_states(study_dir, "window")
    assert len(states) == 2 and {t.state.name for t in states.values()} == {"COMPLETE"}
    epochs = pd.read_parquet(study_dir / "epochs.parquet").set_index(["trial_id", "training_iteration"])
    again = epochs.loc[first]
    assert list(again.index) == [1, 2, 3]
    assert checkpoints() == before, "the finished trial was run again"
    results = pd.read_parquet(study_dir / "results.parquet").set_index("trial_id")
    for trial_id, t in states.items():  # Optuna's value and every epoch's, as Tune's tables have them
        assert t.values[0] == results.loc[trial_id, "objective"] == epochs.loc[(trial_id, 3), "objective"], trial_id
        assert t.intermediate_values == epochs.loc[trial_id, "objective"].to_dict(), trial_id


def test_multi_objective_study_with_diverging_trials(tmp_path: Path, base_ckpt: Path, local_ray: None) -> None:
    """NSGA-II over robust accuracy, clean accuracy and training compute: finished trials carry the three values
    and a Pareto front exists; diverging trials (sgd at lr 5-10) end FAIL with their reason, and the study goes on."""
    spec = parse_spec(tiny(tmp_path, "pareto", base={"checkpoint": str(base_ckpt)}, num_samples=3, epochs=1,
                           max_concurrent=1,
                           search={"lr": {"adam": [1e-3, 1e-3], "sgd": [5.0, 10.0]}, "batch_size": [64],
                                   "patch_size": [4, 8]},
                           objective={"metric": "pgd_acc", "eps": 0.05, "alpha": 0.025, "steps": 5,
                                      "multi_objective": ["clean", "cost"]},
                           scheduler={"type": "fifo"}, sampler={"type": "nsga2", "seed": 3}))
    study_dir = run_study(spec)
    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_pgd_acc", "val_clean_acc", "cost_fwd_passes"]  # what optuna-dashboard shows
    results = pd.read_parquet(study_dir / "results.parquet")
    assert len(results) == 3 and set(results["optimizer"]) == {"adam", "sgd"}
    states = optuna_states(study_dir, "pareto")
    for row in results.to_dict("records"):
        t = states[row["trial_id"]]
        if row["optimizer"] == "sgd":
            assert row["status"] == "FAILED" and "loss became" in row["error"]
            assert t.state.name == "FAIL" and "loss became" in t.user_attrs["error"]
        else:
            assert row["status"] == "COMPLETE" and t.state.name == "COMPLETE" and row["error"] == ""
            assert t.values == pytest.approx([row["val_pgd_acc"], row["val_clean_acc"], row["cost_fwd_passes"]])
            assert row["cost_fwd_passes"] > 0
    assert study.best_trials, "a Pareto front exists"
    assert (study_dir / "best.json").is_file()
