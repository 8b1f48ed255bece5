"""Builds and runs the study: pre-flight checks, the base model, the Tuner, and the study's result files.

This is the only module that calls `ray.init` or builds a `tune.Tuner`. Everything a user can get wrong is
checked in `preflight()` before Ray starts. A study directory (`<storage>/<name>/`) holds:

    spec.yaml          the resolved spec          optuna.db         Optuna storage (default)
    base.json          which base checkpoint      results.parquet   one row per trial (config, metrics, states)
    epochs.parquet     one row per trial-epoch    best.json         best trial(s) on the test split
    best.pt            the best trial's weights   <Tune files>      tuner.pkl, trial dirs, TensorBoard events
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from study.spec import StudySpec, parse_spec
from trainables.atomic import atomic_open, atomic_write_text
from trainables.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainables.config import ConfigError, DataCfg, ObjectiveCfg, paper_attacks
from trainables.data import DataBundle, load_data
from trainables.pipeline import input_spec

log = logging.getLogger("patchtune")
OBJECTIVE = "objective"


class StudyError(RuntimeError):
    """A study cannot start or resume (a user-facing, one-line problem)."""


# ------------------------------------------------------------------------------------------- pre-flight


@dataclasses.dataclass
class Prepared:
    spec: StudySpec
    data: DataBundle
    base_path: Path | None  # None: the base is pretrained first (cached at `base_cache`)
    base_cache: Path


def data_cfg(spec: StudySpec) -> DataCfg:
    return DataCfg(dataset=spec.dataset_enum, root=spec.data.root, val_fraction=spec.data.val_fraction,
                   split_seed=spec.data.split_seed, limit_train=spec.data.limit_train,
                   limit_val=spec.objective.val_limit, limit_test=spec.data.limit_test, image_size=spec.data.image_size)


def objective_cfg(spec: StudySpec) -> ObjectiveCfg:
    o = spec.objective
    return ObjectiveCfg(metric=o.metric, eps=spec.objective_eps, alpha=o.alpha, steps=o.steps, eps_grid=o.eps_grid)


def base_cache_path(spec: StudySpec) -> Path:
    """Pretrained bases are cached by everything that determines them, so studies share them."""
    assert spec.base.pretrain is not None
    key = {"arch": spec.resolved_arch, "dataset": spec.dataset, "pretrain": dataclasses.asdict(spec.base.pretrain),
           "val_fraction": spec.data.val_fraction, "split_seed": spec.data.split_seed, "image_size": spec.data.image_size}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(spec.storage).expanduser().resolve() / "_bases" / f"{spec.dataset}-{spec.resolved_arch}-{digest}.pt"


def _check_writable(path: Path, what: str) -> None:
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise StudyError(f"{what} {path} cannot be created: {ancestor} is not a writable directory")


def check_optuna_storage(spec: StudySpec, *, fresh: bool) -> None:
    """The storage opens, and (for a new study) holds no study of this name; never a silent reuse."""
    url = spec.optuna_url()
    if url.startswith("sqlite:///") and spec.optuna_storage is None:
        return  # the default lives inside the new study directory, which is checked to be absent
    try:
        storage = make_optuna_storage(url)
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as exc:
        raise StudyError(f"optuna_storage {url!r} cannot be opened: {str(exc).splitlines()[0][:200]}") from None
    wanted = 2 if spec.objective.multi_objective else 1
    for summary in summaries:
        if summary.study_name != spec.name:
            continue
        if len(summary.directions) != wanted:
            raise StudyError(f"Optuna study {spec.name!r} in {url} has {len(summary.directions)} objective(s), "
                             f"this spec has {wanted}; choose another name")
        if fresh:
            raise StudyError(f"Optuna study {spec.name!r} already exists in {url}; choose another --name "
                             "(or `patchtune resume` its study directory)")


def make_optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """SQLAlchemy URL -> RDBStorage; `journal:PATH` -> JournalStorage on a file (NFS-friendly)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url)


