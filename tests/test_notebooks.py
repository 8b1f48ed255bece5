"""Both analysis notebooks execute headless (nbclient) against a real study and a real reproduction, and
`patchtune report` writes every figure for both kinds of directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "analysis" / "notebooks"
pytestmark = [pytest.mark.ray, pytest.mark.slow]


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
    assert images >= 6


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
    # the study's `audit:` option audited the best trial: paper vs strong attacks side by side, with the checks
    audit = json.loads((tiny_study_dir / "audit.json").read_text())
    [trial] = audit["trials"]
    [rep] = trial["audits"]
    assert rep["n"] == 48 and rep["eps"] == 0.3 and {c["name"] for c in rep["checks"]} >= {"budget", "blackbox", "noise"}
    assert "## Robustness audit" in text and "PGD-10, alpha 0.01 (paper)" in text and "Worst case" in text
    assert f"### Checks: trial {trial['trial_id']}, eps 0.3" in text and "(audit.png)" in text
    assert (report.parent / "audit.png").stat().st_size > 5000
    from study.runner import status_table

    assert f"audit of {trial['trial_id']}: eps 0.3, 48 test images" in status_table(tiny_study_dir)
    from analysis.load import base_eps_curve, load_study

    base = base_eps_curve(load_study(tiny_study_dir).base)
    assert list(base["eps"]) == [0.02, 0.05] and base["accuracy"].between(0, 1).all()
    repro = write_reproduction_report(tiny_repro_dir)
    assert (repro.parent / "method_bars.png").is_file() and "## Table 1 (fmnist)" in repro.read_text()
