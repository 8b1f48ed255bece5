"""patchtune from Python (notebooks, scripts): the CLI's commands as functions on typed objects.

    from study import api

    spec = api.load_spec("quick", num_samples=4, epochs=1)   # a preset or a YAML file, with `run`'s overrides
    study = api.run(spec)                                     # -> Study: results / epochs DataFrames, verdict
    print(study.verdict)
    print(api.status(study.path))                             # -> Status (what `patchtune status` prints)
    report = api.report(study.path)                           # -> Report: report.md, report.html, figures

`patchtune run/resume/status/audit/report` are thin wrappers around these functions. Every user mistake raises a
`trainables.vocab.UserError` (the CLI prints it on one line and exits 2). Torch and Ray are imported inside the
calls (this module costs what pandas and scipy cost to import, not torch's or Ray's).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import versus_base
from analysis.load import StudyData, load_study
from study.spec import StudySpec
from trainables.vocab import Component, paper_eps, values

# `load_spec`'s keyword overrides: `patchtune run`'s flags (their Python names) -> the spec fields they set.
OVERRIDES = {
    "name": "name", "storage": "storage", "num_samples": "num_samples", "max_concurrent": "max_concurrent",
    "epochs": "epochs", "seed": "seed", "cpus_per_trial": "resources.cpu", "gpus_per_trial": "resources.gpu",
    "optuna_storage": "optuna_storage", "mlflow": "tracking.mlflow",
}


@dataclasses.dataclass(frozen=True)
class Study:
    """A study directory as written by `run` / `resume`: its spec and result files, read once."""

    path: Path
    spec: StudySpec
    results: pd.DataFrame  # results.parquet: one row per trial (config, validation metrics, states)
    epochs: pd.DataFrame  # epochs.parquet: one row per trial and epoch reported
    best: dict[str, Any] | None  # best.json: the best trial(s) on the test split and against the base
    base: dict[str, Any] | None  # base.json: the base checkpoint and its validation scores
    audit: dict[str, Any] | None  # audit.json: the `audit:` option's strong attacks and masking checks
    timings: dict[str, Any] | None  # timings.json: wall seconds per phase of the last run or resume

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def complete(self) -> bool:
        """Every trial ran and the best one was scored on the test split (best.json exists)."""
        return self.best is not None

    @property
    def verdict(self) -> str | None:
        """The line every summary leads with: does the best trial beat its own base model, by how much, under
        which attack and on which split. None until the study is complete."""
        return versus_base.headline(self.best["trials"]) if self.best else None

    @property
    def best_checkpoint(self) -> Path | None:
        return Path(self.best["trials"][0]["checkpoint"]) if self.best else None

    def finished_trials(self) -> pd.DataFrame:
        """Trials that ran their whole fine-tuning budget (not pruned, not failed), best objective first."""
        done = self.results[self.results["status"] == "COMPLETE"] if "status" in self.results else self.results
        return done.sort_values("objective", ascending=False) if "objective" in done else done

    def analysis(self) -> StudyData:
        """The same directory as `analysis.load.StudyData`: the tidy frames the plots and tables take."""
        return load_study(self.path)


@dataclasses.dataclass(frozen=True)
class Status:
    """A study's state, finished or not (readable while it runs)."""

    path: Path
    text: str  # what `patchtune status` prints
    trials: pd.DataFrame  # Optuna's trials (number, state, value, params); empty before the first trial
    verdict: str | None  # as `Study.verdict`; None until the study is complete

    def __str__(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class Report:
    markdown: Path  # report/report.md
    html: Path  # report/report.html: one self-contained page, figures embedded
    figures: tuple[Path, ...]  # every PNG beside them (an SVG of each too)


@dataclasses.dataclass(frozen=True)
class Audit:
    """`patchtune audit`: strong attacks and gradient-masking checks of one checkpoint, one report per eps."""

    checkpoint: Path
    base: Path | None
    dataset: str
    arch: str
    split: str
    device: str
    reports: list[dict[str, Any]]  # trainables.audit.AuditReport.as_dict(), as in `audit --json`

    def to_frame(self) -> pd.DataFrame:
        """One row per (eps, attack): robust accuracy with its Wilson 95 % interval, then the worst case."""
        rows = []
        for rep in self.reports:
            for r in rep["rows"]:
                rows.append({"eps": rep["eps"], "attack": r["name"], "n": r["n"], "accuracy": r["acc"],
                             "ci95_low": r["ci95"][0], "ci95_high": r["ci95"][1], "note": r.get("note", "")})
            rows.append({"eps": rep["eps"], "attack": "worst case", "n": rep["n"], "accuracy": rep["worst_case_acc"],
                         "ci95_low": rep["worst_case_ci95"][0], "ci95_high": rep["worst_case_ci95"][1],
                         "note": f"masking checks: {rep['verdict']}"})
        return pd.DataFrame(rows)

    def as_dict(self) -> dict[str, Any]:
        """The JSON `patchtune audit --out` writes."""
        return {"checkpoint": str(self.checkpoint), "base": str(self.base) if self.base else None,
                "dataset": self.dataset, "arch": self.arch, "split": self.split, "device": self.device,
                "audits": self.reports}


@dataclasses.dataclass(frozen=True)
class Reproduction:
    """A `patchtune reproduce` directory: the paper's grid (and the robust cells) over seeds."""

    path: Path
    meta: dict[str, Any]  # reproduction.json: data set, arch, budgets, seeds, the spec
    results: pd.DataFrame  # results.parquet: one row per (cell, seed), every attack and setting

    @property
    def dataset(self) -> str:
        return str(self.meta["dataset"])


# ------------------------------------------------------------------------------------------- calls


def load_spec(spec: str | Path, **overrides: Any) -> StudySpec:
    """A preset name or a YAML file, validated, with `run`'s overrides as keywords (`num_samples=4`,
    `gpus_per_trial=0.25`, `mlflow="sqlite:///mlflow.db"`, ...); None leaves a value as the spec has it."""
    from study.spec import load_spec as load

    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"load_spec() got unknown override(s) {', '.join(unknown)}; known: {', '.join(OVERRIDES)}")
    return load(str(spec), {OVERRIDES[k]: v for k, v in overrides.items() if v is not None})