def preflight(spec: StudySpec) -> Prepared:
    """Validate data, base checkpoint and storage for a new study, writing nothing."""
    study_dir = spec.study_dir()
    if study_dir.exists() and any(study_dir.iterdir()):
        raise StudyError(f"study directory {study_dir} already exists; `patchtune resume {study_dir}` continues it, "
                         "or choose another --name / --storage")
    _check_writable(study_dir, "study directory")
    if spec.optuna_storage and spec.optuna_storage.startswith("journal:"):
        _check_writable(Path(spec.optuna_storage.removeprefix("journal:")).expanduser(), "journal file")
    if spec.data.root is not None and not Path(spec.data.root).is_dir():
        raise StudyError(f"data.root {spec.data.root!r} is not a directory")
    check_optuna_storage(spec, fresh=True)
    base_path = None
    if spec.base.checkpoint is not None:
        base_path = Path(spec.base.checkpoint).expanduser().resolve()
        try:
            load_checkpoint(base_path, arch=spec.resolved_arch, dataset=spec.dataset)
        except CheckpointError as exc:
            raise StudyError(f"base.checkpoint: {exc}") from None
    data = load_data(data_cfg(spec))
    lo = spec.search.patch_size[1]
    if lo > min(data.info.height, data.info.width):
        raise StudyError(f"search.patch_size {lo} is larger than the {data.info.height}x{data.info.width} images")
    return Prepared(spec, data, base_path, base_cache_path(spec) if base_path is None else base_path)


# ------------------------------------------------------------------------------------------- Ray pieces


