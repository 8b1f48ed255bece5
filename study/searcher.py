"""OptunaSearch with the bookkeeping a study needs (behaviour of Ray 2.60 / Optuna 5.0, the versions pinned).

- Trials that ASHA stops early reach `on_trial_complete` with their low-fidelity last result, which Ray
  tells Optuna as COMPLETE (ray-project/ray#5459). Here they become PRUNED, with that value as their last
  intermediate value, so TPE and the Pareto front are not polluted.
- A trial that reports `error` (divergence) or crashes ends FAIL with the reason as user attribute `error`;
  a non-finite objective also ends FAIL instead of leaving the trial RUNNING forever.
- Each Optuna trial carries its Ray trial id as user attribute `ray_trial_id`, so the two can be joined.
- The study names its values (`metric_names`): optuna-dashboard and Optuna's plots show "val_pgd_acc", not
  "Objective 0".
- After a driver crash, Optuna can hold RUNNING trials that Tune's last experiment snapshot never saw.
  On resume the next suggestions adopt them (same parameters, replayed through the define-by-run space),
  so the study ends with exactly num_samples trials and none left RUNNING.
- A trial that finished after Tune's last snapshot is not run again on resume (trainables/trainable.py replays
  its reports). `PATCHTUNE_TEST_KILL_AFTER_TELLS=N` kills the driver's process group right after Optuna's N-th
  tell, which is that window, for the test that proves it (tests/test_study.py).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class StudySearch(OptunaSearch):
    def __init__(self, *args: Any, epochs: int, metric_names: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # creates (or loads) the Optuna study
        self._epochs = epochs
        if metric_names and self._ot_study is not None:
            with warnings.catch_warnings():  # Optuna flags set_metric_names experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(metric_names))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials and self._ot_study is not None:
            orphan = self._orphan()
            if orphan is not None:
                log.warning("adopting Optuna trial %d (RUNNING, unknown to Tune after a crash) as %s", orphan.number, trial_id)
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphan._trial_id)
        config: dict[str, Any] | None = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def _orphan(self) -> optuna.trial.FrozenTrial | None:
        assert self._ot_study is not None
        known = {t._trial_id for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in known:
                return frozen
        return None

    def _finished_elsewhere(self, trial_id: str) -> bool:
        """True when Optuna already holds a final state for this trial, e.g. a trial that finished just before
        a driver crash, after Tune's last experiment snapshot, and is replayed on resume."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return trial_id in self._completed_trials
        ot_trial = self._ot_trials[trial_id]
        if ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._finished_elsewhere(trial_id):
            return
        if result.get("error"):
            self._finish(trial_id, TrialState.FAIL, reason=str(result["error"]))
            return
        value = result.get(self._metric) if isinstance(self._metric, str) else None
        if value is not None and not math.isfinite(value):
            self._finish(trial_id, TrialState.FAIL, reason=f"non-finite {self._metric}: {value}")
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials or self._finished_elsewhere(trial_id):
            return
        if error:
            self._finish(trial_id, TrialState.FAIL, reason="trial crashed more often than max_failures allows (see its error.txt)")
            return
        if result and result.get("error"):
            self._finish(trial_id, TrialState.FAIL, reason=str(result["error"]))
            return
        if result and isinstance(self._metric, str):
            value = result.get(self._metric)
            if value is not None and not math.isfinite(value):
                self._finish(trial_id, TrialState.FAIL, reason=f"non-finite {self._metric}: {value}")
                return
            iteration = int(result.get("training_iteration", 0))
            if value is not None and iteration < self._epochs:
                ot_trial = self._ot_trials[trial_id]
                if iteration not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                    ot_trial.report(value, iteration)
                self._finish(trial_id, TrialState.PRUNED, reason=None)
                return
        super().on_trial_complete(trial_id, result=result, error=error)
        self._told()

    def _told(self) -> None:
        self._tells = getattr(self, "_tells", 0) + 1
        if self._tells == int(os.environ.get("PATCHTUNE_TEST_KILL_AFTER_TELLS", "0")):
            os.killpg(os.getpgid(0), signal.SIGKILL)

    def _finish(self, trial_id: str, state: TrialState, reason: str | None) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        try:
            if reason:
                ot_trial.set_user_attr("error", reason[:1000])
            assert self._ot_study is not None
            self._ot_study.tell(ot_trial, state=state)
        except Exception as exc:  # a storage hiccup must not kill the whole study
            log.warning("could not record trial %s as %s in Optuna: %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)
        self._told()
