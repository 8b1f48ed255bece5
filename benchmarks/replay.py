"""A study replayed on the search table (benchmarks/search_table.py) on a simulated clock: hours of study in
milliseconds. No training, no Ray: the pure part of the search benchmark, tested directly (tests/test_replay.py).

The replay runs what a study runs, with the table standing in for training:
  - the sampler is the study's (`study.samplers.make_sampler`), asked through the study's own define-by-run space
    (`study.spaces.define_space`), told what `study.searcher.StudySearch` tells it (intermediate values every epoch;
    COMPLETE at the last epoch, PRUNED when stopped early, FAIL when the trial diverged);
  - the scheduler is FIFO, or `Asha`: Ray Tune's ASHAScheduler (one bracket, stop_last_trials), decision for
    decision (a test replays a real study's epochs.parquet through both and through what Tune did);
  - `max_concurrent` workers: each starts a trial when it is free, so up to that many proposals are made before the
    trials before them report, as in Tune; each trial epoch takes the seconds the table measured for it (training and
    scoring).
The table holds a fixed design of configurations, so each proposal is answered by the nearest configuration of the
table not yet run (the distance: per parameter, 1 for a differing category or a parameter only one of the two has,
else the difference over the parameter's range, in log space for a log-scale one). Tabular benchmarks restrict a
search the same way; the nearer the design's points, the more faithful the replay.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    json_to_distribution,
)
from optuna.trial import TrialState, create_trial

from study.samplers import make_sampler
from study.settings import SamplerCfg, SchedulerCfg, SearchCfg
from study.spaces import define_space
from trainables.vocab import SchedulerType


@dataclasses.dataclass(frozen=True)
class Config:
    """One configuration of the table: its Optuna parameters and what each epoch of it reported."""

    id: int
    params: dict[str, Any]
    distributions: dict[str, BaseDistribution]
    objective: tuple[float, ...]  # per epoch run (1, 2, ...)
    seconds: tuple[float, ...]  # each epoch's training + scoring seconds
    failed: bool  # diverged at its last epoch run (a FAIL trial)
    strong: float  # the strong attack's accuracy after the last epoch (NaN when failed)

    @property
    def final(self) -> float:
        return 0.0 if self.failed else self.objective[-1]


def _seconds(rows: pd.DataFrame) -> tuple[float, ...]:
    """Each epoch's training + scoring seconds; a diverged epoch (which reports no times) takes the others' mean."""
    secs = (rows["train_time_s"].fillna(0) + rows["score_time_s"].fillna(0)).to_numpy(float)
    good = secs[secs > 0]
    fill = float(good.mean()) if len(good) else 1.0
    return tuple(float(s) if s > 0 else fill for s in secs)


class Table:
    """The search table of one seed, as the replay reads it, with the parameters encoded for the nearest-neighbour
    lookup."""

    def __init__(self, configs: Sequence[Config], epochs: int) -> None:
        self.configs, self.epochs = list(configs), epochs
        self.best = max(c.final for c in self.configs)
        dists: dict[str, BaseDistribution] = {}
        for c in self.configs:
            dists.update(c.distributions)
        self._keys = sorted(dists)
        self._dists = dists
        self._codes = np.stack([self._encode(c.params) for c in self.configs])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, seed: int = 0) -> Table:
        rows = frame[frame["seed"] == seed].sort_values(["config_id", "epoch"])
        configs = []
        for cid, g in rows.groupby("config_id", sort=True):
            first = g.iloc[0]
            configs.append(Config(
                id=int(str(cid)), params=json.loads(first["params"]),
                distributions={k: json_to_distribution(v) for k, v in json.loads(first["distributions"]).items()},
                objective=tuple(float(v) for v in g["objective"]),
                seconds=_seconds(g),
                failed=bool(g["error"].iloc[-1]), strong=float(g["strong_acc"].iloc[-1])))
        return cls(configs, int(rows["epoch"].max()))

    def _encode(self, params: Mapping[str, Any]) -> np.ndarray:
        """One number per parameter in [0, 1] (a category: its index), NaN where the parameter is absent."""
        out = np.full(len(self._keys), np.nan)
        for i, key in enumerate(self._keys):
            if key not in params:
                continue
            d, v = self._dists[key], params[key]
            if isinstance(d, CategoricalDistribution):
                out[i] = d.to_internal_repr(v)
            elif isinstance(d, FloatDistribution | IntDistribution):
                lo, hi, x = (math.log(d.low), math.log(d.high), math.log(v)) if d.log else (d.low, d.high, v)
                out[i] = (x - lo) / (hi - lo) if hi > lo else 0.0
        return out

    def distances(self, params: Mapping[str, Any]) -> np.ndarray:
        code = self._encode(params)
        here, there = ~np.isnan(code), ~np.isnan(self._codes)
        categorical = np.array([isinstance(self._dists[k], CategoricalDistribution) for k in self._keys])
        diff = np.abs(self._codes - code)
        diff = np.where(categorical, (diff > 0).astype(float), diff)
        both = here & there
        out: np.ndarray = np.where(both, diff, 0.0).sum(1) + (here ^ there).sum(1)
        return out

    def nearest(self, params: Mapping[str, Any], used: set[int]) -> Config:
        """The configuration nearest `params` among those not in `used` (the first in the design on a tie)."""
        dist = self.distances(params)
        dist[[i for i, c in enumerate(self.configs) if c.id in used]] = np.inf
        return self.configs[int(np.argmin(dist))]


class Asha:
    """Ray Tune's ASHAScheduler (AsyncHyperBandScheduler with one bracket, stop_last_trials=True, mode max) as a
    plain object: rungs at grace_period x reduction_factor^k below max_t; a trial's first result at or past a rung
    is recorded there and stopped if it is below the rung's (1 - 1/rf) quantile of the results recorded before."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float) -> None:
        self.max_t, self.rf = max_t, reduction_factor
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (grace_period * reduction_factor**k, {}) for k in reversed(range(count))]

    def _record(self, trial: str, iteration: int, value: float) -> bool:
        for milestone, recorded in self.rungs:
            if iteration < milestone or trial in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            recorded[trial] = value
            return cutoff is not None and value < cutoff
        return False

    def on_result(self, trial: str, iteration: int, value: float) -> bool:
        """True: stop the trial."""
        if iteration >= self.max_t:
            return True
        return self._record(trial, iteration, value)

    def on_complete(self, trial: str, iteration: int, value: float) -> None:
        self._record(trial, iteration, value)


