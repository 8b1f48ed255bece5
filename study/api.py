"""patchtune from Python (notebooks, scripts): the CLI's commands as functions on typed objects.

    from study import api

    spec = api.load_spec("quick", num_samples=4, epochs=1)   # a preset or a YAML file, with `run`'s overrides
    study = api.run(spec)                                     # -> Study: results / epochs DataFrames, verdict
    print(study.verdict)
    print(api.status(study.path))                             # -> Status (what `patchtune status` prints)
    report = api.report(study.path)                           # -> Report: report.md, report.html, figures

`patchtune run/resume/status/audit/report/reproduce` are thin wrappers around these functions, and their keywords are
views of the settings, like the CLI's flags: each names one setting (`RUN_OVERRIDES`, `REPRODUCE_KEYWORDS`,
`AuditCfg`'s fields), and one not given is left to the model's default. Every user mistake raises a
`trainables.vocab.UserError` (the CLI prints it on one line and exits 2). Torch and Ray are imported inside the
calls (this module costs what pandas and scipy cost to import, not torch's or Ray's).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from analysis import versus_base
from analysis.load import StudyData, load_reproduction_files, load_study
from study.errors import StudyError
from study.options import Output
from study.settings import REPRODUCE_KEYWORDS, RayOptions, ReproCfg
from study.spec import RUN_OVERRIDES, StudySpec
from trainables.config import AuditCfg, ModelCfg
from trainables.config.spine import Settings, nested

M = TypeVar("M", bound=Settings)


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
        return versus_base.verdict(self.best)

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
        return str(self.meta["data"]["dataset"])


# ------------------------------------------------------------------------------------------- calls


def load_spec(spec: str | Path, **overrides: Any) -> StudySpec:
    """A preset name or a YAML file, validated, with `run`'s overrides as keywords (`num_samples=4`,
    `gpus_per_trial=0.25`, `mlflow="sqlite:///mlflow.db"`, ...: `RUN_OVERRIDES`); None leaves a value as the spec
    has it."""
    from study.spec import load_spec as load

    _known(overrides, RUN_OVERRIDES, "load_spec")
    return load(str(spec), {RUN_OVERRIDES[k]: v for k, v in overrides.items() if v is not None})


def run(spec: StudySpec | str | Path, *, address: str | None = None, dashboard: bool | None = None,
        dashboard_host: str | None = None) -> Study:
    """Run a study to the end (`patchtune run`): checks first, then the base model, the trials on Ray (a local
    instance unless `address` names a cluster), the best trial on the test split. Returns it loaded. The keywords
    are `RayOptions`' (not given: its defaults)."""
    from study.runner import run_study

    ray = _given(RayOptions, address=address, dashboard=dashboard, dashboard_host=dashboard_host)
    return load(run_study(spec if isinstance(spec, StudySpec) else load_spec(spec), ray))


def resume(study_dir: str | Path, *, address: str | None = None, dashboard: bool | None = None) -> Study:
    """Continue an interrupted study (`patchtune resume`): unfinished and errored trials resume from their last
    checkpoint; the results files are written again."""
    from study.runner import resume_study

    return load(resume_study(_study_dir(study_dir), _given(RayOptions, address=address, dashboard=dashboard)))


def reproduction_cfg(dataset: str, **keywords: Any) -> ReproCfg:
    """`reproduce`'s settings: the data set and the keywords of `REPRODUCE_KEYWORDS` (`seeds=3`, `limit_train`,
    `epochs`, `robust_methods`, ...), not given ones left to the data set's budgets (resolved)."""
    _known(keywords, REPRODUCE_KEYWORDS, "reproduce")
    given = {REPRODUCE_KEYWORDS[k]: v for k, v in keywords.items() if v is not None}
    return ReproCfg.parse(nested({"data.dataset": dataset, **given})).resolved()


def reproduce(dataset: str, *, address: str | None = None, **keywords: Any) -> Reproduction:
    """`patchtune reproduce`: the paper's Table 1 / Table 2 over seeds, with the robust fine-tuning cells."""
    from study.reproduce import reproduce as run_grid

    return load_reproduction(run_grid(reproduction_cfg(dataset, **keywords), RayOptions(address=address)))


def load_reproduction(path: str | Path) -> Reproduction:
    try:
        meta, results = load_reproduction_files(path)
    except FileNotFoundError as exc:
        raise StudyError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise StudyError(f"{str(path)!r} is not readable: {str(exc).splitlines()[0]}") from None
    return Reproduction(path=Path(path).expanduser().resolve(), meta=meta, results=results)


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
                  verdict=versus_base.verdict(best))