def _ray_init(address: str | None, dashboard: bool, dashboard_host: str = "127.0.0.1") -> None:
    import ray

    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING}
    if address:
        _probe(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StudyError(f"--address {address!r}: cannot connect to a Ray cluster there "
                             f"({str(exc).splitlines()[0][:160]})") from None
        return
    # A fresh local instance ("local" ignores a stale ray_current_cluster file). The dashboard binds to
    # 127.0.0.1 only: Ray's Jobs API runs code for whoever reaches it (CVE-2023-48022).
    context = ray.init(address="local", include_dashboard=dashboard, dashboard_host=dashboard_host, **kwargs)
    if dashboard:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (ray.init would retry for minutes first)."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them itself, and fails fast when there is nothing
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise StudyError(f"--address {address!r}: nothing answers at {host}:{port} ({exc.strerror or exc})") from None


def _resources(spec: StudySpec) -> dict[str, float]:
    return {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}


def _gpus_for_task() -> float:
    """One GPU for the one-off tasks (pretraining, test evaluation) when the cluster has any."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))  # type: ignore[no-untyped-call]
    return 1.0 if gpus >= 1 else 0.0


def _pretrain_remote(arch: str, cfg: DataCfg, pretrain: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs as a Ray task on whichever node gets it (a GPU one when the cluster has GPUs)."""
    from trainables.engine import pick_device
    from trainables.pipeline import default_train_cfg
    from trainables.pipeline import pretrain as run_pretrain

    limit = pretrain.pop("limit_train", None)
    data = load_data(dataclasses.replace(cfg, limit_train=limit, limit_val=None, limit_test=None))
    train_cfg = default_train_cfg(arch, finetune=False, **pretrain)
    model, meta = run_pretrain(arch, data, cfg, train_cfg, device=pick_device(), progress=False)
    meta["seed"] = train_cfg.seed
    return {k: v.cpu() for k, v in model.state_dict().items()}, meta


def ensure_base(prep: Prepared) -> Path:
    """The base checkpoint: given, cached, or pretrained now as a Ray task and cached for later studies."""
    import ray

    if prep.base_path is not None or prep.base_cache.is_file():
        return prep.base_cache
    spec = prep.spec
    assert spec.base.pretrain is not None
    print(f"pretraining the base {spec.resolved_arch} on {spec.dataset} ({spec.base.pretrain.epochs} epochs) as a Ray task; "
          f"cached at {prep.base_cache}", flush=True)
    task = ray.remote(num_cpus=max(1.0, spec.resources.cpu), num_gpus=_gpus_for_task())(_pretrain_remote)
    cfg = dataclasses.replace(data_cfg(spec), limit_train=None, limit_val=None, limit_test=None)
    state, meta = ray.get(task.remote(spec.resolved_arch, cfg, dataclasses.asdict(spec.base.pretrain)))
    from trainables.models import build_model

    model = build_model(spec.resolved_arch, input_spec(prep.data))
    model.load_state_dict(state)
    save_checkpoint(prep.base_cache, model, meta)
    print(f"base model: val acc {meta['val_acc']:.4f}, test acc {meta['test_acc']:.4f}", flush=True)
    return prep.base_cache


def score_base(spec: StudySpec, data: DataBundle, base_path: Path) -> dict[str, float]:
    """The undefended base on the trials' validation subset and eps grid: the reference line in the report."""
    from trainables.engine import pick_device, score_objective

    model = load_checkpoint(base_path, arch=spec.resolved_arch, dataset=spec.dataset).build()
    return score_objective(model, data.val, objective_cfg(spec), device=pick_device("cpu"), seed=spec.seed)


def build_trainable(spec: StudySpec, data: DataBundle, base_path: Path) -> Any:
    from ray import tune

    from trainables.trainable import TrialSetup, finetune_trial

    base = load_checkpoint(base_path, arch=spec.resolved_arch, dataset=spec.dataset)
    setup = TrialSetup(arch=spec.resolved_arch, info=data.info, train=data.train, val=data.val,
                       base_state=base.state_dict, objective=objective_cfg(spec), jitter=spec.search.jitter)
    return tune.with_resources(tune.with_parameters(finetune_trial, setup=setup), _resources(spec))


def build_searcher(spec: StudySpec) -> Any:
    from study.searcher import StudySearch
    from study.spaces import define_space

    seed = spec.sampler_seed
    if spec.sampler.type == "tpe":
        # group=True is what makes multivariate TPE handle a conditional space; Optuna flags it experimental.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, n_startup_trials=spec.sampler.n_startup_trials)
    elif spec.sampler.type == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    multi = spec.objective.multi_objective
    space = functools.partial(define_space, search=spec.search, constants={"epochs": spec.epochs, "seed": spec.seed})
    return StudySearch(
        space=space,
        metric=[OBJECTIVE, "val_clean_acc"] if multi else OBJECTIVE,
        mode=["max", "max"] if multi else "max",
        sampler=sampler,
        study_name=spec.name,
        storage=make_optuna_storage(spec.optuna_url()),
        epochs=spec.epochs,
    )


def build_tuner(spec: StudySpec, trainable: Any) -> Any:
    # Snapshot the experiment at least every 2 s (Tune's "auto" can stretch to minutes): what a driver crash
    # can lose is what happened since the last snapshot. Set the variable yourself to trade this off.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    scheduler = (
        ASHAScheduler(metric=OBJECTIVE, mode="max", max_t=spec.epochs, grace_period=spec.scheduler.grace_period,
                      reduction_factor=spec.scheduler.reduction_factor)
        if spec.scheduler.type == "asha" else FIFOScheduler()  # type: ignore[no-untyped-call]
    )
    # metric/mode stay off TuneConfig: set there they would overwrite a multi-objective searcher's (G4).
    tune_config = tune.TuneConfig(search_alg=build_searcher(spec), scheduler=scheduler, num_samples=spec.num_samples,
                                  max_concurrent_trials=spec.max_concurrent, trial_dirname_creator=trial_dirname,
                                  # a finished trial's worker process takes the next trial: no new process,
                                  # torch import and object-store fetch per trial
                                  reuse_actors=True)
    run_config = tune.RunConfig(
        name=spec.name,
        storage_path=str(spec.study_dir().parent),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


# ------------------------------------------------------------------------------------------- run / resume


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default packs every parameter into the name)."""
    return f"trial_{trial.trial_id}"


def run_study(spec: StudySpec, *, address: str | None = None, dashboard: bool = False,
              dashboard_host: str = "127.0.0.1") -> Path:
    prep = preflight(spec)
    import ray

    # Connect before writing anything: a wrong --address must not leave a half-made study directory behind.
    _ray_init(address, dashboard, dashboard_host)
    try:
        study_dir = spec.study_dir()
        study_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(study_dir / "spec.yaml", spec.to_yaml())
        base_path = ensure_base(prep)
        atomic_write_text(study_dir / "base.json", json.dumps(
            {"path": str(base_path), "val": score_base(spec, prep.data, base_path)}, indent=2))
        tuner = build_tuner(spec, build_trainable(spec, prep.data, base_path))
        _print_watch_hints(spec)
        grid = tuner.fit()
        return finalize(spec, grid, base_path)
    finally:
        ray.shutdown()


def load_study_spec(study_dir: Path) -> StudySpec:
    import yaml

    path = study_dir / "spec.yaml"
    if not path.is_file():
        raise StudyError(f"{study_dir} is not a patchtune study directory (no spec.yaml)")
    try:
        return parse_spec(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ConfigError) as exc:
        raise StudyError(f"{path} is unreadable: {exc}") from None


def resume_study(study_dir: Path, *, address: str | None = None, dashboard: bool = False) -> Path:
    from ray import tune

    study_dir = study_dir.expanduser().resolve()
    spec = load_study_spec(study_dir)
    if not tune.Tuner.can_restore(str(study_dir)):
        raise StudyError(f"{study_dir} holds no Tune experiment state to resume (was it started?)")
    base_json = study_dir / "base.json"
    base_path = Path(json.loads(base_json.read_text())["path"]) if base_json.is_file() else None
    if base_path is None or not base_path.is_file():
        raise StudyError(f"the base checkpoint of {study_dir} is missing ({base_path}); the study cannot resume")
    check_optuna_storage(spec, fresh=False)
    data = load_data(data_cfg(spec))
    import ray

    _ray_init(address, dashboard)
    try:
        tuner = tune.Tuner.restore(str(study_dir), trainable=build_trainable(spec, data, base_path),
                                   resume_unfinished=True, resume_errored=True)
        _print_watch_hints(spec)
        return finalize(spec, tuner.fit(), base_path)
    finally:
        ray.shutdown()


def _print_watch_hints(spec: StudySpec) -> None:
    d = spec.study_dir()
    print(f"study directory: {d}\n  TensorBoard:      tensorboard --logdir {d}\n"
          f"  optuna-dashboard: optuna-dashboard {spec.optuna_url()}", flush=True)


# ------------------------------------------------------------------------------------------- results


def optuna_trials(spec: StudySpec) -> pd.DataFrame:
    """Optuna's view: number, state, value(s), params, ray_trial_id and error per trial."""
    study = optuna.load_study(study_name=spec.name, storage=make_optuna_storage(spec.optuna_url()))
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "optuna_number": t.number,
            "optuna_state": t.state.name,
            "optuna_value": t.values[0] if t.values else None,
            "trial_id": t.user_attrs.get("ray_trial_id"),
            "optuna_error": t.user_attrs.get("error"),
            **{f"param_{k}": v for k, v in t.params.items()},
        })
    return pd.DataFrame(rows)


