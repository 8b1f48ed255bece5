"""The `patchtune` command end to end: in subprocesses, as a user runs it, and, for the many refusals, the same
`main` in this process (a subprocess per case would spend most of its time importing torch)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from study.cli import main

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def patchtune(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**ENV, "PYTHONPATH": str(Path(__file__).parents[1])})


def patchtune_here(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`patchtune ARGS` through the command's own `main`, in this process, in `cwd`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's refusals exit
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture
def ray_must_not_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if a command gets as far as connecting to Ray."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started before the bad input was refused")

    for module in ("study.runner", "study.reproduce"):
        monkeypatch.setattr(f"{module}.ray_session", refuse)
    yield


@pytest.fixture
def tiny_base(base_ckpt: Path) -> Path:
    """The session's base checkpoint (conftest.base_ckpt, made by `patchtune pretrain` in a real process)."""
    return base_ckpt


BAD = [
    (["pretrain", "--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["pretrain", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["pretrain", "--epochs", "two"], "--epochs: must be an integer, got 'two'"),
    (["pretrain", "--lr", "-1e-3"], "--lr: must be > 0, got -0.001"),
    (["pretrain", "--lr", "nan"], "--lr: must be finite, got nan"),
    (["pretrain", "--val-fraction", "0.95"], "--val-fraction: must be <= 0.9, got 0.95"),
    (["pretrain", "--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    (["pretrain", "--data-root", "/does/not/exist"], "--data-root '/does/not/exist' is not a directory"),
    (["pretrain", "--out", "/dev/null/y.pt"], "/dev/null is not a directory"),
    (["finetune", "--base", "missing.pt"], "checkpoint not found: missing.pt"),
    (["finetune"], "the following arguments are required: --base"),
    (["finetune", "--base", "x.pt", "--method", "madry"], "invalid choice: 'madry'"),
    (["finetune", "--base", "x.pt", "--method", "trades", "--beta", "0"], "--beta: must be > 0, got 0.0"),
    (["finetune", "--base", "x.pt", "--method", "pgd_at", "--at-steps", "0"], "--at-steps: must be >= 1, got 0"),
    (["finetune", "--base", "x.pt", "--method", "pgd_at", "--train-eps", "1.5"], "--train-eps: must be <= 1, got 1.5"),
    (["finetune", "--base", "x.pt", "--method", "pgd_at", "--train-eps", "0"], "--train-eps: must be > 0, got 0.0"),
    (["finetune", "--base", "x.pt", "--method", "pgd_at", "--eps-warmup", "1"], "--eps-warmup: must be < 1, got 1.0"),
    (["finetune", "--base", "x.pt", "--method", "fgsm_rs", "--at-steps", "3"],
     "at_steps is not a parameter of method fgsm_rs (it takes train_eps, eps_warmup); got at_steps 3"),
    (["finetune", "--base", "x.pt", "--method", "paper_pgd_at", "--eps-warmup", "0.3"],
     "eps_warmup is not a parameter of method paper_pgd_at (it takes train_eps, at_steps, at_alpha)"),
    (["eval", "missing.pt"], "checkpoint not found: missing.pt"),
    (["eval", "x.pt", "--eps", "0"], "--eps: must be > 0, got 0.0"),
    (["eval", "x.pt", "--eps", "1.5"], "--eps: must be <= 1, got 1.5"),
    (["eval", "x.pt", "--steps", "0"], "--steps: must be >= 1, got 0"),
    (["eval", "x.pt", "--attacks", "pgd,cw"], "unknown attack 'cw'"),
    (["eval", "x.pt", "--attacks", ""], "got an empty attack"),
    (["audit", "missing.pt"], "checkpoint not found: missing.pt"),
    (["audit", "x.pt", "--eps", "0.3", "2"], "--eps: must be <= 1, got 2.0"),
    (["audit", "x.pt", "--components", "apgd-ce,cw"], "unknown component 'cw'"),
    (["audit", "x.pt", "--strong-restarts", "0"], "--strong-restarts: must be >= 1, got 0"),
    (["show-augment", "--pool", ""], "got an empty pool"),
    (["show-augment", "--pool", "rotate,blur"], "unknown pool 'blur'"),
    (["show-augment", "--patch-size", "29"], "--patch-size 29 is larger than the 28x28 fmnist images"),
    (["show-augment", "--out", "grid.jpg"], "must end in .png"),
    (["reproduce", "fmnist", "--robust-methods", "patch"], "robust_methods: patch is not a robust fine-tuning method"),
    (["reproduce", "fmnist", "--robust-methods", "pgd_at,none"], "'none' stands alone"),
    (["reproduce", "fmnist", "--optimizers", "adam,adagrad"], "unknown optimizer 'adagrad'"),
    (["reproduce", "fmnist", "--grid", "robust", "--robust-methods", "none"], "no robust fine-tuning cells to train"),
    (["reproduce", "fmnist", "--grid", "some"], "invalid choice: 'some'"),
    (["reproduce", "fmnist", "--grid", "paper", "--eps-warmup", "0.3"],
     "eps_warmup: 0.3 warms up the robust fine-tuning cells; this grid has none"),
    (["reproduce", "fmnist", "--pretrain-limit-eval", "0"], "--pretrain-limit-eval: must be >= 1, got 0"),
    (["reproduce", "fmnist", "--name", "a b"], "--name: must be 1-80 letters"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def _assert_one_line_refusal(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and "error" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path: Path, args: list[str], message: str,
                                                   ray_must_not_start: None) -> None:
    _assert_one_line_refusal(patchtune_here(*args, cwd=tmp_path), message)
    assert list(tmp_path.iterdir()) == []


# One refusal of each kind (argparse, a value checked after parsing, a file) as the real command.
SUBPROCESS_BAD = [case for case in BAD if case[0] in (["pretrain", "--epochs", "0"], ["eval", "missing.pt"],
                                                     ["show-augment", "--patch-size", "29"],
                                                     ["reproduce", "fmnist", "--robust-methods", "patch"])]


@pytest.mark.parametrize("args, message", SUBPROCESS_BAD, ids=[" ".join(a) for a, _ in SUBPROCESS_BAD])
def test_bad_input_in_a_real_process(tmp_path: Path, args: list[str], message: str) -> None:
    _assert_one_line_refusal(patchtune(*args, cwd=tmp_path, timeout=120), message)
    assert list(tmp_path.iterdir()) == []
    # and at once: refused before torch is imported (which alone takes seconds)
    probe = ("import sys\nfrom study.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n"
             "    code = exc.code\nprint('torch' in sys.modules)\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**ENV, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 2 and proc.stdout.strip() == "False", (proc.stdout, proc.stderr)


def test_bad_checkpoints_are_refused(tmp_path: Path, tiny_base: Path) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 100)
    (tmp_path / "NOTES.txt").write_text("hello")  # once a KeyError traceback from torch's unpickler
    for name in ("corrupt.pt", "NOTES.txt"):
        proc = patchtune_here("eval", name, cwd=tmp_path)
        assert proc.returncode == 2 and "is not a checkpoint or state dict" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = patchtune_here("finetune", "--base", str(tiny_base), "--patch-size", "40", "--out", "ft.pt", cwd=tmp_path)
    assert proc.returncode == 2 and "--patch-size 40 is larger than the 28x28" in proc.stderr
    assert not (tmp_path / "ft.pt").exists()


def test_pretrain_finetune_eval_json(tmp_path: Path, tiny_base: Path) -> None:
    ft = tmp_path / "ft.pt"
    proc = patchtune_here("finetune", "--base", str(tiny_base), "--optimizer", "rmsprop", "--lr", "1e-3", "--epochs", "1",
                          "--patch-size", "8", "--pool", "rotate,flip,noise", "--limit-train", "1000", "--limit-val", "200",
                          "--limit-test", "200", "--out", str(ft), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = patchtune("eval", str(ft), "--attacks", "clean,fgsm,ifgsm,pgd", "--limit", "100", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    acc = result["accuracy"]
    assert set(acc) == {"clean", "fgsm", "ifgsm", "pgd"}
    assert all(0.0 <= v <= acc["clean"] for v in acc.values()) and acc["clean"] > 0.25  # chance is 0.1
    assert result["attacks"]["pgd"] == {"name": "pgd", "eps": 0.3, "alpha": 0.01, "steps": 10, "random_start": True,
                                        "restarts": 1, "counted": "any_iterate"}
    assert result["n"] == 100 and result["split"] == "test" and result["optimizer"] == "rmsprop"
    # table output with the paper's numbers beside ours, for several checkpoints at once
    proc = patchtune_here("eval", str(tiny_base), str(ft), "--limit", "50", "--attacks", "clean,pgd", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Undefended (paper)" in proc.stdout and "RMSProp (paper)" in proc.stdout and "50.08" in proc.stdout


def test_finetune_adversarial_training_baseline(tmp_path: Path, tiny_base: Path) -> None:
    """`--method paper_fgsm_at --from-scratch`: the paper's baseline, trained from a fresh init, as a checkpoint,
    evaluated and labelled as such."""
    at = tmp_path / "at.pt"
    proc = patchtune_here("finetune", "--base", str(tiny_base), "--method", "paper_fgsm_at", "--from-scratch", "--epochs", "1",
                          "--limit-train", "600", "--limit-val", "100", "--limit-test", "100", "--out", str(at), "--quiet",
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"training a fresh cnn3 (seed 0; {tiny_base} is its comparison)" in proc.stderr
    assert "paper-fgsm-at examples (eps 0.3" in proc.stderr and (tmp_path / "at.pt").is_file()
    import torch

    meta = torch.load(at, weights_only=True)["meta"]
    assert meta["method"] == {"method": "paper_fgsm_at", "augment": False, "train_eps": 0.3}
    assert meta["augment"] is None and meta["adversarial"]["eps"] == 0.3
    assert meta["init"] == "scratch" and meta["base_path"] == str(tiny_base)
    proc = patchtune_here("eval", str(tiny_base), str(at), "--limit", "50", "--attacks", "clean,fgsm", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "paper FGSM-AT + Adam (ours)" in proc.stdout and "Undefended (ours)" in proc.stdout
    proc = patchtune_here("finetune", "--base", str(tiny_base), "--method", "paper_cw_at", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'paper_cw_at'" in proc.stderr


def test_finetune_adversarial_methods(tmp_path: Path, tiny_base: Path) -> None:
    """`--method trades --augment`: TRADES on clean + patch-modified images, its parameters in the checkpoint."""
    out = tmp_path / "trades.pt"
    proc = patchtune_here("finetune", "--base", str(tiny_base), "--method", "trades", "--augment", "--train-eps", "0.1",
                          "--at-steps", "2", "--beta", "3", "--eps-warmup", "0.5", "--patch-size", "6", "--epochs", "1",
                          "--limit-train", "300",
                          "--limit-val", "50", "--limit-test", "50", "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("trades examples (eps 0.1, alpha 0.125, 2 steps, beta 3, eps warmed up over the first 50% of the steps) "
            "of clean + patch-modified") in proc.stderr
    import torch

    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["method"]["method"] == "trades" and meta["augment"]["patch_size"] == 6
    assert meta["adversarial"]["beta"] == 3 and meta["adversarial"]["eps"] == 0.1
    assert meta["adversarial"]["eps_warmup"] == 0.5
    refusals = [
        (["--method", "fgsm_rs", "--at-steps", "3"], "at_steps is not a parameter of method fgsm_rs (it takes train_eps"),
        (["--method", "pgd_at", "--beta", "2"], "beta is not a parameter of method pgd_at (it takes train_eps, at_steps"),
        (["--method", "patch", "--train-eps", "0.1"], "train_eps is not a parameter of method patch"),
        (["--method", "patch", "--no-augment"], "method patch is the patch augmentation itself"),
        (["--eps-warmup", "0.3"], "eps_warmup is not a parameter of method patch (it takes none); got eps_warmup 0.3"),
        (["--method", "paper_pgd_at", "--beta", "3"], "beta is not a parameter of method paper_pgd_at"),
        (["--method", "pgd_at", "--at-alpha", "0.1"], "at_alpha is not a parameter of method pgd_at"),
        (["--patch-size", "40"], "--patch-size 40 is larger than the 28x28 fmnist images"),
    ]
    for args, message in refusals:
        proc = patchtune_here("finetune", "--base", str(tiny_base), *args, "--out", "x.pt", cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_audit_table_json_and_out_file(tmp_path: Path, tiny_base: Path) -> None:
    """`patchtune audit` on a real undefended checkpoint: strong attacks break it, every check passes."""
    small = ["--limit", "32", "--check-limit", "16", "--strong-steps", "20", "--strong-restarts", "2", "--components",
             "apgd-ce,square"]
    proc = patchtune_here("audit", str(tiny_base), *small, "--base", str(tiny_base), "--out", "sub/audit.json", "--quiet",
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads((tmp_path / "sub" / "audit.json").read_text())
    assert [a["eps"] for a in payload["audits"]] == [0.3]  # the paper's eps for the checkpoint's data set
    at3 = payload["audits"][0]
    assert at3["format"] == "patchtune-audit/1" and at3["n"] == 32
    assert at3["verdict"] == "PASS", [c for c in at3["checks"] if c["status"] != "PASS"]
    rows = {r["name"]: r for r in at3["rows"]}
    assert rows["strong_pgd20x2"]["acc"] <= 0.03 and at3["worst_case_acc"] <= rows["paper_pgd10"]["acc"]
    assert rows["autoattack"]["params"]["apgd_steps"] == 100  # the reference, even in a short run
    # table output: the headline, the rows and every check by name
    for needle in ("masking checks PASS", "PGD-10, alpha 0.01 (paper; cannot reach eps > 0.1)", "cannot reach eps", "AutoAttack (apgd-ce, square)", "Worst case",
                   "iterative_vs_single", "blackbox", "transfer"):
        assert needle in proc.stdout, needle
    # --json prints what --out writes, one audit per eps; without --base the transfer check is skipped, and says so
    proc = patchtune_here("audit", str(tiny_base), "--limit", "16", "--check-limit", "16", "--strong-steps", "5",
                          "--no-autoattack", "--eps", "0.1", "0.3", "--out", "quick.json", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    quick = json.loads(proc.stdout)
    assert quick == json.loads((tmp_path / "quick.json").read_text()) and quick["base"] is None
    assert [a["eps"] for a in quick["audits"]] == [0.1, 0.3]
    assert {c["name"]: c["status"] for c in quick["audits"][0]["checks"]}["transfer"] == "SKIP"
    # a base model for another data set is refused before any attack runs
    other = tmp_path / "other.pt"
    import torch

    ck = torch.load(tiny_base, weights_only=True)
    ck["meta"]["dataset"] = "cifar10"
    torch.save(ck, other)
    proc = patchtune_here("audit", str(tiny_base), "--base", str(other), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"{other} was trained on 'cifar10', not 'fmnist'" in proc.stderr


def test_show_augment_writes_a_png(tmp_path: Path) -> None:
    proc = patchtune_here("show-augment", "--n", "4", "--out", "sub/grid.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sub" / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- study commands


def _spec_file(tmp_path: Path, **over: object) -> Path:
    import yaml

    from study.spec import read_spec_dict

    raw = read_spec_dict("quick")
    raw.update({"storage": str(tmp_path / "studies")})
    raw.update(over)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assert_refused(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_refuses_bad_input_before_ray_starts(tmp_path: Path, ray_must_not_start: None) -> None:
    from study.spec import read_spec_dict
    from trainables.checkpoint import save_checkpoint
    from trainables.models import InputSpec, build_model

    cases: list[tuple[list[str], str]] = [
        (["run", "no-such-preset"], "neither a file nor a preset"),
        (["run", "quick", "--num-samples", "0"], "--num-samples: must be >= 1, got 0"),
        (["run", "quick", "--gpus-per-trial", "-1"], "--gpus-per-trial: must be >= 0, got -1.0"),
        (["run", "quick", "--dashboard-host", "0.0.0.0", "--name", "a/b"], "--name: must be 1-80 letters"),
        (["run", "quick", "--storage", "s3://bucket/x"], "storage: must be a filesystem path"),
        (["run", "quick", "--name", "a b"], "name: must be 1-80 letters"),
        (["run", "quick", "--storage", str(tmp_path / "st"), "--optuna-storage", "notadb://x"], "cannot be opened"),
        (["resume", str(tmp_path / "nowhere")], "does not exist"),
        (["status", str(tmp_path)], "is not a patchtune study directory"),
        (["run", "quick", "--storage", str(tmp_path / "st"), "--mlflow", "mlruns"],
         "tracking.mlflow: must be an MLflow tracking URI"),
        (["run", "quick", "--storage", str(tmp_path / "st"), "--mlflow", "http://127.0.0.1:9"],
         "tracking.mlflow 'http://127.0.0.1:9': no MLflow tracking server answers there"),
        (["report", str(tmp_path)], "is not a finished patchtune study or reproduction directory"),
    ]
    notdb = tmp_path / "notdb"
    notdb.mkdir()
    (notdb / "mlflow.db").write_text("not a database")
    cases.append((["run", "quick", "--storage", str(tmp_path / "st"), "--mlflow", f"sqlite:///{notdb / 'mlflow.db'}"],
                  "is not an SQLite database"))
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "results.parquet").write_text("name,value\n")
    cases.append((["report", str(fake)], "results.parquet is not a readable Parquet file"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pd.DataFrame({"a": [1, 2]}).to_parquet(foreign / "results.parquet")
    (foreign / "spec.yaml").write_text("name: foreign\n")
    cases.append((["report", str(foreign)], "its results.parquet has no trial_id, objective, status column"))
    (tmp_path / "broken.yaml").write_text("name: x\nsearch: [unclosed\n")
    cases.append((["run", str(tmp_path / "broken.yaml")], "is not valid YAML"))
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    cases.append((["run", str(_spec_file(unknown, frobnicate=1))], "unknown key 'frobnicate'"))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    foreign = wrong / "cifar.pt"
    save_checkpoint(foreign, build_model("cnn3", InputSpec(3, 32, 32, 10, (0.5,) * 3, (0.25,) * 3)),
                    {"arch": "cnn3", "dataset": "cifar10"})
    cases.append((["run", str(_spec_file(wrong, base={"checkpoint": str(foreign)}))], "trained on 'cifar10', not 'fmnist'"))
    missing = tmp_path / "missing"
    missing.mkdir()
    cases.append((["run", str(_spec_file(missing, base={"checkpoint": str(missing / "nope.pt")}))], "checkpoint not found"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "garbage.pt").write_bytes(b"\x00garbage" * 50)
    cases.append((["run", str(_spec_file(corrupt, base={"checkpoint": str(corrupt / "garbage.pt")}))],
                  "is not a checkpoint or state dict"))
    methods = tmp_path / "methods"
    methods.mkdir()
    cases.append((["run", str(_spec_file(methods, search={**read_spec_dict("quick")["search"],
                                                            "methods": {"trades": {"beta": [0.0, 6.0]}}}))],
                  "search.methods.trades.beta: must be > 0, got 0.0"))
    noroot = tmp_path / "noroot"
    noroot.mkdir()
    cases.append((["run", str(_spec_file(noroot, data={"root": str(noroot / "absent")}))], "is not a directory"))
    existing = tmp_path / "existing"
    (existing / "studies" / "quick").mkdir(parents=True)
    (existing / "studies" / "quick" / "spec.yaml").write_text("name: quick\n")
    cases.append((["run", str(_spec_file(existing))], "already exists; `patchtune resume"))

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for args, message in cases:
        _assert_refused(patchtune_here(*args, cwd=tmp_path), message)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "nothing written"


def test_run_refuses_a_dead_cluster_address_in_seconds(tmp_path: Path) -> None:
    # nothing listens there: refused in seconds, not after Ray's minutes of retries; nothing written
    proc = patchtune("run", "quick", "--storage", str(tmp_path / "st"), "--address", "127.0.0.1:9", cwd=tmp_path,
                     timeout=120)
    _assert_refused(proc, "nothing answers at 127.0.0.1:9")
    assert not (tmp_path / "st").exists()


def test_run_dry_run_prints_resolved_spec_and_creates_nothing(tmp_path: Path, tiny_base: Path,
                                                              ray_must_not_start: None) -> None:
    import yaml

    spec = _spec_file(tmp_path, base={"checkpoint": str(tiny_base)}, objective={"metric": "pgd_acc"},
                      audit={"enabled": True, "limit": 50})
    proc = patchtune_here("run", str(spec), "--dry-run", "--num-samples", "3", "--name", "dry", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["name"] == "dry" and resolved["num_samples"] == 3
    # defaults that depend on the data set are filled in: the paper's eps, and an alpha that reaches it
    assert resolved["model"]["arch"] == "cnn3" and resolved["objective"]["eps"] == 0.3
    assert resolved["objective"]["alpha"] == pytest.approx(0.075) and resolved["audit"]["eps"] == [0.3]
    assert "dry run OK" in proc.stderr
    assert not (tmp_path / "studies").exists()


def test_run_refuses_to_reuse_a_study_name_with_other_objectives(tmp_path: Path, ray_must_not_start: None) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="quick", storage=url, directions=["maximize", "maximize"])
    proc = patchtune_here("run", "quick", "--storage", str(tmp_path / "st"), "--optuna-storage", url, cwd=tmp_path)
    _assert_refused(proc, "has 2 objective(s), this spec has 1")
    optuna.create_study(study_name="other", storage=url, direction="maximize")
    proc = patchtune_here("run", "quick", "--name", "other", "--storage", str(tmp_path / "st"), "--optuna-storage",
                          url, cwd=tmp_path)
    _assert_refused(proc, "Optuna study 'other' already exists")
    assert not (tmp_path / "st").exists()
