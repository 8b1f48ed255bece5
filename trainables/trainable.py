"""The Ray Tune edge of the pure layer: the function trainables of a study trial and of a reproduction cell.

The trial itself is `trainables.trial.run_trial` (Ray-free, through the one training loop `training.fit`);
this module only connects it to Tune: `tune.report(metrics, checkpoint=...)` each epoch, resuming from
`tune.get_checkpoint()`. Data and base weights arrive once per worker through `tune.with_parameters` (the
object store), not re-read per trial. A diverged trial reports its reason under `error` (the searcher marks
it FAIL in Optuna) and stops, instead of leaving NaN behind.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

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
    device = pick_device()

    def report(metrics: dict[str, Any], state: TrialState | None) -> None:
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(config, setup, report=report, resume=resume, device=device, where=_where(device))


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
