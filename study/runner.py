"""Runs and resumes a study: the base model, the Tune experiment, and the study's result files.

The pieces live beside it: `preflight` (everything a user can get wrong, checked before Ray starts),
`cluster` (ray.init, running one-off jobs where the GPU is), `tuner` (the study's `tune.Tuner`), `results`
(results.parquet / epochs.parquet, the status table). A study directory (`<storage>/<name>/`) holds:

    spec.yaml          the resolved spec          optuna.db         Optuna storage (default)
    base.json          which base checkpoint      results.parquet   one row per trial (config, metrics, states)
    epochs.parquet     one row per trial-epoch    best.json         best trial(s) on the test split
    best.pt            the best trial's weights   <Tune files>      tuner.pkl, trial dirs, TensorBoard events
    timings.json       wall seconds per phase of the last run or resume (where a user's minutes went)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from analysis import versus_base
from study import tracking
from study.cluster import ray_session, run_where_gpu
from study.preflight import (
    Prepared,
    StudyError,
    check_optuna_storage,
    data_cfg,
    load_study_spec,
    objective_cfg,
    preflight,
)
from study.results import collect_results, status_table, write_parquet
from study.spec import StudySpec
from study.tuner import build_trainable, build_tuner
from trainables.atomic import atomic_write_text
from trainables.audit import AuditCfg
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import TRIAL_CONFIG_KEYS, TRIAL_METHOD_KEYS, DataCfg, paper_attacks
from trainables.data import DataBundle, load_data
from trainables.pipeline import input_spec
from trainables.vocab import Objective, decode_outcomes

log = logging.getLogger("patchtune")
__all__ = ["StudyError", "preflight", "resume_study", "run_study", "status_table"]


def pretrain_base(arch: str, cfg: DataCfg, pretrain: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs as a Ray task on whichever node gets it (a GPU one when the cluster has GPUs)."""
    from trainables.engine import pick_device
    from trainables.pipeline import default_train_cfg
    from trainables.pipeline import pretrain as run_pretrain

    limit, limit_eval = pretrain.pop("limit_train", None), pretrain.pop("limit_eval", None)
    cfg = dataclasses.replace(cfg, limit_train=limit, limit_val=limit_eval, limit_test=limit_eval)
    train_cfg = default_train_cfg(arch, finetune=False, **pretrain)
    model, meta = run_pretrain(arch, load_data(cfg), cfg, train_cfg, device=pick_device(), progress=False)
    meta["seed"] = train_cfg.seed
    return {k: v.cpu() for k, v in model.state_dict().items()}, meta


def ensure_base(prep: Prepared) -> Path:
    """The base checkpoint: given, cached, or pretrained now as a Ray task and cached for later studies."""
    if prep.base_path is not None or prep.base_cache.is_file():
        return prep.base_cache
    spec = prep.spec
    assert spec.base.pretrain is not None
    print(f"pretraining the base {spec.resolved_arch} on {spec.dataset} ({spec.base.pretrain.epochs} epochs) as a Ray task; "
          f"cached at {prep.base_cache}", flush=True)
    cfg = dataclasses.replace(data_cfg(spec), limit_train=None, limit_val=None, limit_test=None)
    state, meta = run_where_gpu(pretrain_base, spec.resolved_arch, cfg, dataclasses.asdict(spec.base.pretrain),
                                cpus=spec.resources.cpu, driver_without_gpu=False)
    from trainables.models import build_model
    from trainables.pipeline import accuracy_line

    model = build_model(spec.resolved_arch, input_spec(prep.data))
    model.load_state_dict(state)
    save_checkpoint(prep.base_cache, model, meta)
    print(f"base model: {accuracy_line(meta)}", flush=True)
    return prep.base_cache


def score_base(spec: StudySpec, data: DataBundle, base_path: Path) -> dict[str, float]:
    """The undefended base on the trials' validation subset and eps grid: the reference line in the report."""
    from trainables.engine import pick_device, score_objective

    model = load_checkpoint(base_path, arch=spec.resolved_arch, dataset=spec.dataset).build()
    return score_objective(model, data.val, objective_cfg(spec), device=pick_device("cpu"), seed=spec.seed)


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


def run_study(spec: StudySpec, *, address: str | None = None, dashboard: bool = False,
              dashboard_host: str = "127.0.0.1") -> Path:
    phases = Phases()
    with phases("preflight"):  # data loading included
        prep = preflight(spec)
    # Connect before writing anything: a wrong --address must not leave a half-made study directory behind.
    with contextlib.ExitStack() as stack:
        with phases("ray_start"):
            stack.enter_context(ray_session(address, dashboard, dashboard_host))
        study_dir = spec.study_dir()
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(study_dir / "spec.yaml", spec.to_yaml())
        with phases("base"):  # pretrained now or read from the cache, and scored on the validation subset
            base_path = ensure_base(prep)
            atomic_write_text(study_dir / "base.json", json.dumps(
                {"path": str(base_path), "val": score_base(spec, prep.data, base_path)}, indent=2))
        tuner = build_tuner(spec, build_trainable(spec, prep.data, base_path))
        _print_watch_hints(spec)
        with phases("trials"):
            grid = tuner.fit()
        return finalize(spec, grid, base_path, phases)


