"""The Ray Tune edge of the pure layer: the function trainables of a study trial and of a reproduction cell.

The trial itself is `trainables.trial.run_trial` (Ray-free, through the one training loop `training.fit`);
this module only connects it to Tune: `tune.report(metrics, checkpoint=...)` each epoch, resuming from
`tune.get_checkpoint()`. Data and base weights arrive once per worker through `tune.with_parameters` (the
object store), not re-read per trial. A diverged trial reports its reason under `error` (the searcher marks
it FAIL in Optuna) and stops, instead of leaving NaN behind.

A trial leaves its reports in its directory (`done.json`) before it reports its last epoch, so before Tune, and
then Optuna, hear that it finished. A driver that dies after Optuna's tell but before Tune's next experiment
snapshot leaves Tune believing the trial unfinished; on resume the trial replays those reports instead of
training again, so the compute is not spent twice and Tune's results agree with Optuna's, value for value.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables.config import trial_cfgs
from trainables.perf import pick_device
from trainables.reproduce_cell import ReproSetup, run_cell
from trainables.trial import TrialSetup, TrialState, run_trial


def finetune_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """A study trial: `trial.run_trial`, reporting to Tune and resuming from Tune's last checkpoint."""
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    done = _Done()
    replay = finished_reports(done.read(), int(resume["epoch"]) if resume else 0)
    if replay is not None:
        for metrics in replay:
            tune.report(metrics)
        return
    device = pick_device()
    reports: dict[int, dict[str, Any]] = {}
    epochs = trial_cfgs(config, jitter=setup.jitter)[0].epochs

    def report(metrics: dict[str, Any], state: TrialState | None) -> None:
        reports[int(metrics["epoch"])] = metrics
        if metrics["epoch"] >= epochs or metrics.get("error"):
            # before Tune hears of the last report: it may stop the trial (and tell Optuna) on receiving it
            done.write(json.dumps({"reports": {str(k): v for k, v in reports.items()}}))
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(config, setup, report=report, resume=resume, device=device, where=_where(device))


class _Done:
    """`done.json` in the trial's directory in the study's storage (not the worker's working directory, which a
    new Ray session does not see), written atomically through the storage's own filesystem."""

    def __init__(self) -> None:
        storage = tune.get_context().get_storage()
        self.fs, self.path = storage.storage_filesystem, f"{storage.trial_fs_path}/done.json"

    def read(self) -> str | None:
        from pyarrow import fs

        if self.fs.get_file_info(self.path).type != fs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path) as f:
            return bytes(f.read()).decode()

    def write(self, text: str) -> None:
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(text.encode())
        self.fs.move(tmp, self.path)


def finished_reports(done: str | None, start: int) -> list[dict[str, Any]] | None:
    """The reports after epoch `start` of a trial that already finished (the text of its `done.json`), in order;
    None when it has not finished, or the file lacks one of them (then the trial runs)."""
    if done is None:
        return None
    reports = {int(k): v for k, v in json.loads(done)["reports"].items()}
    wanted = [e for e in sorted(reports) if e > start]
    if not wanted or wanted != list(range(start + 1, max(reports) + 1)):
        return None
    return [reports[e] for e in wanted]


def _where(device: torch.device) -> dict[str, str]:
    import ray

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "device": f"{device} ({name})", "pid": str(os.getpid())}


# ------------------------------------------------------------------------------------------- reproduction


def reproduce_trial(config: dict[str, Any], setup: ReproSetup) -> None:
    """One (seed, cell) of the reproduction grid (`trainables.reproduce_cell.run_cell`), reported to Tune."""
    device = pick_device()
    tune.report({**run_cell(int(config["seed"]), setup.cells[config["cell"]], setup, device), **_where(device)})
