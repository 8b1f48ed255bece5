"""Data sets by name (a registry: `sources`), held whole in memory as uint8 tensors (`splits`), read from their
real on-disk formats (`formats`), with a seeded train/val split."""

from __future__ import annotations

from trainables.data.formats import read_cifar_batch, read_idx
from trainables.data.sources import (
    DEBIAN_FMNIST,
    IMAGENETTE_WNIDS,
    Source,
    load_data,
    peek_info,
    register_dataset,
    tree_digest,
)
from trainables.data.splits import (
    DataBundle,
    DataError,
    Split,
    cache_dir,
    iterate_batches,
    place,
    split_train_val,
)
from trainables.vocab import DatasetInfo, dataset_info

__all__ = ["DEBIAN_FMNIST", "IMAGENETTE_WNIDS", "DataBundle", "DataError", "DatasetInfo", "Source", "Split",
           "cache_dir", "dataset_info", "iterate_batches", "load_data", "peek_info", "place", "read_cifar_batch", "read_idx",
           "register_dataset", "split_train_val", "tree_digest"]