def report(study_dir: str | Path) -> Report:
    """`patchtune report`: every figure (PNG + SVG), report.md and the self-contained report.html, written into
    DIR/report/, for a study or a `patchtune reproduce` directory."""
    from analysis.report import write_reproduction_report, write_study_report

    path = Path(study_dir).expanduser()
    if not (path / "results.parquet").is_file():
        raise StudyError(f"{str(study_dir)!r} is not a finished patchtune study or reproduction directory "
                         "(no results.parquet)")
    results = _parquet(path / "results.parquet")  # a file that only claims to be one: one line, not a traceback
    reproduction = (path / "reproduction.json").is_file()
    kind, marker, needed = (("reproduction", "reproduction.json", ("cell", "seed")) if reproduction
                            else ("study", "spec.yaml", ("trial_id", "objective", "status")))
    missing = [c for c in needed if c not in results.columns]
    if not (path / marker).is_file() or missing:
        raise StudyError(f"{str(study_dir)!r} is not a patchtune {kind} directory ("
                     + (f"no {marker}" if not (path / marker).is_file() else
                        f"its results.parquet has no {', '.join(missing)} column") + ")")
    md = write_reproduction_report(path) if reproduction else write_study_report(path)
    return Report(markdown=md, html=md.with_suffix(".html"), figures=tuple(sorted(md.parent.glob("*.png"))))


def audit(checkpoint: str | Path, *, base: str | Path | None = None, data_root: str | None = None,
          arch: str | None = None, dataset: str | None = None, image_size: int | None = None,
          device: str | None = None, progress: bool = False, log: Callable[[str], None] | None = None,
          **settings: Any) -> Audit:
    """`patchtune audit`: the strong-attack audit of one checkpoint; `settings` are `AuditCfg`'s fields (`eps=[0.1,
    0.3]`, `limit=500`, `strong_steps=100`, ...; not given: the model's defaults, the eps the paper's for the data
    set). `base` (an undefended checkpoint) enables the transfer check. A plain state dict needs `arch` and
    `dataset`. `log` is told what is audited, once every input has been checked and the data loaded."""
    unknown = sorted(set(settings) - set(AuditCfg.model_fields))
    if unknown:
        raise TypeError(f"audit() got unknown setting(s) {', '.join(unknown)}; known: {', '.join(AuditCfg.model_fields)}")
    eps = settings.get("eps")
    if isinstance(eps, (int, float)):
        settings["eps"] = (float(eps),)
    data = {k: v for k, v in {"root": data_root, "dataset": dataset, "image_size": image_size}.items() if v is not None}
    return audit_checkpoint(checkpoint, _given(AuditCfg, **settings), base=base, data=data, arch=arch, device=device,
                            progress=progress, log=log)


def audit_checkpoint(checkpoint: str | Path, cfg: AuditCfg, *, base: str | Path | None = None,
                     data: dict[str, Any] | None = None, arch: str | None = None, device: str | None = None,
                     progress: bool = False, log: Callable[[str], None] | None = None) -> Audit:
    """`audit` with its settings as one `AuditCfg`, `data` the data settings given (a root, the data set of a
    plain state dict) and `arch` that of a plain state dict."""
    from trainables.checkpoint import load_checkpoint
    from trainables.data import load_data
    from trainables.perf import pick_device
    from trainables.pipeline import audit_model
    from trainables.vocab import ConfigError
    from trainables.zoo import check_inputs

    for p in (checkpoint, base):
        if p is not None and not Path(p).is_file():
            raise StudyError(f"checkpoint not found: {p}")
    given = dict(data or {})
    arch = ModelCfg.parse({"arch": arch}, "model").arch if arch is not None else None
    ck = load_checkpoint(checkpoint, arch=arch, dataset=given.get("dataset"))
    base_ck = load_checkpoint(base, dataset=ck.dataset, plain_arch=ck.arch) if base is not None else None
    data_cfg = ck.data_cfg(**given, **{f"limit_{cfg.split.value}": cfg.limit})
    check_inputs(ck.arch, data_cfg.info)
    eps = list(cfg.budgets(ck.dataset))
    device = _given(Output, device=device).device
    try:
        dev = pick_device(device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"device {device!r}: {exc}") from None
    loaded = load_data(data_cfg)
    model = ck.build(loaded.info)
    base_model = base_ck.build(loaded.info) if base_ck is not None else None
    if log is not None:
        log(f"auditing {checkpoint} on {len(loaded.split(cfg.split.value))} {cfg.split.value} images on {dev} at eps "
            + ", ".join(f"{e:g}" for e in eps))
    reports = audit_model(model, loaded, cfg, eps, device=dev, base=base_model,
                          progress=progress, log=log)
    return Audit(checkpoint=Path(checkpoint), base=Path(base) if base is not None else None, dataset=ck.dataset.value,
                 arch=ck.arch, split=cfg.split.value, device=str(dev), reports=reports)


def _given(model: type[M], **keywords: Any) -> M:
    """`model` from the keywords given (None: not given, the model's default)."""
    return model.parse({k: v for k, v in keywords.items() if v is not None})


def _known(keywords: dict[str, Any], views: dict[str, str], call: str) -> None:
    unknown = sorted(set(keywords) - set(views))
    if unknown:
        raise TypeError(f"{call}() got unknown keyword(s) {', '.join(unknown)}; known: {', '.join(views)}")


def _spec_of(path: Path) -> StudySpec:
    from study.preflight import load_study_spec

    return load_study_spec(path)


def _study_dir(study_dir: str | Path) -> Path:
    path = Path(study_dir).expanduser()
    if not path.is_dir():
        raise StudyError(f"study directory {str(study_dir)!r} does not exist")
    return path.resolve()


def _parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise StudyError(f"{path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"{path} is not readable JSON: {exc}") from None
    return payload if isinstance(payload, dict) else None
