"""Checkpoints: model weights plus a JSON-safe metadata record, written atomically, read with weights_only=True.

Layout: {"format": "patchtune-ckpt/1", "meta": {...}, "state_dict": {...}}. `meta` holds arch, data set, the
input record (shape, classes, normalisation, the network's channels), clean accuracy, seed, the training config
and library versions; it is what lets `eval` rebuild the model and refuse a checkpoint that does not fit the
requested architecture or data set.

A plain PyTorch state dict (`torch.save(model.state_dict(), FILE)`, or a dict holding one under `state_dict` or
`model`) is read too; the caller says what it is (its arch and data set), and the data set's images say its input.
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
from trainables.models import InputSpec, build_model, network_channels
from trainables.vocab import DatasetInfo, UserError, dataset_info
from trainables.zoo import WeightsError, check_arch, misshapen, shape_mismatches, state_dict_in

FORMAT = "patchtune-ckpt/1"
PLAIN = "plain"  # the `kind` of a plain state dict read as a checkpoint


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit what was asked for."""


def input_meta(info: DatasetInfo, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records of its inputs: the images' shape, classes and normalisation, and the network's
    input channels (which may differ from the images')."""
    spec = InputSpec.of(info)
    return {**dataclasses.asdict(spec), "classes": list(info.classes),
            "model_channels": getattr(model.get_submodule("0"), "channels", spec.channels)}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def arch(self) -> str:
        return str(self.meta["arch"])

    @property
    def dataset(self) -> Dataset:
        return Dataset(self.meta["dataset"])

    @property
    def plain(self) -> bool:
        """A plain state dict: its input is the data set's, and it holds the network's weights alone."""
        return self.meta.get("kind") == PLAIN

    @property
    def channels(self) -> int | None:
        """The network's input channels (None: the default for its images)."""
        recorded = self.meta.get("input") or {}
        return recorded.get("model_channels") or network_channels(self.state_dict)

    def data_cfg(self, **given: Any) -> DataCfg:
        """The data this checkpoint was trained on (its data set and its train/val split), with `given` settings
        (a root, limits) on top: evaluating it later uses the same validation split."""
        split = self.meta.get("data") or {}
        kept = {k: split[k] for k in ("val_fraction", "split_seed", "image_size", "root") if split.get(k) is not None}
        return DataCfg.parse({"dataset": self.dataset, **kept, **given})

    def input_spec(self, info: DatasetInfo | None = None) -> InputSpec:
        """Its images' description: recorded (checked against `info`, the images it is used on, where given), or
        (a plain state dict, an older checkpoint) the data set's, `info` where the images were loaded."""
        recorded = self.meta.get("input")
        if recorded:
            if info is not None:
                self.check_fits(info)
            return InputSpec(int(recorded["channels"]), int(recorded["height"]), int(recorded["width"]),
                             int(recorded["num_classes"]), tuple(recorded["mean"]), tuple(recorded["std"]))
        if info is not None:
            return InputSpec.of(info)
        if self.dataset is Dataset.IMAGEFOLDER:
            raise CheckpointError(f"{self.path}: an imagefolder model needs its images to be rebuilt (load the data)")
        return InputSpec.of(dataset_info(self.dataset, self.meta.get("image_size")))

    def check_fits(self, info: DatasetInfo) -> None:
        """Refuse images other than those it was trained on: another side, other classes (another tree, or a class
        added to it). A CheckpointError in one line."""
        recorded = self.meta.get("input") or {}
        where = self.path or "the checkpoint"
        if recorded and (recorded["height"], recorded["width"]) != (info.height, info.width):
            raise CheckpointError(f"{where} was trained on {recorded['height']}x{recorded['width']} images, not "
                                  f"{info.height}x{info.width} (--image-size {recorded['height']})")
        classes = tuple(recorded.get("classes") or ())
        if info.classes and classes and classes != info.classes:
            extra = [c for c in info.classes if c not in classes] or [c for c in classes if c not in info.classes]
            raise CheckpointError(f"{where} was trained on classes {', '.join(classes[:6])}"
                                  f"{', ...' if len(classes) > 6 else ''} ({len(classes)}), not these images' "
                                  f"({len(info.classes)}{'; ' + repr(extra[0]) + ' differs' if extra else ''})")
        elif info.num_classes and recorded and int(recorded["num_classes"]) != info.num_classes:
            raise CheckpointError(f"{where} has {recorded['num_classes']} classes, these images {info.num_classes}")

    def build(self, info: DatasetInfo | None = None) -> nn.Module:
        """The model with these weights (on CPU; the caller moves it); `info`: the loaded images' description,
        which a plain state dict needs."""
        spec = self.input_spec(info)
        model = build_model(self.arch, spec, channels=self.channels)
        whole = "0.mean" in self.state_dict  # a patchtune model's own state dict, saved without the metadata
        target = model if (whole or not self.plain) else model.get_submodule("1")
        try:
            _fit(target, self.state_dict, spec.num_classes, self.arch)
        except WeightsError as exc:
            raise CheckpointError(f"{self.path or 'the checkpoint'}: {exc}") from None
        return model


def _fit(net: nn.Module, state: dict[str, torch.Tensor], num_classes: int, arch: str) -> None:
    """Load `state` strictly, or a WeightsError naming the first key that does not fit (a classifier for another
    number of classes is named as such: a base must classify the data set's classes)."""
    own = net.state_dict()
    for k in shape_mismatches(own, state, arch):
        if state[k].shape[1:] == own[k].shape[1:] and own[k].shape[0] == num_classes:
            raise WeightsError(f"its classifier ({k!r}) has {state[k].shape[0]} classes, the data set "
                               f"{num_classes}: pretrain a head for the data set first (patchtune pretrain "
                               f"--weights FILE)")
        raise WeightsError(misshapen(k, state, own, arch))
    net.load_state_dict(state)


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


def load_checkpoint(path: str | Path, *, arch: str | None = None, dataset: Dataset | str | None = None,
                    plain_arch: str | None = None) -> Checkpoint:
    """Read a checkpoint safely; refuse corrupt files and ones for another arch or data set. A plain state dict
    is what `arch` (else `plain_arch`) and `dataset` say it is (both needed)."""
    p = Path(path)
    is_zip = False
    if arch is not None:
        check_arch(str(arch))
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    # torch.save writes a zip archive (older PyTorch a bare pickle, read by torch's legacy weights-only loader);
    # a text file or random bytes fails in that loader with whatever error the bytes trigger (KeyError, ...).
    try:
        is_zip = zipfile.is_zipfile(p)
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file can fail in any way: every failure means "not a checkpoint"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        why = f"a damaged PyTorch archive: {reason[:160]}" if is_zip else "not a file torch.save writes"
        raise CheckpointError(f"{p} is not a checkpoint or state dict ({why})") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT and "meta" in blob and "state_dict" in blob:
        ckpt = Checkpoint(meta=dict(blob["meta"]), state_dict=dict(blob["state_dict"]), path=p)
    else:
        try:
            state = state_dict_in(blob, p)
        except WeightsError as exc:
            raise CheckpointError(f"{exc} or a patchtune checkpoint") from None
        arch = arch or plain_arch
        if arch is None or dataset is None:
            raise CheckpointError(f"{p} is a plain state dict: say what it is with --arch and --dataset (a spec: "
                                  "model.arch and data.dataset)")
        ckpt = Checkpoint(meta={"arch": str(arch), "dataset": Dataset(dataset).value, "kind": PLAIN,
                                "source": str(p)}, state_dict=state, path=p)
    try:
        ckpt_dataset = ckpt.dataset
    except ValueError:
        raise CheckpointError(f"{p}: unknown data set {ckpt.meta.get('dataset')!r} in metadata") from None
    if arch is not None and ckpt.arch != str(arch):
        raise CheckpointError(f"{p} holds arch {ckpt.arch!r}, not {arch!r}")
    if dataset is not None and ckpt_dataset.value != Dataset(dataset).value:
        raise CheckpointError(f"{p} was trained on {ckpt_dataset.value!r}, not {Dataset(dataset).value!r}")
    return ckpt
