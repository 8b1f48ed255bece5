"""Every benchmark command run as a user runs it, at tiny sizes, so that none of them rots unnoticed (`make bench` once
crashed at its cost row after a refactor, and nothing ran it). Speed targets are not checked here: the benchmarks
measure them (benchmarks/README.md). The search benchmark's commands: tests/test_replay.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "benchmarks" / "README.md"
pytestmark = pytest.mark.slow


def bench(module: str, *args: str | Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def rows_of(stdout: str) -> list[list[str]]:
    """The published table's rows (benchmark, ours, peer, ratio, ratio is, target, met)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark |")]


def test_bench_core_runs_every_row_and_every_gpu_section_at_tiny_sizes(base_ckpt: Path) -> None:
    """Every row of `make bench` that needs no Ray, and the GPU sections' code on the CPU (packing needs a card)."""
    before = README.stat().st_mtime_ns
    proc = bench("bench_core", "--base", base_ckpt, "--limit-train", "300", "--n", "60", "--train-n", "128",
                 "--repeats", "1", "--curve-n", "40", "--no-tune", "--no-before-after", "--no-record",
                 "--gpu-rows-on-cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(proc.stdout)
    names = " / ".join(r[0] for r in rows)
    for row in ("PGD-10 eval, undefended", "PGD-10 eval, patch-fine-tuned", "patch augmentation, F-MNIST",
                "patch augmentation, CIFAR-size", "fine-tune epoch (clean + patch-modified", "trial scoring",
                "vs the card's limit", "CUDA graphs", "VGG-16 PGD-10", "switches on vs off", "torch.compile"):
        assert row in names, row
    failed = [r for r in rows if "failed:" in r[3]]  # a GPU section that raises is recorded as a row: not here
    assert not failed, failed
    assert all(r[3].startswith("**") and r[3].endswith("x**") or "x** (" in r[3] for r in rows), rows
    assert README.stat().st_mtime_ns == before  # --no-record


@pytest.mark.ray
def test_bench_tune_times_a_tiny_study_against_the_bare_loop(base_ckpt: Path) -> None:
    proc = bench("bench_tune", "--trials", "2", "--concurrency", "2", "--limit-train", "150", "--limit-val", "40",
                 "--epochs", "1", "--base", base_ckpt, "--no-record")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(proc.stdout)
    assert len(rows) == 3, rows
    assert rows[0][0] == "Tune overhead: 2 trials (1 epochs, 150 images, 40 val images scored), concurrency 2"
    assert rows[1][0].startswith("Tune overhead, where it goes") and rows[2][0].startswith("Tune overhead extrapolated")


@pytest.mark.ray
def test_bench_study_times_a_study_phase_by_phase(base_ckpt: Path, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "base": {"checkpoint": str(base_ckpt)},
        "data": {"dataset": "fmnist", "limit_train": 150, "limit_val": 40, "limit_test": 50},
        "search": {"lr": {"adam": [1e-4, 1e-2]}, "batch_size": [64], "patch_size": [4, 10]},
        "epochs": 1, "objective": {"metric": "robust_auc", "eps_grid": [0.02, 0.05], "steps": 5},
        "num_samples": 2, "max_concurrent": 2, "scheduler": {"type": "fifo"}, "sampler": {"type": "random"},
    }))
    proc = bench("bench_study", "--spec", spec, "--no-record")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(proc.stdout)
    assert len(rows) == 2 and "wall time by phase (2 trial-epochs)" in rows[0][0] and "trial phase" in rows[1][0]
    assert "trials" in rows[0][1] and "ray_start" in rows[0][1]


def test_bench_before_after_runs_both_versions_of_a_trial(base_ckpt: Path) -> None:
    from benchmarks.bench_before_after import BEFORE, available

    if not available(BEFORE):
        pytest.skip(f"commit {BEFORE} is not in this clone (shallow)")
    proc = bench("bench_before_after", "--configs", "1", "--limit-train", "100", "--limit-val", "30", "--epochs", "1",
                 "--base", base_ckpt, "--no-record")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(proc.stdout)
    assert len(rows) == 2 and BEFORE in rows[0][2] and "today" in rows[0][1]


def test_the_gpu_script_runs_its_stages_and_refuses_bad_settings(tmp_path: Path, base_ckpt: Path) -> None:
    script = ROOT / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    for bad, named in (({"STAGES": "tests bogus"}, "unknown stage 'bogus'"),
                       ({"GPU_SECTIONS": "graphs,nope"}, "unknown section 'nope'"),
                       ({"AUDIT_LIMIT": "5x"}, "AUDIT_LIMIT must be a positive integer, got '5x'")):
        proc = subprocess.run(["bash", str(script)], cwd=ROOT, env={**env, **bad}, capture_output=True, text=True)
        assert proc.returncode == 2 and named in proc.stderr, (bad, proc.stderr)
        assert not (tmp_path / "out").exists()  # refused before anything ran
    # the bench stage as the script calls bench_core (on this CPU: the GPU sections' code at tiny sizes)
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600, env={
        **env, "STAGES": "bench", "BENCH_BASE": str(base_ckpt), "GPU_SECTIONS": "compile",
        "BENCH_ARGS": "--gpu-rows-on-cpu --limit-train 600 --repeats 1"})
    log = (tmp_path / "out" / "log.txt").read_text()
    assert proc.returncode == 0 and "bench exit 0 " in log, log
    assert "ROW | cnn3 fine-tuning, torch.compile mode=default" in log
    assert "| benchmark | ours | peer |" in (tmp_path / "out" / "bench.txt").read_text()


@pytest.mark.parametrize(("module", "args", "named"), [
    ("bench_core", ["--repeats", "0"], "--repeats must be positive, got 0"),
    ("bench_core", ["--base", "/nonexistent.pt"], "--base '/nonexistent.pt': no such file"),
    ("bench_tune", ["--trials", "0"], "--trials must be at least 1, got 0"),
    ("bench_study", ["--spec", "no-such-preset"], "--spec 'no-such-preset'"),
    ("bench_before_after", ["--configs", "9"], "--configs must be between 1 and 4, got 9"),
    ("search_table", ["--noise", "100"], "--noise must be between 0 and --configs (96), got 100"),
])
def test_a_bad_argument_gets_one_line_and_exit_2(module: str, args: list[str], named: str) -> None:
    proc = bench(module, *args, timeout=120)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
