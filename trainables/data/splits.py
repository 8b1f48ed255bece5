"""Images held whole in memory as uint8 tensors (`Split`), a data set's three splits (`DataBundle`), the seeded
train/val split, and batches on the device."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from trainables import perf
from trainables.vocab import DatasetInfo, SplitName, UserError


class DataError(UserError, RuntimeError):
    """A data set could not be found or read; the message says where we looked and how to get it."""


@dataclasses.dataclass
class Split:
    """Images as uint8 [N, C, H, W] and int64 labels [N], on any device."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        assert self.x.dtype == torch.uint8 and self.x.ndim == 4, (self.x.dtype, self.x.shape)
        assert self.y.shape == (self.x.shape[0],), (self.x.shape, self.y.shape)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: torch.Tensor | slice) -> Split:
        return Split(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclasses.dataclass
class DataBundle:
    info: DatasetInfo
    train: Split
    val: Split  # held out from the training split: for hyperparameter search and early stopping
    test: Split  # for final reports only
    source: str  # where the files came from

    def split(self, name: SplitName | str) -> Split:
        split: Split = getattr(self, SplitName(name).value)
        return split


def cache_dir() -> Path:
    return Path(os.environ.get("PATCHTUNE_CACHE", Path.home() / ".cache" / "patchtune"))


def split_train_val(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded permutation of the training split; the first `val_fraction` of it becomes validation."""
    n = len(train)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"val_fraction {val_fraction} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.take(perm[n_val:]), train.take(perm[:n_val])


def shuffled(split: Split, seed: int) -> Split:
    """A fixed shuffle, so that a limit takes a class-mixed subset, the same on every run."""
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 1))
    return split.take(perm)


def limited(split: Split, limit: int | None) -> Split:
    return split if limit is None or limit >= len(split) else split.take(slice(0, limit))


def place(split: Split, device: torch.device) -> Split:
    """Device-resident when the data set fits (see `trainables.perf`), else pinned host memory for async copies."""
    if split.x.device.type == device.type and (split.x.device.index or 0) == (device.index or 0):
        return split
    if perf.fits_on(device, split.x.numel() + split.y.numel() * 8):
        return split.to(device)
    if device.type == "cuda" and not split.x.is_pinned():
        return Split(split.x.pin_memory(), split.y.pin_memory())
    return split


def iterate_batches(
    split: Split,
    batch_size: int,
    device: torch.device,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x float32 in [0, 1], y) batches on `device`, indexing the uint8 tensors directly.

    When `split` already lives on `device` (device-resident data), no host<->device copy happens per batch.
    The permutation is drawn on the CPU so that a seed gives the same order on every device.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(split.x.device)
    stop = n - n % batch_size if drop_last else n
    layout = perf.input_layout(device)  # channels_last, like the models (a no-op for contiguous_format)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = split.x[idx].to(device, non_blocking=True).float().div_(255.0).contiguous(memory_format=layout)
        y = split.y[idx].to(device, non_blocking=True)
        yield x, y