def collect_results(spec: StudySpec, grid: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results: one row per trial, epochs: one row per trial and epoch) from a ResultGrid + Optuna."""
    rows, epochs = [], []
    for result in grid:
        config = dict(result.config or {})
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        if history is not None and len(history):
            h = history.copy()
            h["trial_id"] = trial_id
            epochs.append(h)
        rows.append({
            "trial_id": trial_id,
            **{k: config.get(k) for k in ("optimizer", "lr", "batch_size", "patch_size", "num_patches", "pool", "epochs", "seed")},
            **{f"pool_{op}": op in str(config.get("pool", "")).split(",") for op in spec.search.pool},
            "epochs_done": int(metrics.get("training_iteration", 0) or 0),
            **{k: metrics.get(k) for k in ("objective", "val_clean_acc", "val_pgd_acc", "val_robust_auc", "train_loss")},
            "error": metrics.get("error") or (str(result.error).splitlines()[0][:500] if result.error else ""),
            "node_id": metrics.get("node_id"),
            "device": metrics.get("device"),
            "path": str(result.path),
        })
    results = pd.DataFrame(rows)
    ot = optuna_trials(spec)
    if len(results) and len(ot):
        results = results.merge(ot, on="trial_id", how="left")
    if len(results):
        results["status"] = [_status(r) for r in results.to_dict("records")]
    history = pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()
    if len(history):
        # An epoch replayed after a driver crash (finished after the last snapshot) is counted once.
        history = history.drop_duplicates(["trial_id", "training_iteration"], keep="last").reset_index(drop=True)
    return results, history


def _status(row: dict[str, Any]) -> str:
    if row.get("error") or row.get("optuna_state") == "FAIL":
        return "FAILED"
    if row.get("optuna_state") == "PRUNED":
        return "PRUNED"
    if row.get("epochs_done", 0) >= (row.get("epochs") or math.inf):
        return "COMPLETE"
    return "INCOMPLETE"


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        frame.to_parquet(f, index=False)


def finalize(spec: StudySpec, grid: Any, base_path: Path) -> Path:
    """Write results.parquet / epochs.parquet, evaluate the best trial(s) on the test split, write best.json."""
    study_dir = spec.study_dir()
    results, epochs = collect_results(spec, grid)
    _write_parquet(results, study_dir / "results.parquet")
    _write_parquet(epochs, study_dir / "epochs.parquet")
    finished = results[results["status"] == "COMPLETE"] if len(results) else results
    if len(results) < spec.num_samples or (len(results) and (results["status"] == "INCOMPLETE").any()):
        print(f"study incomplete: {int((results['status'] != 'INCOMPLETE').sum()) if len(results) else 0} of "
              f"{spec.num_samples} trials finished. Continue with:  patchtune resume {study_dir}", flush=True)
        return study_dir
    if not len(finished):
        print("no trial completed its fine-tuning budget; nothing to evaluate on the test split", flush=True)
        return study_dir
    best = finished.sort_values("objective", ascending=False).head(spec.best_trials)
    entries = [evaluate_trial_on_test(spec, row, base_path, rank) for rank, row in enumerate(best.to_dict("records"))]
    payload = {
        "study": spec.name,
        "dataset": spec.dataset,
        "objective": {"metric": spec.objective.metric, "split": "val", "val_limit": spec.objective.val_limit},
        "test_split": {"n": entries[0]["test"]["n"], "attacks": entries[0]["test"]["attacks"]},
        "trials": entries,
    }
    atomic_write_text(study_dir / "best.json", json.dumps(payload, indent=2, default=str))
    if spec.audit.enabled:
        audit_best(spec, entries, base_path)
    return study_dir


def _audit_remote(ckpt_paths: list[str], base_path: str, cfg: DataCfg,
                  audit_cfgs: list[Any]) -> list[list[dict[str, Any]]]:
    """Every checkpoint's audit reports, one list per checkpoint; data and base are loaded once."""
    from trainables.engine import pick_device
    from trainables.pipeline import audit_model

    data = load_data(cfg)
    base = load_checkpoint(base_path).build()
    device = pick_device()
    out = []
    for path in ckpt_paths:
        name = Path(path).name
        print(f"auditing {name} on {len(data.test)} test images at eps "
              + ", ".join(f"{c.eps:g}" for c in audit_cfgs), flush=True)

        def log(msg: str, name: str = name) -> None:
            print(f"audit {name}: {msg}", flush=True)

        out.append(audit_model(load_checkpoint(path).build(), data, "test", audit_cfgs, device=device, base=base,
                               progress=False, log=log))
    return out


