"""Experiment tracking: every trial as an MLflow run, through Ray Tune's own `MLflowLoggerCallback` (params at
the start, every reported epoch's metrics), and at the end the best trial's checkpoint (best.pt) and its
test-split scores logged into that trial's run. Optional: the `mlflow` extra (`pip install 'patchtune[mlflow]'`).

`check` runs in the preflight (nothing started or written yet): a URI MLflow cannot use is a one-line error.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from study.spec import StudySpec
from trainables.vocab import UserError


class TrackingError(UserError):
    """The tracking URI cannot be used (invalid, unreachable, not writable, MLflow not installed)."""


def check(spec: StudySpec) -> None:
    uri = spec.tracking.mlflow
    if uri is None:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TrackingError(f"tracking.mlflow {uri!r} needs MLflow's client: pip install 'patchtune[mlflow]'") from None
    scheme = uri.split("://", 1)[0].split("+")[0]
    if scheme in ("file", "sqlite"):
        path = _local_path(uri)
        target = path if scheme == "file" else path.parent
        if scheme == "sqlite" and path.exists() and not _is_sqlite(path):
            raise TrackingError(f"tracking.mlflow {uri!r}: {path} exists and is not an SQLite database")
        if target.exists() and not target.is_dir():
            raise TrackingError(f"tracking.mlflow {uri!r}: {target} is not a directory")
        existing = next((p for p in (target, *target.parents) if p.exists()), Path("/"))
        if not os.access(existing, os.W_OK):
            raise TrackingError(f"tracking.mlflow {uri!r}: {existing} is not writable")
    elif scheme in ("http", "https"):
        try:  # MLflow's own client retries for minutes; one short request says whether a server answers
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
                r.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking.mlflow {uri!r}: no MLflow tracking server answers there ({reason})") from None


def callbacks(spec: StudySpec) -> list[Any]:
    """The Tune callbacks of the spec's tracking (none when it is off)."""
    uri = spec.tracking.mlflow
    if uri is None:
        return []
    _allow_file_store(uri)
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    # Runs are named after the trial directories (trial_<id>), so a run and its files are found from each other.
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment(spec), save_artifact=False,
                                 tags={"patchtune.study": spec.name, "patchtune.dataset": spec.data.dataset.value})]


def experiment(spec: StudySpec) -> str:
    return spec.tracking.experiment or spec.name


def log_best(spec: StudySpec, entries: list[dict[str, Any]]) -> None:
    """The best trial(s): their checkpoint under the run's `best/` artifacts, their test-split accuracy as
    `test_<attack>_acc` metrics and their rank as the tag `patchtune.best_rank`."""
    uri = spec.tracking.mlflow
    if uri is None:
        return
    _allow_file_store(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment(spec))
    if exp is None:
        return
    for rank, entry in enumerate(entries):
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.trial_name = 'trial_{entry['trial_id']}'",
                                  max_results=1, order_by=["attributes.start_time DESC"])
        if not runs:
            continue
        run_id = runs[0].info.run_id
        client.log_artifact(run_id, entry["checkpoint"], artifact_path="best")
        client.set_tag(run_id, "patchtune.best_rank", str(rank))
        for attack, acc in entry["test"]["accuracy"].items():
            client.log_metric(run_id, f"test_{attack}_acc", float(acc))


def _allow_file_store(uri: str) -> None:
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance mode and refuses it unless opted in; a file:// URI is the
        # user's explicit choice, so opt in for them (sqlite:///mlflow.db is MLflow's recommended local store).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _local_path(uri: str) -> Path:
    if uri.startswith("sqlite:"):
        return Path(uri.split(":///", 1)[-1]).expanduser().resolve() if ":///" in uri else Path(uri)
    return Path(unquote(urlparse(uri).path)).expanduser()


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
