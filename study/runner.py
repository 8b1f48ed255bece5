"""Runs and resumes a study: the base model, the Tune experiment, and the study's result files.

The pieces live beside it: `preflight` (everything a user can get wrong, checked before Ray starts),
`cluster` (ray.init, running one-off jobs where the GPU is), `bases` (the base model, pretrained and cached),
`tuner` (the study's `tune.Tuner`), `results` (results.parquet / epochs.parquet, the status table), `best` (the
best trials on the test split, their audit and their comparison with the base). A study directory
(`<storage>/<name>/`) holds:

    spec.yaml          the resolved spec          optuna.db         Optuna storage (default)
    base.json          which base checkpoint      results.parquet   one row per trial (config, metrics, states)
    epochs.parquet     one row per trial-epoch    best.json         best trial(s) on the test split
    best.pt            the best trial's weights   <Tune files>      tuner.pkl, trial dirs, TensorBoard events
    timings.json       wall seconds per phase of the last run or resume (where a user's minutes went)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from study import tracking
from study.bases import ensure_bases
from study.best import audit_best, evaluate_trial_on_test, objective_measure
from study.cluster import ray_session
from study.errors import StudyError
from study.preflight import Prepared, check_optuna_storage, load_study_spec, preflight
from study.results import collect_results, status_table, write_parquet
from study.settings import RayOptions
from study.spec import StudySpec
from study.tuner import study_trainable, study_tuner, with_resources
from trainables.atomic import atomic_write_text
from trainables.checkpoint import input_meta, load_checkpoint, save_checkpoint
from trainables.data import DataBundle, load_data

log = logging.getLogger("patchtune")
__all__ = ["StudyError", "preflight", "resume_study", "run_study", "status_table"]


class Phases:
    """Wall seconds per phase of a study run, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def write(self, study_dir: Path) -> None:
        payload = {"phases_s": {k: round(v, 2) for k, v in self.seconds.items()},
                   "total_s": round(time.perf_counter() - self._t0, 2)}
        atomic_write_text(study_dir / "timings.json", json.dumps(payload, indent=2))


def ensure_base(prep: Prepared) -> Path:
    """The base checkpoint: given, or pretrained (cached for later studies). A plain state dict is written into
    the study directory as a checkpoint (`base.pt`), so that the trials, the evaluation and the audit read one
    kind of file."""
    spec = prep.spec
    if prep.base is not None and prep.base.plain:
        path = spec.study_dir() / "base.pt"
        model = prep.base.build(prep.data.info)
        save_checkpoint(path, model, {**prep.base.meta, "kind": "imported", "data": spec.data.split_meta(),
                                      "input": input_meta(prep.data.info, model)})
        return path
    if prep.base_path is not None:
        return prep.base_path
    assert spec.model.arch is not None and spec.base.pretrain is not None
    return ensure_bases(spec.storage, spec.model.arch, spec.data, [spec.base.pretrain], weights=spec.base.weights,
                        cpus=spec.resources.cpus_per_trial)[0]


def score_base(spec: StudySpec, data: DataBundle, base_path: Path) -> dict[str, float]:
    """The undefended base on the trials' validation subset and eps grid: the reference line in the report."""
    from trainables.perf import pick_device
    from trainables.scoring import score_objective

    model = load_checkpoint(base_path, arch=spec.arch, dataset=spec.data.dataset).build(data.info)
    return score_objective(model, data.val, spec.objective, device=pick_device("cpu"), seed=spec.seed)


def run_study(spec: StudySpec, ray: RayOptions | None = None) -> Path:
    ray = ray or RayOptions()
    phases = Phases()
    with phases("preflight"):  # data loading included
        prep = preflight(spec)
    spec = prep.spec  # resolved
    # Connect before writing anything: a wrong --address must not leave a half-made study directory behind.
    with contextlib.ExitStack() as stack:
        with phases("ray_start"):
            stack.enter_context(ray_session(ray.address, ray.dashboard, ray.dashboard_host))
        study_dir = spec.study_dir()
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(study_dir / "spec.yaml", spec.to_yaml())
        with phases("base"):  # pretrained now or read from the cache, and scored on the validation subset
            base_path = ensure_base(prep)
            atomic_write_text(study_dir / "base.json", json.dumps(
                {"path": str(base_path), "val": score_base(spec, prep.data, base_path)}, indent=2))
        tuner = study_tuner(spec, study_trainable(spec, prep.data, base_path))
        _print_watch_hints(spec)
        with phases("trials"):
            grid = tuner.fit()
        return finalize(spec, grid, base_path, phases)


