"""Flags several commands share, each a view of one setting."""

from __future__ import annotations

import argparse
from typing import Any

from study.cli.flags import Flags, UsageError, device, readable_dir
from study.options import Output
from trainables.config import AugCfg, ConfigError, DataCfg, ModelCfg, TrainCfg
from trainables.vocab import DatasetInfo


def data_flags(flags: Flags, *, dataset: bool = True, limits: bool = True, of_file: bool = False) -> None:
    """The data flags; `of_file`: a command reading a model file, whose data set (and arch) are the checkpoint's,
    and which a plain state dict needs."""
    if dataset:
        flags.add(DataCfg, "dataset", default="the checkpoint's; a plain state dict needs it" if of_file else None)
    if of_file:
        flags.add(ModelCfg, "arch", default="the checkpoint's; a plain state dict needs it")
    flags.add(DataCfg, "root", "--data-root", metavar="DIR")
    flags.add(DataCfg, "image_size", metavar="N")
    if limits:
        for split in ("train", "val", "test"):
            flags.add(DataCfg, f"limit_{split}", metavar="N")


def output_flags(flags: Flags, *, json: bool = False) -> None:
    flags.add(Output, "device")
    flags.add(Output, "quiet")
    if json:
        flags.add(Output, "json")


def train_flags(flags: Flags) -> None:
    for name in ("optimizer", "lr", "batch_size", "epochs", "seed"):
        flags.add(TrainCfg, name)


def aug_flags(flags: Flags) -> None:
    for name in ("pool", "patch_size", "num_patches", "jitter"):
        flags.add(AugCfg, name)


def aug_cfg(flags: Flags, args: argparse.Namespace, info: DatasetInfo) -> AugCfg:
    """The augmentation given, resolved for the images (a patch that does not fit them is a one-line error)."""
    try:
        return flags.build(args, AugCfg).resolved(info)
    except ConfigError as exc:
        raise UsageError(f"--{str(exc).replace('_', '-', 1)}") from None


def output(flags: Flags, args: argparse.Namespace) -> tuple[Output, Any]:
    """The command's output options and the torch device they name (checked, one line if it does not exist)."""
    opts = flags.build(args, Output)
    return opts, device(opts.device)


def data_cfg(flags: Flags, args: argparse.Namespace) -> DataCfg:
    """The data settings given (the root checked to be a readable directory first)."""
    readable_dir(getattr(args, "data_root", None))
    return flags.build(args, DataCfg)


def model_file(flags: Flags, args: argparse.Namespace, path: str) -> tuple[Any, DataCfg]:
    """A checkpoint or plain state dict (what --arch and --dataset say it is) and the data settings it is used on:
    its own, with the data flags given on top; the image side checked against the arch."""
    from trainables.checkpoint import load_checkpoint
    from trainables.zoo import check_inputs

    readable_dir(getattr(args, "data_root", None))
    arch = flags.build(args, ModelCfg).arch
    ckpt = load_checkpoint(path, arch=arch, dataset=getattr(args, "dataset", None))
    data = ckpt.data_cfg(**flags.given(args, DataCfg))
    check_inputs(ckpt.arch, data.info)
    from trainables.data import peek_info

    # weights that do not fit the arch, the classes or the image side stop here, before any image is decoded
    if ckpt.plain:
        ckpt.build(peek_info(data))
    else:
        ckpt.check_fits(peek_info(data))
    return ckpt, data