def resume_study(study_dir: Path, *, address: str | None = None, dashboard: bool = False) -> Path:
    from ray import tune

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
        data = load_data(data_cfg(spec))
    with contextlib.ExitStack() as stack:
        with phases("ray_start"):
            stack.enter_context(ray_session(address, dashboard))
        tuner = tune.Tuner.restore(str(study_dir), trainable=build_trainable(spec, data, base_path),
                                   resume_unfinished=True, resume_errored=True)
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
        "dataset": spec.dataset,
        "objective": {"metric": spec.objective.metric, "split": "val", "val_limit": spec.objective.val_limit,
                      "measure": objective_measure(spec)},
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


def objective_measure(spec: StudySpec) -> str:
    """The objective in words, for the comparison with the base: which attack, how strong."""
    o = objective_cfg(spec)
    if o.metric is Objective.ROBUST_AUC:
        return (f"on the study's objective, robust AUC over eps {', '.join(f'{e:g}' for e in o.eps_grid)} "
                f"(PGD-{o.steps}, alpha = 2.5 eps / {o.steps})")
    reach = "" if o.alpha * o.steps >= o.eps else ", cannot reach eps"
    starts = f" x{o.restarts}" if o.restarts > 1 else ""
    return f"under the study's objective, PGD-{o.steps}{starts} at eps {o.eps:g} (alpha {o.alpha:g}{reach})"


def audit_measure(cfg: AuditCfg) -> str:
    """The audit's worst case in words: every attack it takes the worst of, AutoAttack's non-reference parts named."""
    strong = cfg.strong_pgd()
    aa = ""
    if cfg.autoattack:
        reference = AuditCfg(eps=cfg.eps)
        parts = [] if tuple(cfg.components) == reference.components else [", ".join(cfg.components)]
        if "square" in cfg.components and cfg.square_queries != reference.square_queries:
            parts.append(f"Square {cfg.square_queries} queries")
        aa = ", AutoAttack" + (f" ({'; '.join(parts)})" if parts else "")
    return (f"at the audit's worst case at eps {cfg.eps:g} (paper FGSM, IFGSM-10 and PGD-10, PGD-{strong.steps} x"
            f"{strong.restarts}{aa})")


def _audit_remote(ckpt_paths: list[str], base_path: str, cfg: DataCfg,
                  audit_cfgs: list[Any]) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Every checkpoint's audit reports (one list per checkpoint), and the base's attack rows on the same images
    (no masking checks) for the paired comparison; data and base are loaded once."""
    from trainables.engine import pick_device
    from trainables.pipeline import audit_model

    data = load_data(cfg)
    base = load_checkpoint(base_path).build()
    device = pick_device()
    print(f"auditing the base on {len(data.test)} test images (attacks only, for the comparison)", flush=True)
    base_reports = audit_model(base, data, "test", [dataclasses.replace(c, checks=False) for c in audit_cfgs],
                               device=device, progress=False)
    out = []
    for path in ckpt_paths:
        name = Path(path).name
        print(f"auditing {name} on {len(data.test)} test images at eps "
              + ", ".join(f"{c.eps:g}" for c in audit_cfgs), flush=True)

        def log(msg: str, name: str = name) -> None:
            print(f"audit {name}: {msg}", flush=True)

        out.append(audit_model(load_checkpoint(path).build(), data, "test", audit_cfgs, device=device, base=base,
                               progress=False, log=log))
    return out, base_reports


def audit_best(spec: StudySpec, entries: list[dict[str, Any]], base_path: Path) -> Path:
    """`patchtune audit` of each best trial's test checkpoint (strong attacks + masking checks) -> audit.json;
    each entry gains `vs_base.test`: its worst case against the base's, sample by sample, at every eps."""
    a = spec.audit
    cfgs = [AuditCfg(eps=e, strong_steps=a.strong_steps, strong_restarts=a.strong_restarts, autoattack=a.autoattack,
                     components=a.components, square_queries=a.square_queries, check_limit=a.check_limit, seed=spec.seed)
            for e in spec.audit_eps]
    cfg = dataclasses.replace(data_cfg(spec), limit_test=a.limit)
    args = ([e["checkpoint"] for e in entries], str(base_path), cfg, cfgs)
    per_entry, base_reports = run_where_gpu(_audit_remote, *args, cpus=spec.resources.cpu)
    audits = []
    for entry, reports in zip(entries, per_entry, strict=True):
        for rep in reports:
            print(f"audit of {entry['trial_id']}: eps {rep['eps']:g}: paper PGD-10 "
                  f"{100 * next(r['acc'] for r in rep['rows'] if r['name'] == 'paper_pgd10'):.2f} %, worst case "
                  f"{100 * rep['worst_case_acc']:.2f} %, masking checks {rep['verdict']}", flush=True)
        entry.setdefault("vs_base", {})["test"] = [
            versus_base.compare(decode_outcomes(rep["worst_case_mask"]), decode_outcomes(base_rep["worst_case_mask"]),
                                split="test", measure=audit_measure(cfg))
            for rep, base_rep, cfg in zip(reports, base_reports, cfgs, strict=True)]
        audits.append({"trial_id": entry["trial_id"], "checkpoint": entry["checkpoint"], "audits": reports,
                       "vs_base": entry["vs_base"]["test"]})
    path = spec.study_dir() / "audit.json"
    atomic_write_text(path, json.dumps({"study": spec.name, "base": str(base_path), "base_audits": base_reports,
                                        "trials": audits}, indent=2))
    return path