def audit_best(spec: StudySpec, entries: list[dict[str, Any]], base_path: Path) -> Path:
    """`patchtune audit` of each best trial's test checkpoint (strong attacks + masking checks) -> audit.json."""
    import ray

    from trainables.audit import AuditCfg

    a = spec.audit
    cfgs = [AuditCfg(eps=e, strong_steps=a.strong_steps, strong_restarts=a.strong_restarts, autoattack=a.autoattack,
                     components=a.components, check_limit=a.check_limit, seed=spec.seed) for e in spec.audit_eps]
    cfg = dataclasses.replace(data_cfg(spec), limit_test=a.limit)
    args = ([e["checkpoint"] for e in entries], str(base_path), cfg, cfgs)
    if _gpus_for_task():
        task = ray.remote(num_cpus=max(1.0, spec.resources.cpu), num_gpus=1)(_audit_remote)
        per_entry = ray.get(task.remote(*args))
    else:  # no GPU anywhere: the driver is as good a place as any worker
        per_entry = _audit_remote(*args)
    audits = []
    for entry, reports in zip(entries, per_entry, strict=True):
        for rep in reports:
            print(f"audit of {entry['trial_id']}: eps {rep['eps']:g}: paper PGD-10 "
                  f"{100 * next(r['acc'] for r in rep['rows'] if r['name'] == 'paper_pgd10'):.2f} %, worst case "
                  f"{100 * rep['worst_case_acc']:.2f} %, masking checks {rep['verdict']}", flush=True)
        audits.append({"trial_id": entry["trial_id"], "checkpoint": entry["checkpoint"], "audits": reports})
    path = spec.study_dir() / "audit.json"
    atomic_write_text(path, json.dumps({"study": spec.name, "base": str(base_path), "trials": audits}, indent=2))
    return path


def _evaluate_remote(arch: str, cfg: DataCfg, state: dict[str, Any], attacks: list[Any]) -> dict[str, Any]:
    from trainables.engine import configure_backends, evaluate, pick_device
    from trainables.models import build_model
    from trainables.perf import prepare_model

    data = load_data(cfg)
    device = pick_device()
    model = build_model(arch, input_spec(data))
    model.load_state_dict(state)
    prepare_model(model, device)
    acc = evaluate(model, data.test, attacks, device=device, autocast=configure_backends(device))
    return {"n": len(data.test), "device": str(device), "accuracy": {a.name.value: acc[a.label] for a in attacks},
            "attacks": {a.name.value: a.describe() for a in attacks}}