def resume_study(study_dir: Path, ray: RayOptions | None = None) -> Path:
    from ray import tune

    ray = ray or RayOptions()
    phases = Phases()
    study_dir = study_dir.expanduser().resolve()
    spec = load_study_spec(study_dir)
    if not tune.Tuner.can_restore(str(study_dir)):
        raise StudyError(f"{study_dir} holds no Tune experiment state to resume (was it started?)")
    base_json = study_dir / "base.json"
    base_path = Path(json.loads(base_json.read_text())["path"]) if base_json.is_file() else None
    if base_path is None or not base_path.is_file():
        raise StudyError(f"the base checkpoint of {study_dir} is missing ({base_path}); the study cannot resume")
    check_optuna_storage(spec, fresh=False)
    tracking.check(spec)
    with phases("preflight"):
        data = load_data(spec.data)
    with contextlib.ExitStack() as stack:
        with phases("ray_start"):
            stack.enter_context(ray_session(ray.address, ray.dashboard, ray.dashboard_host))
        trainable = with_resources(study_trainable(spec, data, base_path), spec.resources)
        tuner = tune.Tuner.restore(str(study_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        _print_watch_hints(spec)
        with phases("trials"):
            grid = tuner.fit()
        return finalize(spec, grid, base_path, phases)


def _print_watch_hints(spec: StudySpec) -> None:
    d = spec.study_dir()
    print(f"study directory: {d}\n  TensorBoard:      tensorboard --logdir {d}\n"
          f"  optuna-dashboard: optuna-dashboard {spec.optuna_url()}", flush=True)


def finalize(spec: StudySpec, grid: Any, base_path: Path, phases: Phases | None = None) -> Path:
    """Write results.parquet / epochs.parquet, evaluate the best trial(s) on the test split, write best.json
    (and timings.json, the wall time of each phase)."""
    phases = phases or Phases()
    try:
        return _finalize(spec, grid, base_path, phases)
    finally:
        phases.write(spec.study_dir())


def _finalize(spec: StudySpec, grid: Any, base_path: Path, phases: Phases) -> Path:
    study_dir = spec.study_dir()
    with phases("collect"):
        results, epochs = collect_results(spec, grid)
        write_parquet(results, study_dir / "results.parquet")
        write_parquet(epochs, study_dir / "epochs.parquet")
    finished = results[results["status"] == "COMPLETE"] if len(results) else results
    if len(results) < spec.num_samples or (len(results) and (results["status"] == "INCOMPLETE").any()):
        print(f"study incomplete: {int((results['status'] != 'INCOMPLETE').sum()) if len(results) else 0} of "
              f"{spec.num_samples} trials finished. Continue with:  patchtune resume {study_dir}", flush=True)
        return study_dir
    if not len(finished):
        print("no trial completed its fine-tuning budget; nothing to evaluate on the test split", flush=True)
        return study_dir
    best = finished.sort_values("objective", ascending=False).head(spec.best_trials)
    with phases("test_eval"):
        entries = [evaluate_trial_on_test(spec, row, base_path, rank) for rank, row in enumerate(best.to_dict("records"))]
    payload = {
        "study": spec.name,
        "dataset": spec.data.dataset.value,
        "objective": {"metric": spec.objective.metric.value, "split": "val", "limit_val": spec.data.limit_val,
                      "measure": objective_measure(spec.objective)},
        "test_split": {"n": entries[0]["test"]["n"], "attacks": entries[0]["test"]["attacks"]},
        "trials": entries,
    }
    atomic_write_text(study_dir / "best.json", json.dumps(payload, indent=2, default=str))
    if spec.audit.enabled:
        with phases("audit"):
            audit_best(spec, entries, base_path)  # adds each trial's test-split comparison with the base
        atomic_write_text(study_dir / "best.json", json.dumps(payload, indent=2, default=str))
    tracking.log_best(spec, entries)
    return study_dir
