"""Data sets by name: a registry of where each one's files are and how to read them, and `load_data`.

Every data set is found the same way ("find, download, fail"): the places its `Source` names, the user's
`root` first; then torchvision's download into the cache directory (`$PATCHTUNE_CACHE`, default
`~/.cache/patchtune`), under a file lock so parallel trials on one node download once; then one error that
says where it looked and how to get the files. A new data set is a member of `trainables.vocab.Dataset` (with
its shape, classes and normalisation in `vocab`) plus a `Source` registered here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables.config import DataCfg
from trainables.data.formats import cifar_split, decoded_images, idx_split
from trainables.data.splits import DataBundle, DataError, Split, cache_dir, limited, shuffled, split_train_val
from trainables.vocab import Dataset, dataset_info

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
# Imagenette's ten WordNet ids in their canonical (sorted) order = class indices 0..9.
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888605",
)

Reader = Callable[[Path, DataCfg], tuple[Split, Split] | None]  # (train, test), or None: no copy there


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one data set's files are and how they are read."""

    label: str  # how messages name it
    places: Callable[[Path | None], list[Path]]  # directories to look in, the user's root (or None) first
    read: Reader
    looked_for: str  # what a directory must hold, for the error message
    download: tuple[str, dict[str, Any], str]  # torchvision class, its arguments, the directory it fills in the cache
    get_it: str  # how to get the files by hand


_SOURCES: dict[Dataset, Source] = {}


def register_dataset(dataset: Dataset) -> Callable[[Callable[[], Source]], Callable[[], Source]]:
    def wrap(make: Callable[[], Source]) -> Callable[[], Source]:
        if dataset in _SOURCES:
            raise ValueError(f"data set {dataset.value!r} registered twice")
        _SOURCES[dataset] = make()
        return make

    return wrap


def load_data(cfg: DataCfg) -> DataBundle:
    """Load `cfg.dataset` whole, split train/val with `cfg.split_seed`, and apply the size limits."""
    train, test, where = _find(_SOURCES[cfg.dataset], cfg)
    train_part, val_part = split_train_val(train, cfg.val_fraction, cfg.split_seed)
    return DataBundle(info=dataset_info(cfg.dataset, cfg.image_size), train=limited(train_part, cfg.limit_train),
                      val=limited(val_part, cfg.limit_val), test=limited(shuffled(test, cfg.split_seed), cfg.limit_test),
                      source=str(where))


def _find(source: Source, cfg: DataCfg) -> tuple[Split, Split, Path]:
    places = source.places(Path(cfg.root) if cfg.root else None)
    for directory in places:
        loaded = source.read(directory, cfg)
        if loaded is not None:
            return loaded[0], loaded[1], directory
    error = _download(cfg, source)
    target = cache_dir() / "data" / source.download[2]
    if error is None:
        loaded = source.read(target, cfg)
        if loaded is not None:
            return loaded[0], loaded[1], target
    raise DataError(f"{source.label} not found: looked for {source.looked_for} in {', '.join(map(str, places))}"
                    f"{'; download failed: ' + error if error else ''}. {source.get_it}")


def _download(cfg: DataCfg, source: Source) -> str | None:
    """Let torchvision download into the cache; returns None on success, else a short reason."""
    if not cfg.download:
        return "downloads disabled"
    import torchvision.datasets as tvd
    from filelock import FileLock

    name, kwargs, _ = source.download
    target = cache_dir() / "data"
    target.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(target / f".{name}.lock")):
            getattr(tvd, name)(root=str(target), download=True, **kwargs)
    except Exception as exc:  # network errors come in many types; report, don't crash
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return None


# --------------------------------------------------------------------------------------- the data sets


def _file(directory: Path, stem: str) -> Path | None:
    return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)


def _read_fmnist(directory: Path, cfg: DataCfg) -> tuple[Split, Split] | None:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    found = [_file(directory, s) for s in stems]
    if any(p is None for p in found):
        return None
    images, labels, test_images, test_labels = (p for p in found if p is not None)
    return idx_split(images, labels), idx_split(test_images, test_labels)


@register_dataset(Dataset.FMNIST)
def _fmnist() -> Source:
    def places(root: Path | None) -> list[Path]:
        # the flat layout (Debian, Zalando's repo) and torchvision's root/FashionMNIST/raw, in each place
        def layouts(d: Path) -> list[Path]:
            return [d, d / "FashionMNIST" / "raw", d / "fashion-mnist"]

        return [*(layouts(root) if root else []), DEBIAN_FMNIST, *layouts(cache_dir() / "data")]

    return Source("Fashion-MNIST", places, _read_fmnist, "train-images-idx3-ubyte[.gz]",
                  ("FashionMNIST", {}, "FashionMNIST/raw"),
                  "Install it with `apt-get install dataset-fashion-mnist`, or set the data root to a directory "
                  "holding the IDX files.")


_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _read_cifar(directory: Path, cfg: DataCfg) -> tuple[Split, Split] | None:
    if not all((directory / n).is_file() for n in _CIFAR_FILES):
        return None
    return cifar_split([directory / n for n in _CIFAR_FILES[:5]]), cifar_split([directory / "test_batch"])


@register_dataset(Dataset.CIFAR10)
def _cifar10() -> Source:
    def places(root: Path | None) -> list[Path]:
        return [*([root / "cifar-10-batches-py", root] if root else []), cache_dir() / "data" / "cifar-10-batches-py"]

    return Source("CIFAR-10", places, _read_cifar, "data_batch_1..5 and test_batch",
                  ("CIFAR10", {}, "cifar-10-batches-py"),
                  "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and "
                  "set the data root to that directory.")


def _imagenette_files(directory: Path, split: str) -> list[tuple[Path, int]] | None:
    split_dir = directory / split
    if not split_dir.is_dir():
        return None
    files: list[tuple[Path, int]] = []
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if sub.name not in IMAGENETTE_WNIDS:
            raise DataError(f"{sub}: not an Imagenette class folder (expected one of the ten WordNet ids, e.g. n01440764)")
        label = IMAGENETTE_WNIDS.index(sub.name)
        files += [(f, label) for f in sorted(sub.iterdir()) if f.suffix.lower() in (".jpeg", ".jpg", ".png")]
    return files or None


def _read_imagenette(directory: Path, cfg: DataCfg) -> tuple[Split, Split] | None:
    train, val = _imagenette_files(directory, "train"), _imagenette_files(directory, "val")
    if train is None or val is None:
        return None
    side = cfg.info.height
    # Imagenette's "val" is its test split (the paper reports on it); ours is held out from train.
    return decoded_images(train, side, "imagenette", "train"), decoded_images(val, side, "imagenette", "val")


@register_dataset(Dataset.IMAGENETTE)
def _imagenette() -> Source:
    def places(root: Path | None) -> list[Path]:
        names = ("imagenette2-160", "imagenette2-320", "imagenette2")
        return [*([root / n for n in names] + [root] if root else []), cache_dir() / "data" / "imagenette2-160"]

    return Source("Imagenette", places, _read_imagenette, "train/ and val/ class folders",
                  ("Imagenette", {"size": "160px"}, "imagenette2-160"),
                  "Download imagenette2-160.tgz from https://github.com/fastai/imagenette, unpack it and set the data "
                  "root to that directory.")
