"""Checkpoints: model weights plus a JSON-safe metadata record, written atomically, read with weights_only=True.

Layout: {"format": "patchtune-ckpt/1", "meta": {...}, "state_dict": {...}}. `meta` holds arch, data set,
input shape, clean accuracy, seed, the training config and library versions; it is what lets `eval` rebuild
the model and refuse a checkpoint that does not fit the requested architecture or data set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.atomic import atomic_open
from trainables.config import DataCfg, Dataset, as_jsonable
from trainables.models import InputSpec, build_model
from trainables.vocab import UserError, dataset_info

FORMAT = "patchtune-ckpt/1"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit what was asked for."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def arch(self) -> str:
        return str(self.meta["arch"])

    @property
    def dataset(self) -> Dataset:
        return Dataset(self.meta["dataset"])

    def data_cfg(self, **given: Any) -> DataCfg:
        """The data this checkpoint was trained on (its data set and its train/val split), with `given` settings
        (a root, limits) on top: evaluating it later uses the same validation split."""
        split = self.meta.get("data") or {}
        kept = {k: split[k] for k in ("val_fraction", "split_seed", "image_size") if split.get(k) is not None}
        return DataCfg.parse({"dataset": self.dataset, **kept, **given})

    def input_spec(self) -> InputSpec:
        image_size = self.meta.get("image_size")
        info = dataset_info(self.dataset, image_size if self.dataset is Dataset.IMAGENETTE else None)
        return InputSpec.of(info)

    def build(self) -> nn.Module:
        """The model with these weights (on CPU; the caller moves it)."""
        model = build_model(self.arch, self.input_spec())
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(f"weights do not fit arch {self.arch!r}: {first}") from None
        return model


def versions() -> dict[str, str]:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights + metadata atomically. `meta` must contain at least arch and dataset."""
    for key in ("arch", "dataset"):
        if key not in meta:
            raise ValueError(f"checkpoint metadata needs {key!r}")
    record = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": as_jsonable(versions()),
        **as_jsonable(meta),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, "meta": record, "state_dict": state}, f)


def load_checkpoint(path: str | Path, *, arch: str | None = None, dataset: Dataset | str | None = None) -> Checkpoint:
    """Read a checkpoint safely; refuse corrupt files and ones for another arch or data set."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    # torch.save writes a zip archive; anything else (a text file, random bytes) would reach torch's legacy
    # unpickler, whose weights-only mode fails with whatever error the bytes happen to trigger (KeyError, ...).
    try:
        is_zip = zipfile.is_zipfile(p)
    except OSError as exc:
        raise CheckpointError(f"{p} is not a readable patchtune checkpoint ({exc.strerror or exc})") from None
    if not is_zip:
        raise CheckpointError(f"{p} is not a readable patchtune checkpoint (not a PyTorch zip archive)")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged archive can fail in any way: every failure means "not a checkpoint"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{p} is not a readable patchtune checkpoint ({reason[:200]})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "meta" not in blob or "state_dict" not in blob:
        raise CheckpointError(f"{p} is not a patchtune checkpoint (expected format {FORMAT})")
    ckpt = Checkpoint(meta=dict(blob["meta"]), state_dict=dict(blob["state_dict"]))
    try:
        ckpt_dataset = ckpt.dataset
    except ValueError:
        raise CheckpointError(f"{p}: unknown data set {ckpt.meta.get('dataset')!r} in metadata") from None
    if arch is not None and ckpt.arch != arch:
        raise CheckpointError(f"{p} holds arch {ckpt.arch!r}, not {arch!r}")
    if dataset is not None and ckpt_dataset.value != Dataset(dataset).value:
        raise CheckpointError(f"{p} was trained on {ckpt_dataset.value!r}, not {Dataset(dataset).value!r}")
    return ckpt