@dataclasses.dataclass(frozen=True)
class Finished:
    """One trial of a replayed study, as it ended."""

    number: int  # launch order
    config: int
    epochs: int  # epochs run
    value: float  # its last reported objective (what the study records; 0 for a failed trial)
    state: str  # COMPLETE, PRUNED, FAIL
    start_s: float
    end_s: float
    compute_s: float  # the study's worker-seconds spent when it ended (every trial's, running ones included)

    @property
    def candidate(self) -> float:
        """What it offers as the study's best trial: its value if it ran to the end (the study picks its best
        among the COMPLETE trials: study/runner.py), else nothing (0)."""
        return self.value if self.state == "COMPLETE" else 0.0


@dataclasses.dataclass(frozen=True)
class Combo:
    """One way to run a study: sampler, scheduler, concurrency."""

    sampler: SamplerCfg
    scheduler: SchedulerCfg
    max_concurrent: int

    @property
    def name(self) -> str:
        s = self.sampler
        sampler = {"tpe": f"tpe{'' if s.multivariate else '-uni'}(startup {s.n_startup_trials})",
                   "gp": f"gp(startup {s.n_startup_trials})"}.get(s.type.value, s.type.value)
        sched = ("fifo" if self.scheduler.type is SchedulerType.FIFO
                 else f"asha(g{self.scheduler.grace_period}, rf{self.scheduler.reduction_factor})")
        return f"{sampler} + {sched}"