def _evaluate_remote(arch: str, cfg: DataCfg, state: dict[str, Any], attacks: list[Any], base_state: dict[str, Any],
                     objective: Any, seed: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The trial's weights on the test split, and the trial's and the base's per-sample objective on the
    validation subset (scored as the trials were: same attacks, seed and images)."""
    from trainables.engine import configure_backends, evaluate, pick_device
    from trainables.models import build_model
    from trainables.perf import prepare_model
    from trainables.pipeline import objective_samples

    data = load_data(cfg)
    device = pick_device()
    models = {}
    for who, weights in (("trial", state), ("base", base_state)):
        models[who] = build_model(arch, input_spec(data))
        models[who].load_state_dict(weights)
    model = prepare_model(models["trial"], device)
    acc = evaluate(model, data.test, attacks, device=device, autocast=configure_backends(device, exact=True))
    val = {who: objective_samples(m, data.val, objective, device=device, seed=seed) for who, m in models.items()}
    return ({"n": len(data.test), "device": str(device), "accuracy": {a.name.value: acc[a.label] for a in attacks},
             "attacks": {a.name.value: a.describe() for a in attacks}}, val)


def _plain(value: Any) -> Any:
    """A results cell as JSON: missing (NaN / None) as None, numpy scalars as Python numbers."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def evaluate_trial_on_test(spec: StudySpec, row: dict[str, Any], base_path: Path, rank: int) -> dict[str, Any]:
    """The trial's last checkpoint on the test split at the paper's attack parameters (as a Ray task)."""
    import torch

    ckpt_dirs = sorted(Path(row["path"]).glob("checkpoint_*"))
    if not ckpt_dirs:
        raise StudyError(f"trial {row['trial_id']} has no checkpoint in {row['path']}")
    state = torch.load(ckpt_dirs[-1] / "state.pt", map_location="cpu", weights_only=True)["model"]
    attacks = paper_attacks(spec.dataset_enum)
    base = load_checkpoint(base_path)
    test, val = run_where_gpu(_evaluate_remote, spec.resolved_arch, data_cfg(spec), state, attacks, base.state_dict,
                              objective_cfg(spec), spec.seed, cpus=spec.resources.cpu)
    from trainables.models import build_model

    model = build_model(spec.resolved_arch, base.input_spec())
    model.load_state_dict(state)
    path = spec.study_dir() / ("best.pt" if rank == 0 else f"best-{rank + 1}.pt")
    save_checkpoint(path, model, {
        **{k: base.meta.get(k) for k in ("arch", "dataset", "image_size", "data")},
        "kind": "finetune", "train": {"optimizer": row["optimizer"], "lr": row["lr"], "batch_size": row["batch_size"],
                                      "epochs": row["epochs"], "seed": row["seed"]},
        "defense": _plain(row.get("method")) or "patch",
        "method": {k: _plain(row.get(k)) for k in TRIAL_METHOD_KEYS},
        "augment": ({"pool": row["pool"], "patch_size": row["patch_size"], "num_patches": row["num_patches"]}
                    if isinstance(row.get("pool"), str) else None),
        "study": spec.name, "trial_id": row["trial_id"], "test_acc": test["accuracy"]["clean"],
    })
    print(f"best trial {row['trial_id']} ({row['optimizer']}, lr {row['lr']:.2e}): test " +
          ", ".join(f"{k} {100 * v:.2f}%" for k, v in test["accuracy"].items()), flush=True)
    return {
        "trial_id": row["trial_id"],
        "optuna_number": row.get("optuna_number"),
        "config": {k: _plain(row.get(k)) for k in TRIAL_CONFIG_KEYS},
        "val": {k: row.get(k) for k in ("objective", "val_clean_acc", "val_pgd_acc", "val_paper_pgd_acc", "val_robust_auc")},
        "test": test,
        "vs_base": {"val": versus_base.compare(val["trial"], val["base"], split="val", measure=objective_measure(spec))},
        "checkpoint": str(path),
    }

