"""Assembles Tune experiments: the one `tune.Tuner` construction (`make_tuner`), which a study (an Optuna searcher
and a scheduler over its trials) and a reproduction (a grid of cells) both go through. No side effects."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.load import open_optuna_storage
from study import tracking
from study.settings import ResourcesCfg
from study.spec import StudySpec
from trainables.checkpoint import load_checkpoint
from trainables.data import DataBundle
from trainables.vocab import EXTRA_OBJECTIVE_METRICS, SchedulerType

OBJECTIVE = "objective"


def make_tuner(trainable: Callable[..., Any], resources: ResourcesCfg, *, name: str, storage_path: Path,
               max_failures: int, param_space: Mapping[str, Any] | None = None, search_alg: Any = None,
               scheduler: Any = None, num_samples: int = 1, max_concurrent: int = 0, keep_checkpoints: int | None = None,
               callbacks: Sequence[Any] = (), short_names: bool = False) -> Any:
    """A Tuner of `trainable` (its parameters already bound), each trial reserving `resources`, writing to
    STORAGE_PATH/NAME, retried up to `max_failures` times from its last checkpoint. Worker processes are reused
    across trials (no new process, torch import and object-store fetch per trial)."""
    # Snapshot the experiment at least every 2 s (Tune's "auto" can stretch to minutes): what a driver crash
    # can lose is what happened since the last snapshot. Set the variable yourself to trade this off.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    from ray import tune

    names: dict[str, Any] = {"trial_dirname_creator": trial_dirname, "trial_name_creator": trial_dirname} if short_names else {}
    # metric/mode stay off TuneConfig: Tune would pass them to the searcher's set_search_properties, replacing a
    # multi-objective searcher's list of metrics with the single one.
    tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                  max_concurrent_trials=max_concurrent or None, reuse_actors=True, **names)
    run_config = tune.RunConfig(name=name, storage_path=str(storage_path),
                                failure_config=tune.FailureConfig(max_failures=max_failures),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
                                callbacks=list(callbacks))
    return tune.Tuner(with_resources(trainable, resources),
                      param_space=dict(param_space) if param_space is not None else None, tune_config=tune_config,
                      run_config=run_config)


def with_resources(trainable: Callable[..., Any], resources: ResourcesCfg) -> Any:
    """`trainable` reserving `resources` per trial (what a Tuner, new or restored, runs)."""
    from ray import tune

    return tune.with_resources(trainable, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})


def study_trainable(spec: StudySpec, data: DataBundle, base_path: Path) -> Any:
    """The study's trial function with its read-only inputs bound (through the object store, once per worker)."""
    from ray import tune

    from trainables.trainable import finetune_trial
    from trainables.trial import TrialSetup

    base = load_checkpoint(base_path, arch=spec.arch, dataset=spec.data.dataset)
    setup = TrialSetup(arch=spec.arch, info=data.info, train=data.train, val=data.val, base_state=base.state_dict,
                       objective=spec.objective, jitter=spec.search.jitter, channels=base.channels)
    return tune.with_parameters(finetune_trial, setup=setup)


def build_searcher(spec: StudySpec) -> Any:
    from study.samplers import make_sampler
    from study.searcher import StudySearch
    from study.spaces import define_space

    sampler = make_sampler(spec.sampler, spec.sampler_seed)
    extra = [EXTRA_OBJECTIVE_METRICS[e] for e in spec.objective.extra_objectives]
    space = functools.partial(define_space, search=spec.search, constants={"epochs": spec.epochs, "seed": spec.seed})
    return StudySearch(
        space=space,
        metric=[OBJECTIVE, *(m for m, _ in extra)] if extra else OBJECTIVE,
        mode=["max", *(d for _, d in extra)] if extra else "max",
        sampler=sampler,
        study_name=spec.name,
        storage=open_optuna_storage(spec.optuna_url()),
        epochs=spec.epochs,
        metric_names=[f"val_{spec.objective.metric.value}", *(m for m, _ in extra)],  # the results' columns
    )


def study_tuner(spec: StudySpec, trainable: Any) -> Any:
    """The study's Tuner (`spec` resolved): its Optuna searcher, its scheduler, its trials and tracking."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    scheduler = (
        ASHAScheduler(metric=OBJECTIVE, mode="max", max_t=spec.epochs, grace_period=spec.scheduler.grace_period,
                      reduction_factor=spec.scheduler.reduction_factor)
        if spec.scheduler.type is SchedulerType.ASHA else FIFOScheduler()  # type: ignore[no-untyped-call]
    )
    return make_tuner(trainable, spec.resources, name=spec.name, storage_path=spec.study_dir().parent,
                      max_failures=spec.max_failures, search_alg=build_searcher(spec), scheduler=scheduler,
                      num_samples=spec.num_samples, max_concurrent=spec.max_concurrent, keep_checkpoints=2,
                      callbacks=tracking.callbacks(spec), short_names=True)


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default packs every parameter into the name), and the trials' names
    (Tune's progress table, MLflow's run names) the same."""
    return f"trial_{trial.trial_id}"
