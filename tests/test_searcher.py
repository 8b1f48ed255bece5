"""StudySearch driven the way Tune's controller drives it (suggest / on_trial_result / on_trial_complete),
against real Optuna storage. The full Ray path is exercised in test_study.py."""

from __future__ import annotations

import functools
import math
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.searcher import StudySearch
from study.spaces import define_space
from study.spec import load_spec


def make_searcher(storage_url: str, name: str = "s", epochs: int = 3) -> StudySearch:
    space = functools.partial(define_space, search=load_spec("quick-paper").search, constants={"epochs": epochs, "seed": 0})
    return StudySearch(space=space, metric="objective", mode="max", study_name=name, epochs=epochs,
                       storage=optuna.storages.RDBStorage(storage_url),
                       sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, n_startup_trials=2))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def trials(url: str, name: str = "s") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_complete_pruned_failed_states(url: str) -> None:
    s = make_searcher(url)
    for tid in ("full", "early", "diverged", "crashed", "nan"):
        config = s.suggest(tid)
        assert config is not None and {"lr", "pool", "optimizer", "epochs"} <= set(config)
    for it in (1, 2, 3):
        s.on_trial_result("full", {"objective": 0.1 * it, "training_iteration": it})
    s.on_trial_complete("full", {"objective": 0.3, "training_iteration": 3})
    # ASHA stops "early" at iteration 1: Tune reports the last result through on_trial_complete
    s.on_trial_result("early", {"objective": 0.05, "training_iteration": 1})
    s.on_trial_complete("early", {"objective": 0.05, "training_iteration": 1})
    s.on_trial_result("diverged", {"objective": 0.0, "training_iteration": 2, "error": "training loss became nan"})
    s.on_trial_complete("diverged", {"objective": 0.0, "training_iteration": 2, "error": "training loss became nan"})
    s.on_trial_complete("crashed", None, error=True)
    s.on_trial_complete("nan", {"objective": math.nan, "training_iteration": 3})

    by_ray = {t.user_attrs["ray_trial_id"]: t for t in trials(url)}
    assert by_ray["full"].state is TrialState.COMPLETE and by_ray["full"].value == pytest.approx(0.3)
    assert by_ray["early"].state is TrialState.PRUNED and by_ray["early"].intermediate_values == {1: 0.05}
    assert by_ray["diverged"].state is TrialState.FAIL
    assert by_ray["diverged"].user_attrs["error"] == "training loss became nan"
    assert by_ray["crashed"].state is TrialState.FAIL and "max_failures" in by_ray["crashed"].user_attrs["error"]
    assert by_ray["nan"].state is TrialState.FAIL and "non-finite objective" in by_ray["nan"].user_attrs["error"]
    assert not [t for t in trials(url) if t.state is TrialState.RUNNING]


def test_searcher_state_pickles_and_restores(url: str) -> None:
    s = make_searcher(url)
    s.suggest("a")
    blob = pickle.dumps(s.__dict__)  # what OptunaSearch.save writes, with the stdlib pickle
    restored = make_searcher(url)
    restored.__dict__.update(pickle.loads(blob))
    restored.on_trial_complete("a", {"objective": 0.2, "training_iteration": 3})
    assert trials(url)[0].state is TrialState.COMPLETE


def test_orphaned_running_trials_are_adopted_after_a_crash(url: str) -> None:
    first = make_searcher(url)
    config_a = first.suggest("a")
    first.on_trial_complete("a", {"objective": 0.2, "training_iteration": 3})
    config_b = first.suggest("b")  # the driver dies while "b" runs, before Tune snapshots it
    assert config_b is not None
    resumed = make_searcher(url)  # the restored searcher never heard of "b"
    resumed.__dict__["_ot_trials"] = {k: v for k, v in first._ot_trials.items() if k == "a"}
    resumed._completed_trials = {"a"}
    config_c = resumed.suggest("c")
    assert config_c == config_b  # same parameters, replayed through the space
    resumed.on_trial_complete("c", {"objective": 0.4, "training_iteration": 3})
    states = [(t.number, t.state, t.user_attrs["ray_trial_id"]) for t in trials(url)]
    assert states == [(0, TrialState.COMPLETE, "a"), (1, TrialState.COMPLETE, "c")]
    assert config_a != config_b


def test_results_for_trials_optuna_already_finished_are_ignored(url: str) -> None:
    # A trial that finished just before a driver crash, after Tune's last snapshot, is replayed on resume.
    s = make_searcher(url)
    s.suggest("a")
    s.on_trial_complete("a", {"objective": 0.2, "training_iteration": 3})
    replay = make_searcher(url)
    replay.__dict__["_ot_trials"] = dict(s._ot_trials)  # the snapshot still thinks "a" is running
    replay.on_trial_result("a", {"objective": 0.25, "training_iteration": 3})
    replay.on_trial_complete("a", {"objective": 0.25, "training_iteration": 3})
    (trial,) = trials(url)
    assert trial.state is TrialState.COMPLETE and trial.value == pytest.approx(0.2)


# StudySearch reaches into OptunaSearch's and Optuna's private state; pyproject pins ray/optuna below the next
# releases. When an upgrade renames any of these, this test says which, before a study misbehaves.
PRIVATE_STATE = {"_ot_trials": dict, "_ot_study": optuna.Study, "_completed_trials": set, "_metric": str}


def test_the_private_state_studysearch_relies_on_still_exists(url: str) -> None:
    s = make_searcher(url)
    assert s.suggest("t0") is not None
    missing = [f"OptunaSearch.{name} (expected {kind.__name__})" for name, kind in PRIVATE_STATE.items()
               if not isinstance(getattr(s, name, None), kind)]
    trial = s._ot_trials.get("t0") if isinstance(getattr(s, "_ot_trials", None), dict) else None
    if trial is None or not isinstance(getattr(trial, "_trial_id", None), int):
        missing.append("optuna.Trial._trial_id (int)")
    frozen = optuna.load_study(study_name="s", storage=url).get_trials()[0]
    if not isinstance(getattr(frozen, "_trial_id", None), int):
        missing.append("optuna.trial.FrozenTrial._trial_id (int)")
    assert not missing, (
        "ray/optuna changed private state that study/searcher.py (StudySearch) depends on: " + ", ".join(missing)
        + ". Adapt StudySearch to the new versions, then raise the upper bounds in pyproject.toml.")