def run(spec: StudySpec | str | Path, *, address: str | None = None, dashboard: bool = False,
        dashboard_host: str = "127.0.0.1") -> Study:
    """Run a study to the end (`patchtune run`): checks first, then the base model, the trials on Ray (a local
    instance unless `address` names a cluster), the best trial on the test split. Returns it loaded."""
    from study.runner import run_study

    return load(run_study(spec if isinstance(spec, StudySpec) else load_spec(spec), address=address,
                          dashboard=dashboard, dashboard_host=dashboard_host))


def resume(study_dir: str | Path, *, address: str | None = None, dashboard: bool = False) -> Study:
    """Continue an interrupted study (`patchtune resume`): unfinished and errored trials resume from their last
    checkpoint; the results files are written again."""
    from study.runner import resume_study

    return load(resume_study(_study_dir(study_dir), address=address, dashboard=dashboard))


def reproduce(dataset: str, *, storage: str | Path = "runs/reproductions", name: str | None = None,
              address: str | None = None, data_root: str | None = None, **budgets: Any) -> Reproduction:
    """`patchtune reproduce`: the paper's Table 1 / Table 2 over seeds (`seeds=3`), with the robust fine-tuning
    cells; `budgets` are `study.reproduce.make_spec`'s keywords (`limit_train`, `epochs`, `robust_methods`, ...)."""
    from study.reproduce import make_spec
    from study.reproduce import reproduce as run_grid

    return load_reproduction(run_grid(make_spec(dataset, **budgets), Path(storage), name=name, address=address,
                                      data_root=data_root))


def load_reproduction(path: str | Path) -> Reproduction:
    where = Path(path).expanduser()
    meta = _json(where / "reproduction.json")
    if meta is None or not (where / "results.parquet").is_file():
        raise _error(f"{str(path)!r} is not a finished `patchtune reproduce` directory (no reproduction.json or "
                     "results.parquet)")
    return Reproduction(path=where.resolve(), meta=meta, results=_parquet(where / "results.parquet"))


def load(study_dir: str | Path) -> Study:
    """A study directory's files as a `Study` (complete or not: results appear when the trials end)."""
    path = _study_dir(study_dir)
    spec = _spec_of(path)
    results = _parquet(path / "results.parquet")
    return Study(path=path, spec=spec, results=results, epochs=_parquet(path / "epochs.parquet"),
                 best=_json(path / "best.json"), base=_json(path / "base.json"), audit=_json(path / "audit.json"),
                 timings=_json(path / "timings.json"))


def status(study_dir: str | Path) -> Status:
    """`patchtune status`: the trial states from Optuna's storage and the verdict, readable while the study runs."""
    from study.results import optuna_trials, status_table

    path = _study_dir(study_dir)
    try:
        trials: pd.DataFrame | None = optuna_trials(_spec_of(path))
    except Exception:  # noqa: BLE001 - the storage does not exist before the first trial; the text says so
        trials = None
    best = _json(path / "best.json")
    return Status(path=path, text=status_table(path, trials), trials=pd.DataFrame() if trials is None else trials,
                  verdict=versus_base.headline(best["trials"]) if best else None)


