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
from trainables.data.formats import IMAGE_SUFFIXES, cifar_split, decoded_images, idx_split
from trainables.data.splits import DataBundle, DataError, Split, cache_dir, limited, shuffled, split_train_val
from trainables.vocab import (
    IMAGENET_GRAY_MEAN,
    IMAGENET_GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    DatasetInfo,
    dataset_info,
)

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
# Imagenette's ten WordNet ids in their canonical (sorted) order = class indices 0..9.
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888605",
)

@dataclasses.dataclass(frozen=True)
class Found:
    """A data set's splits as read from one directory: `val` where the files have their own (else it is held out
    from `train`), and `classes` where the files name them (an ImageFolder tree)."""

    train: Split
    test: Split
    val: Split | None = None
    classes: tuple[str, ...] | None = None


Reader = Callable[[Path, DataCfg], Found | None]  # None: no copy there


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one data set's files are and how they are read."""

    label: str  # how messages name it
    places: Callable[[Path | None], list[Path]]  # directories to look in, the user's root (or None) first
    read: Reader
    looked_for: str  # what a directory must hold, for the error message
    # torchvision class, its arguments, the directory it fills in the cache (None: nothing to download)
    download: tuple[str, dict[str, Any], str] | None
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
    """Load `cfg.dataset` whole, split train/val with `cfg.split_seed` (unless the files have a validation split),
    and apply the size limits. The description (`info`) takes the classes and channels the files have."""
    found, where = _find(_SOURCES[cfg.dataset], cfg)
    train, val = (found.train, found.val) if found.val is not None else split_train_val(found.train, cfg.val_fraction,
                                                                                         cfg.split_seed)
    channels = max(len_channels(s) for s in (train, val, found.test))
    train, val, test = (with_channels(s, channels) for s in (train, val, found.test))
    info = dataset_info(cfg.dataset, cfg.image_size)
    if found.classes is not None:
        info = dataclasses.replace(info, classes=found.classes, num_classes=len(found.classes))
    if channels != info.channels:
        gray = channels == 1
        info = dataclasses.replace(info, channels=channels, mean=IMAGENET_GRAY_MEAN if gray else IMAGENET_MEAN,
                                   std=IMAGENET_GRAY_STD if gray else IMAGENET_STD)
    return DataBundle(info=info, train=limited(train, cfg.limit_train), val=limited(val, cfg.limit_val),
                      test=limited(shuffled(test, cfg.split_seed), cfg.limit_test), source=str(where))


def peek_info(cfg: DataCfg) -> DatasetInfo:
    """The data set's description before its images are decoded: an ImageFolder tree's classes are its train/
    class folders (a tree without them is refused when it is loaded)."""
    info = dataset_info(cfg.dataset, cfg.image_size)
    if cfg.dataset is not Dataset.IMAGEFOLDER or cfg.root is None:
        return info
    train = Path(cfg.root) / "train"
    classes = tuple(class_folders(train)) if train.is_dir() else ()
    if not classes:
        raise DataError(f"{cfg.root} is not an ImageFolder tree: it has no train/<class>/ folders (expected "
                        f"{cfg.root}/train/<class>/*.png, and optionally val/ and test/)")
    return dataclasses.replace(info, classes=classes, num_classes=len(classes))


def tree_digest(cfg: DataCfg) -> str:
    """What an ImageFolder tree holds, as a digest of its files' paths, sizes and times (no image is read)."""
    import hashlib

    assert cfg.root is not None
    h = hashlib.sha256()
    root = Path(cfg.root)
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def len_channels(split: Split) -> int:
    return int(split.x.shape[1])


def with_channels(split: Split, channels: int) -> Split:
    """A gray split as `channels` (3: repeated), so every split of a data set has the same channels."""
    return split if len_channels(split) == channels else Split(split.x.repeat(1, channels, 1, 1), split.y)


def _find(source: Source, cfg: DataCfg) -> tuple[Found, Path]:
    places = source.places(Path(cfg.root) if cfg.root else None)
    for directory in places:
        loaded = source.read(directory, cfg)
        if loaded is not None:
            return loaded, directory
    if source.download is None:
        raise DataError(f"{source.label} not found: looked for {source.looked_for} in {', '.join(map(str, places))}. "
                        f"{source.get_it}")
    error = _download(cfg, source)
    target = cache_dir() / "data" / source.download[2]
    if error is None:
        loaded = source.read(target, cfg)
        if loaded is not None:
            return loaded, target
    raise DataError(f"{source.label} not found: looked for {source.looked_for} in {', '.join(map(str, places))}"
                    f"{'; download failed: ' + error if error else ''}. {source.get_it}")


def _download(cfg: DataCfg, source: Source) -> str | None:
    """Let torchvision download into the cache; returns None on success, else a short reason."""
    if not cfg.download:
        return "downloads disabled"
    import torchvision.datasets as tvd
    from filelock import FileLock

    assert source.download is not None
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