def evaluate_trial_on_test(spec: StudySpec, row: dict[str, Any], base_path: Path, rank: int) -> dict[str, Any]:
    """The trial's last checkpoint on the test split at the paper's attack parameters (as a Ray task)."""
    import ray
    import torch

    ckpt_dirs = sorted(Path(row["path"]).glob("checkpoint_*"))
    if not ckpt_dirs:
        raise StudyError(f"trial {row['trial_id']} has no checkpoint in {row['path']}")
    state = torch.load(ckpt_dirs[-1] / "state.pt", map_location="cpu", weights_only=True)["model"]
    attacks = paper_attacks(spec.dataset_enum)
    cfg = data_cfg(spec)
    if _gpus_for_task():
        task = ray.remote(num_cpus=max(1.0, spec.resources.cpu), num_gpus=1)(_evaluate_remote)
        test = ray.get(task.remote(spec.resolved_arch, cfg, state, attacks))
    else:  # no GPU anywhere: the driver already holds the data, a worker would only add start-up time
        test = _evaluate_remote(spec.resolved_arch, cfg, state, attacks)
    base = load_checkpoint(base_path)
    from trainables.models import build_model

    model = build_model(spec.resolved_arch, base.input_spec())
    model.load_state_dict(state)
    path = spec.study_dir() / ("best.pt" if rank == 0 else f"best-{rank + 1}.pt")
    save_checkpoint(path, model, {
        **{k: base.meta.get(k) for k in ("arch", "dataset", "image_size", "data")},
        "kind": "finetune", "train": {"optimizer": row["optimizer"], "lr": row["lr"], "batch_size": row["batch_size"],
                                      "epochs": row["epochs"], "seed": row["seed"]},
        "augment": {"pool": row["pool"], "patch_size": row["patch_size"], "num_patches": row["num_patches"]},
        "study": spec.name, "trial_id": row["trial_id"], "test_acc": test["accuracy"]["clean"],
    })
    print(f"best trial {row['trial_id']} ({row['optimizer']}, lr {row['lr']:.2e}): test " +
          ", ".join(f"{k} {100 * v:.2f}%" for k, v in test["accuracy"].items()), flush=True)
    return {
        "trial_id": row["trial_id"],
        "optuna_number": row.get("optuna_number"),
        "config": {k: row.get(k) for k in ("optimizer", "lr", "batch_size", "patch_size", "num_patches", "pool", "epochs", "seed")},
        "val": {k: row.get(k) for k in ("objective", "val_clean_acc", "val_pgd_acc", "val_robust_auc")},
        "test": test,
        "checkpoint": str(path),
    }


def status_table(study_dir: Path) -> str:
    """A one-screen summary from the study's files (works while the study runs)."""
    study_dir = study_dir.expanduser().resolve()
    spec = load_study_spec(study_dir)
    lines = [f"study {spec.name} ({spec.dataset}, {spec.resolved_arch}), objective {spec.objective.metric}, "
             f"{spec.num_samples} trials requested — {study_dir}"]
    try:
        ot = optuna_trials(spec)
    except Exception as exc:  # storage missing while the study has not started
        ot = pd.DataFrame()
        lines.append(f"(Optuna storage not readable yet: {str(exc).splitlines()[0][:120]})")
    if len(ot):
        counts = ot["optuna_state"].value_counts().to_dict()
        lines.append("Optuna states: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        cols = [c for c in ("optuna_number", "optuna_state", "optuna_value", "param_optimizer", "param_batch_size",
                            "param_patch_size", "trial_id", "optuna_error") if c in ot.columns]
        with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 40):
            lines.append(ot[cols].to_string(index=False))
    best = study_dir / "best.json"
    if best.is_file():
        payload = json.loads(best.read_text())
        for entry in payload["trials"]:
            acc = ", ".join(f"{k} {100 * v:.2f}%" for k, v in entry["test"]["accuracy"].items())
            lines.append(f"best trial {entry['trial_id']}: test ({entry['test']['n']} images) {acc}")
        audit = study_dir / "audit.json"
        if audit.is_file():
            for trial in json.loads(audit.read_text())["trials"]:
                for rep in trial["audits"]:
                    lines.append(f"audit of {trial['trial_id']}: eps {rep['eps']:g}, {rep['n']} test images: worst case "
                                 f"{100 * rep['worst_case_acc']:.2f}% over paper + strong attacks, masking checks {rep['verdict']}")
    elif (study_dir / "results.parquet").is_file():
        lines.append("results.parquet written; no best.json (study incomplete or no trial completed)")
    else:
        lines.append(f"running or interrupted; `patchtune resume {study_dir}` continues an interrupted study")
    return "\n".join(lines)
