"""The Optuna sampler a study's `sampler:` settings name, built in one place: the study's searcher
(study/tuner.py) and the search benchmark's replay (benchmarks/replay.py) propose trials with the same object."""

from __future__ import annotations

import warnings

import optuna

from study.settings import SamplerCfg
from trainables.vocab import SamplerType


def make_sampler(cfg: SamplerCfg, seed: int) -> optuna.samplers.BaseSampler:
    """`cfg`'s sampler, seeded. Multivariate TPE is grouped: `group=True` is what lets it model a conditional
    space (a method's own parameters, the patch parameters only with the augmentation) jointly."""
    with warnings.catch_warnings():  # Optuna flags multivariate/group TPE and the GP sampler experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.type is SamplerType.TPE:
            return optuna.samplers.TPESampler(seed=seed, multivariate=cfg.multivariate, group=cfg.multivariate,
                                              n_startup_trials=cfg.n_startup_trials)
        if cfg.type is SamplerType.RANDOM:
            return optuna.samplers.RandomSampler(seed=seed)
        if cfg.type is SamplerType.GP:
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials,
                                             warn_independent_sampling=False)  # patchtune's space is conditional
        return optuna.samplers.NSGAIISampler(seed=seed)
