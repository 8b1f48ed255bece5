"""A small real study and a tiny real reproduction on real Ray, each built once for this module, checked end
to end: their result files, both analysis notebooks executed headless (nbclient), and `patchtune report`."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import nbformat
import optuna
import pandas as pd
import pytest
from nbclient import NotebookClient
from repro_frame import GRID, METHODS

from conftest import ensure_local_ray
from trainables.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "analysis" / "notebooks"
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real study on real Ray, shared by the end-to-end study test, the notebooks and the report: a
    base pretrained first, TPE + ASHA over 4 trials of 2 epochs (one at a time, so ASHA's decisions do not
    depend on timing), the best trial on the test split, and the `audit:` option."""
    from study.runner import run_study
    from study.spec import parse_spec

    ensure_local_ray()
    storage = tmp_path_factory.mktemp("studies")
    spec = parse_spec({
        "name": "e2e", "dataset": "fmnist", "storage": str(storage),
        "base": {"pretrain": {"epochs": 1, "limit_train": 2000, "limit_eval": 300}},
        "data": {"limit_train": 400, "limit_test": 100},
        "search": {"lr": {"adam": [1e-4, 1e-2], "rmsprop": [1e-4, 1e-2]}, "batch_size": [64, 128], "patch_size": [4, 10]},
        "epochs": 2, "objective": {"metric": "robust_auc", "eps_grid": [0.02, 0.05], "steps": 5, "val_limit": 80},
        "num_samples": 4, "max_concurrent": 1,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "sampler": {"type": "tpe", "n_startup_trials": 2},
        "audit": {"enabled": True, "limit": 32, "strong_steps": 10, "strong_restarts": 2, "check_limit": 16,
                  "components": ["apgd-ce", "square"]},
    })
    return run_study(spec)


@pytest.fixture(scope="module")
def tiny_repro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real `patchtune reproduce fmnist` (2 seeds x the paper's grid and PGD-AT fine-tuning with Adam and
    RMSProp) on real Ray: bases pretrained on 500 images and scored on 100, 10 test images, a strong PGD-20 x2 instead of the
    default PGD-100 x5."""
    from study.reproduce import make_spec, reproduce

    ensure_local_ray()
    spec = make_spec("fmnist", seeds=2, limit_train=100, limit_test=10, limit_val=50, pretrain_epochs=1,
                     pretrain_limit_train=500, pretrain_limit_eval=100, epochs=1, eot_draws=2, long_epochs=2, at_from_scratch=True,
                     strong_steps=20, strong_restarts=2, robust_methods=("pgd_at",),
                     optimizers=("adam", "rmsprop"))
    return reproduce(spec, tmp_path_factory.mktemp("repro"), name="tiny")


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
    [on_test] = entry["vs_base"]["test"]  # the audit's worst case at eps 0.3, against the base's on the same 32 images
    assert on_test["n"] == 32 and on_test["test"] == "McNemar exact" and "worst case at eps 0.3" in on_test["measure"]
    ckpt = load_checkpoint(study_dir / "best.pt", arch="cnn3", dataset="fmnist")
    assert ckpt.meta["trial_id"] == entry["trial_id"]
    assert list((study_dir.parent / "_bases").glob("fmnist-cnn3-*.pt")), "the pretrained base is cached for later studies"
    assert list(study_dir.glob("trial_*/events.out.tfevents.*")), "TensorBoard logs per trial"
    assert (study_dir / "spec.yaml").is_file()


def test_reproduce_end_to_end_tiny(tiny_repro_dir: Path) -> None:
    out = tiny_repro_dir
    results = pd.read_parquet(out / "results.parquet")
    methods = [m for m in METHODS if not m.startswith("fgsm_rs") and m != "pgd_at_sgd"]  # the fixture's robust cells
    assert len(results) == 2 * len(methods) == 20 and set(results["method"]) == set(methods)
    assert set(results["seed"]) == {0, 1}
    # Each row describes its cell as the grid declares it, so the analysis needs no method names.
    for row in results.to_dict("records"):
        written = {k: None if pd.isna(row[k]) else row[k] for k in GRID[row["method"]].columns()}  # parquet: NaN
        assert written == GRID[row["method"]].columns()
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
    by = results.groupby("method")
    assert (by["cost_fwd_passes"].first()["pgd_at_rmsprop"] == 100 * 1 * 6 and by["cost_fwd_passes"].first()["patch_adam"]
            == 100 * 1 * 2 * 1 and by["cost_fwd_passes"].first()["undefended"] == 0)
    assert (results.loc[results.method != "undefended", "cost_device_s"] > 0).all()
    assert "## Robust fine-tuning: does the optimizer matter?" in text
    assert "RMSProp beats Adam under PGD-5-AT fine-tuning on F-MNIST at eps 0.3 (PGD-20 x2): " in text
    assert "SGD" not in text.split("## Robust fine-tuning")[1]  # --optimizers adam,rmsprop
    bases = sorted((out.parent / "_bases").glob("repro-fmnist-cnn3-s*.pt"))
    assert len(bases) == 2
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


def test_report_writes_every_figure(tiny_study_dir: Path, tiny_repro_dir: Path) -> None:
    from analysis.report import write_reproduction_report, write_study_report

    report = write_study_report(tiny_study_dir)
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
    assert rep["n"] == 32 and rep["eps"] == 0.3 and {c["name"] for c in rep["checks"]} >= {"budget", "blackbox", "noise"}
    assert "## Robustness audit" in text and "PGD-10, alpha 0.01 (paper)" in text and "Worst case" in text
    assert f"### Checks: trial {trial['trial_id']}, eps 0.3" in text and "(audit.png)" in text
    assert (report.parent / "audit.png").stat().st_size > 5000
    from study.runner import status_table

    status = status_table(tiny_study_dir).splitlines()
    header = next(i for i, line in enumerate(status) if line.split()[:1] == ["optuna_number"])
    column = status[header].split().index("param_patch_size")
    assert all(re.fullmatch(r"\d+|-", line.split()[column]) for line in status[header + 1:header + 5])  # not 8.0, NaN
    assert f"audit of {trial['trial_id']}: eps 0.3, 32 test images" in "\n".join(status)
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


def test_optuna_dashboard_serves_the_study(tiny_study_dir: Path) -> None:
    """The real optuna-dashboard server, started as the README says (bound to 127.0.0.1), lists the study and
    its trials with their named objective."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(exe), f"sqlite:///{tiny_study_dir / 'optuna.db'}", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.5)
        [study] = studies
        assert study["study_name"] == "e2e" and study["directions"] == ["maximize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0", timeout=30) as r:
            detail = json.loads(r.read())
        assert detail["name"] == "e2e" and len(detail["trials"]) == 4
        assert detail["objective_names"] == ["val_robust_auc"], "the value is named, not 'Objective 0'"
    finally:
        server.kill()
        server.wait(timeout=30)
