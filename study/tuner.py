"""Assembles the Tune experiment of a study: trainable, Optuna searcher, scheduler and Tuner. No side effects."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import optuna

from analysis.load import open_optuna_storage
from study import tracking
from study.preflight import objective_cfg
from study.spec import StudySpec
from trainables.checkpoint import load_checkpoint
from trainables.data import DataBundle
from trainables.vocab import EXTRA_OBJECTIVE_METRICS, Objective, SamplerType, SchedulerType

OBJECTIVE = "objective"


def _resources(spec: StudySpec) -> dict[str, float]:
    return {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}


def build_trainable(spec: StudySpec, data: DataBundle, base_path: Path) -> Any:
    from ray import tune

    from trainables.pipeline import TrialSetup
    from trainables.trainable import finetune_trial

    base = load_checkpoint(base_path, arch=spec.resolved_arch, dataset=spec.dataset)
    setup = TrialSetup(arch=spec.resolved_arch, info=data.info, train=data.train, val=data.val,
                       base_state=base.state_dict, objective=objective_cfg(spec), jitter=spec.search.jitter)
    return tune.with_resources(tune.with_parameters(finetune_trial, setup=setup), _resources(spec))


def build_searcher(spec: StudySpec) -> Any:
    from study.searcher import StudySearch
    from study.spaces import define_space

    seed = spec.sampler_seed
    if spec.sampler.type == SamplerType.TPE:
        # group=True is what makes multivariate TPE handle a conditional space; Optuna flags it experimental.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, n_startup_trials=spec.sampler.n_startup_trials)
    elif spec.sampler.type == SamplerType.RANDOM:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
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
        metric_names=[f"val_{Objective(spec.objective.metric).value}", *(m for m, _ in extra)],  # the results' columns
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
        if spec.scheduler.type == SchedulerType.ASHA else FIFOScheduler()  # type: ignore[no-untyped-call]
    )
    # metric/mode stay off TuneConfig: Tune would pass them to the searcher's set_search_properties, replacing a
    # multi-objective searcher's list of metrics with the single one.
    tune_config = tune.TuneConfig(search_alg=build_searcher(spec), scheduler=scheduler, num_samples=spec.num_samples,
                                  max_concurrent_trials=spec.max_concurrent, trial_dirname_creator=trial_dirname,
                                  trial_name_creator=trial_dirname,
                                  # a finished trial's worker process takes the next trial: no new process,
                                  # torch import and object-store fetch per trial
                                  reuse_actors=True)
    run_config = tune.RunConfig(
        name=spec.name,
        storage_path=str(spec.study_dir().parent),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=tracking.callbacks(spec),
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default packs every parameter into the name), and the trials' names
    (Tune's progress table, MLflow's run names) the same."""
    return f"trial_{trial.trial_id}"