def replay(table: Table, search: SearchCfg, combo: Combo, *, seed: int, trials: int | None = None) -> list[Finished]:
    """One study of `trials` trials (default: the whole table) on the simulated clock; its trials in the order
    they ended. Deterministic for a seed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(combo.sampler, seed))
    asha = (Asha(table.epochs, combo.scheduler.grace_period, combo.scheduler.reduction_factor)
            if combo.scheduler.type is SchedulerType.ASHA else None)
    budget = min(trials or len(table.configs), len(table.configs))
    used: set[int] = set()
    events: list[tuple[float, int, int, int]] = []  # (time, tie-break, trial number, epoch it ends)
    running: dict[int, tuple[Config, float]] = {}  # trial number -> (its configuration, start time)
    finished: list[Finished] = []
    clock = compute = 0.0
    launched = tick = 0

    def launch(now: float) -> None:
        nonlocal launched, tick
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proposal = study.ask()
            define_space(proposal, search=search, constants={})
        config = table.nearest(proposal.params, used)
        # The proposal is answered by the table's configuration: the sampler learns from that one (added when it
        # ends, as Optuna holds it), not from the point it proposed. A FAIL trial is invisible to every sampler.
        study.tell(proposal, state=TrialState.FAIL)
        used.add(config.id)
        running[launched] = (config, now)
        heapq.heappush(events, (now + config.seconds[0], tick, launched, 1))
        launched, tick = launched + 1, tick + 1

    def finish(number: int, epoch: int, now: float) -> None:
        config, start = running.pop(number)
        values = {e + 1: v for e, v in enumerate(config.objective[:epoch])}
        failed = config.failed and epoch == len(config.objective)
        state = TrialState.FAIL if failed else TrialState.COMPLETE if epoch >= table.epochs else TrialState.PRUNED
        study.add_trial(create_trial(state=state, params=config.params, distributions=config.distributions,
                                     value=values[epoch] if state is TrialState.COMPLETE else None,
                                     intermediate_values={} if failed else values))
        finished.append(Finished(number, config.id, epoch, 0.0 if failed else values[epoch], state.name, start, now,
                                 compute))

    for _ in range(min(combo.max_concurrent, budget)):
        launch(0.0)
    while events:
        now, _, number, epoch = heapq.heappop(events)
        compute += len(running) * (now - clock)
        clock = now
        config, _start = running[number]
        value = config.objective[epoch - 1]
        last = epoch == len(config.objective)  # the table's last epoch: the full fidelity, or where it diverged
        stop = asha.on_result(str(number), epoch, value) if asha else epoch >= table.epochs
        if stop or last:  # Tune tells the scheduler the trial's last result again when the trial ends
            if asha:
                asha.on_complete(str(number), epoch, value)
            finish(number, epoch, now)
            if launched < budget:
                launch(now)
        else:
            heapq.heappush(events, (now + config.seconds[epoch], tick, number, epoch + 1))
            tick += 1
    return finished


def best_so_far(trials: Sequence[Finished]) -> tuple[np.ndarray, np.ndarray]:
    """(compute at each trial's end, the study's best trial by then): the anytime curve of one replayed study."""
    compute = np.array([t.compute_s for t in trials])
    return compute, np.maximum.accumulate(np.array([t.candidate for t in trials]))


def iqm(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean: the mean of the middle half (Agarwal et al. 2021, rliable), robust to a few bad seeds."""
    values = np.sort(values, axis=axis)
    n = values.shape[axis]
    lo, hi = int(np.floor(n * 0.25)), int(np.ceil(n * 0.75))
    out: np.ndarray = np.take(values, np.arange(lo, max(hi, lo + 1)), axis=axis).mean(axis=axis)
    return out


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], *, n_boot: int = 1000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile interval of `stat` over the first axis (the seeds), resampling seeds."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    stats = np.stack([stat(values[i]) for i in idx])
    lo, hi = np.percentile(stats, [2.5, 97.5], axis=0)
    return lo, hi
