"""Flags several commands share, each a view of one setting."""

from __future__ import annotations

import argparse
from typing import Any

from study.cli.flags import Flags, UsageError, device, readable_dir
from study.options import Output
from trainables.config import AugCfg, ConfigError, DataCfg, TrainCfg
from trainables.vocab import DatasetInfo


def data_flags(flags: Flags, *, dataset: bool = True, limits: bool = True) -> None:
    if dataset:
        flags.add(DataCfg, "dataset")
    flags.add(DataCfg, "root", "--data-root", metavar="DIR")
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