def _read_fmnist(directory: Path, cfg: DataCfg) -> Found | None:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    found = [_file(directory, s) for s in stems]
    if any(p is None for p in found):
        return None
    images, labels, test_images, test_labels = (p for p in found if p is not None)
    return Found(idx_split(images, labels), idx_split(test_images, test_labels))


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


def _read_cifar(directory: Path, cfg: DataCfg) -> Found | None:
    if not all((directory / n).is_file() for n in _CIFAR_FILES):
        return None
    return Found(cifar_split([directory / n for n in _CIFAR_FILES[:5]]), cifar_split([directory / "test_batch"]))


@register_dataset(Dataset.CIFAR10)
def _cifar10() -> Source:
    def places(root: Path | None) -> list[Path]:
        return [*([root / "cifar-10-batches-py", root] if root else []), cache_dir() / "data" / "cifar-10-batches-py"]

    return Source("CIFAR-10", places, _read_cifar, "data_batch_1..5 and test_batch",
                  ("CIFAR10", {}, "cifar-10-batches-py"),
                  "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and "
                  "set the data root to that directory.")


# ------------------------------------------------------------------------------ ImageFolder trees (Imagenette's too)


@dataclasses.dataclass(frozen=True)
class Tree:
    """Where an ImageFolder tree keeps each split (None: held out from train), and its classes where they are
    fixed (Imagenette's ten WordNet ids; None: the class folders of train/)."""

    test: str | None = "test"
    val: str | None = "val"
    classes: tuple[str, ...] | None = None


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def tree_files(split_dir: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(file, class index) of every image under `split_dir`/<class>/, class folders checked against `classes`."""
    present = class_folders(split_dir)
    for name in classes:
        if name not in present:
            raise DataError(f"{split_dir} has no folder for class {name!r} (every split must have the same classes)")
    extra = [name for name in present if name not in classes]
    if extra:
        raise DataError(f"{split_dir / extra[0]}: class {extra[0]!r} is not one of the training classes "
                        f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    return [(f, label) for label, name in enumerate(classes) for f in sorted((split_dir / name).iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]


def read_tree(directory: Path, cfg: DataCfg, tree: Tree, name: str) -> Found | None:
    """An ImageFolder tree (`directory`/train/<class>/*.png ...) decoded at `cfg`'s image side; None when there
    is no train/ folder. A split without images, a class missing from a split, a file that does not decode: a
    DataError naming it."""
    train_dir = directory / "train"
    if not train_dir.is_dir():
        return None
    classes = tree.classes or tuple(class_folders(train_dir))
    if not classes:
        raise DataError(f"{train_dir} has no class folders (expected {train_dir}/<class>/*.png)")
    listed: dict[str, list[tuple[Path, int]]] = {}  # every split checked before any image is decoded
    for split, folder in (("train", "train"), ("val", tree.val), ("test", tree.test)):
        if folder is None or not (directory / folder).is_dir():
            continue
        listed[split] = tree_files(directory / folder, classes)
        if not listed[split]:
            raise DataError(f"{directory / folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    splits = {split: decoded_images(files, cfg.info.height, name, split) for split, files in listed.items()}
    test = splits.get("test")
    train = splits["train"]
    if test is None:  # held out with a fixed seed: the same test images whatever the split seed
        train, test = split_train_val(train, cfg.val_fraction, TEST_HOLDOUT_SEED)
    return Found(train, test, splits.get("val"), classes if tree.classes is None else None)


TEST_HOLDOUT_SEED = 12345


@register_dataset(Dataset.IMAGEFOLDER)
def _imagefolder() -> Source:
    def read(directory: Path, cfg: DataCfg) -> Found | None:
        found = read_tree(directory, cfg, Tree(), "imagefolder")
        if found is None:
            raise DataError(f"{directory} is not an ImageFolder tree: it has no train/ folder (expected "
                            f"{directory}/train/<class>/*.png, and optionally val/ and test/)")
        return found

    return Source("ImageFolder tree", lambda root: [root] if root else [], read, "train/<class>/ folders", None,
                  "Set the data root to a directory holding train/<class>/*.png (and optionally val/, test/).")


@register_dataset(Dataset.IMAGENETTE)
def _imagenette() -> Source:
    def places(root: Path | None) -> list[Path]:
        names = ("imagenette2-160", "imagenette2-320", "imagenette2")
        return [*([root / n for n in names] + [root] if root else []), cache_dir() / "data" / "imagenette2-160"]

    # Imagenette's "val" is its test split (the paper reports on it); ours is held out from train.
    def read(directory: Path, cfg: DataCfg) -> Found | None:
        if not (directory / "val").is_dir():
            return None
        return read_tree(directory, cfg, Tree(test="val", val=None, classes=IMAGENETTE_WNIDS), "imagenette")

    return Source("Imagenette", places, read, "train/ and val/ class folders",
                  ("Imagenette", {"size": "160px"}, "imagenette2-160"),
                  "Download imagenette2-160.tgz from https://github.com/fastai/imagenette, unpack it and set the data "
                  "root to that directory.")