def report(study_dir: str | Path) -> Report:
    """`patchtune report`: every figure (PNG + SVG), report.md and the self-contained report.html, written into
    DIR/report/, for a study or a `patchtune reproduce` directory."""
    from analysis.report import write_reproduction_report, write_study_report

    path = Path(study_dir).expanduser()
    if not (path / "results.parquet").is_file():
        raise _error(f"{str(study_dir)!r} is not a finished patchtune study or reproduction directory "
                         "(no results.parquet)")
    results = _parquet(path / "results.parquet")  # a file that only claims to be one: one line, not a traceback
    reproduction = (path / "reproduction.json").is_file()
    kind, marker, needed = (("reproduction", "reproduction.json", ("method", "seed")) if reproduction
                            else ("study", "spec.yaml", ("trial_id", "objective", "status")))
    missing = [c for c in needed if c not in results.columns]
    if not (path / marker).is_file() or missing:
        raise _error(f"{str(study_dir)!r} is not a patchtune {kind} directory ("
                     + (f"no {marker}" if not (path / marker).is_file() else
                        f"its results.parquet has no {', '.join(missing)} column") + ")")
    md = write_reproduction_report(path) if reproduction else write_study_report(path)
    return Report(markdown=md, html=md.with_suffix(".html"), figures=tuple(sorted(md.parent.glob("*.png"))))


def audit(checkpoint: str | Path, *, eps: float | Sequence[float] | None = None, base: str | Path | None = None,
          split: str = "test", limit: int | None = 500, steps: int = 100, restarts: int = 5, autoattack: bool = True,
          components: Sequence[str] | None = None, check_limit: int = 200, batch_size: int = 250, seed: int = 0,
          data_root: str | None = None, device: str = "auto", progress: bool = False,
          log: Callable[[str], None] | None = None) -> Audit:
    """`patchtune audit`: PGD-`steps` x `restarts` (alpha = 2.5 eps / steps), AutoAttack (`components`, default
    all four) and the gradient-masking checks on `limit` images of `split`, at each `eps` (default: the paper's
    for the data set). `base` (an undefended checkpoint) enables the transfer check. `log` is told what is
    audited, once every input has been checked and the data loaded."""
    from trainables.audit import AuditCfg
    from trainables.checkpoint import load_checkpoint
    from trainables.data import load_data
    from trainables.engine import pick_device
    from trainables.pipeline import audit_model
    from trainables.vocab import ConfigError

    for p in (checkpoint, base):
        if p is not None and not Path(p).is_file():
            raise _error(f"checkpoint not found: {p}")
    if split not in ("val", "test"):
        raise ConfigError(f"split must be val or test, got {split!r}")
    ck = load_checkpoint(checkpoint)
    base_ck = load_checkpoint(base) if base is not None else None
    if base_ck is not None and (base_ck.dataset is not ck.dataset or base_ck.input_spec() != ck.input_spec()):
        raise ConfigError(f"base {base} is for {base_ck.dataset.value} {base_ck.arch}, but {checkpoint} is for "
                          f"{ck.dataset.value} {ck.arch}")
    eps_list = [paper_eps(ck.dataset)] if eps is None else [float(eps)] if isinstance(eps, (int, float)) else list(eps)
    cfgs = [AuditCfg(eps=e, strong_steps=steps, strong_restarts=restarts, autoattack=autoattack,
                     components=tuple(components or values(Component)), check_limit=check_limit,
                     batch_size=batch_size, seed=seed) for e in eps_list]
    data_cfg = checkpoint_data_cfg(ck, split, limit, data_root)
    try:
        dev = pick_device(device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"device {device!r}: {exc}") from None
    model = ck.build()
    data = load_data(data_cfg)
    if log is not None:
        log(f"auditing {checkpoint} on {len(data.split(split))} {split} images on {dev} at eps "
            + ", ".join(f"{e:g}" for e in eps_list))
    reports = audit_model(model, data, split, cfgs, device=dev, base=base_ck.build() if base_ck else None,
                          progress=progress)
    return Audit(checkpoint=Path(checkpoint), base=Path(base) if base is not None else None, dataset=ck.dataset.value,
                 arch=ck.arch, split=split, device=str(dev), reports=reports)


def checkpoint_data_cfg(ck: Any, split: str, limit: int | None, data_root: str | None) -> Any:
    """The data a checkpoint was trained on (its validation split), limited to `limit` images of `split`."""
    from trainables.config import DataCfg

    split_meta = ck.meta.get("data") or {}
    return DataCfg(dataset=ck.dataset, root=data_root, val_fraction=split_meta.get("val_fraction", 0.1),
                   split_seed=split_meta.get("split_seed", 0), image_size=ck.meta.get("image_size"),
                   limit_test=limit if split == "test" else None, limit_val=limit if split == "val" else None)


def _error(message: str) -> Exception:
    from study.preflight import StudyError  # imports torch: only when there is something to say

    return StudyError(message)


def _spec_of(path: Path) -> StudySpec:
    from study.preflight import load_study_spec

    return load_study_spec(path)


def _study_dir(study_dir: str | Path) -> Path:
    path = Path(study_dir).expanduser()
    if not path.is_dir():
        raise _error(f"study directory {str(study_dir)!r} does not exist")
    return path.resolve()


def _parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise _error(f"{path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _error(f"{path} is not readable JSON: {exc}") from None
    return payload if isinstance(payload, dict) else None
