"""Data sets by name, held whole in memory as uint8 tensors, with a seeded train/val split.

Sources, in order: the user's `root` directory, Debian's `dataset-fashion-mnist` package (F-MNIST), then
torchvision's own download into the cache directory (`$PATCHTUNE_CACHE`, default `~/.cache/patchtune`),
under a file lock so parallel trials on one node download once. Formats are the data sets' real on-disk
ones: IDX files (F-MNIST), the CIFAR-10 python pickle batches, Imagenette's folder tree of JPEGs.

CIFAR batches are pickles. They are read with a restricted unpickler that only rebuilds dicts, lists,
bytes and numpy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables import perf
from trainables.atomic import atomic_open
from trainables.config import DataCfg, Dataset
from trainables.vocab import DatasetInfo, SplitName, UserError, dataset_info

__all__ = ["DataBundle", "DataError", "DatasetInfo", "Split", "dataset_info", "iterate_batches", "load_data", "place"]

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
# Imagenette's ten WordNet ids in their canonical (sorted) order = class indices 0..9.
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888605",
)


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


def load_data(cfg: DataCfg) -> DataBundle:
    """Load `cfg.dataset` whole, split train/val with `cfg.split_seed`, and apply the size limits."""
    info = dataset_info(cfg.dataset, cfg.image_size)
    if cfg.dataset is Dataset.FMNIST:
        train, test, source = _load_fmnist(cfg)
    elif cfg.dataset is Dataset.CIFAR10:
        train, test, source = _load_cifar10(cfg)
    else:
        train, test, source = _load_imagenette(cfg, info.height)
    train_part, val_part = split_train_val(train, cfg.val_fraction, cfg.split_seed)
    return DataBundle(
        info=info,
        train=_limit(train_part, cfg.limit_train),
        val=_limit(val_part, cfg.limit_val),
        test=_limit(_shuffled(test, cfg.split_seed), cfg.limit_test),
        source=source,
    )


def split_train_val(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded permutation of the training split; the first `val_fraction` of it becomes validation."""
    n = len(train)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"val_fraction {val_fraction} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.take(perm[n_val:]), train.take(perm[:n_val])


def _shuffled(split: Split, seed: int) -> Split:
    # A fixed shuffle so that `limit_test` takes a class-mixed subset, the same on every run.
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 1))
    return split.take(perm)


def _limit(split: Split, limit: int | None) -> Split:
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


# --------------------------------------------------------------------------------------- F-MNIST (IDX)

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed): big-endian header, then the raw array."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    dtypes: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if type_code not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(raw, dtype=dtypes[type_code], offset=offset)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says shape {shape} but holds {array.size} values (truncated file?)")
    return np.asarray(array.reshape(shape))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fmnist_dir_candidates(root: Path) -> list[Path]:
    # Accept the flat layout (Debian, Zalando's repo) and torchvision's root/FashionMNIST/raw layout.
    return [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]


def _read_fmnist_dir(directory: Path) -> tuple[Split, Split] | None:
    found = {k: [_find_idx(directory, s) for s in stems] for k, stems in _FMNIST_FILES.items()}
    if any(p is None for paths in found.values() for p in paths):
        return None
    splits = []
    for key in ("train", "test"):
        img_path, lbl_path = found[key]
        assert img_path is not None and lbl_path is not None
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{img_path}: expected N x 28 x 28 images with N labels, got {images.shape} and {labels.shape}")
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
        splits.append(Split(x, y))
    return splits[0], splits[1]


def _load_fmnist(cfg: DataCfg) -> tuple[Split, Split, str]:
    looked: list[str] = []
    places = []
    if cfg.root:
        places += _fmnist_dir_candidates(Path(cfg.root))
    places += [DEBIAN_FMNIST, *_fmnist_dir_candidates(cache_dir() / "data")]
    for directory in places:
        looked.append(str(directory))
        loaded = _read_fmnist_dir(directory)
        if loaded is not None:
            return loaded[0], loaded[1], str(directory)
    error = _download(cfg, "FashionMNIST")
    if error is None:
        loaded = _read_fmnist_dir(cache_dir() / "data" / "FashionMNIST" / "raw")
        if loaded is not None:
            return loaded[0], loaded[1], str(cache_dir() / "data" / "FashionMNIST" / "raw")
    raise DataError(
        f"Fashion-MNIST not found: looked for train-images-idx3-ubyte[.gz] in {', '.join(looked)}"
        f"{'; download failed: ' + error if error else ''}. "
        "Install it with `apt-get install dataset-fashion-mnist`, or set the data root to a directory holding the IDX files."
    )


def _download(cfg: DataCfg, torchvision_name: str, **kwargs: object) -> str | None:
    """Let torchvision download into the cache; returns None on success, else a short reason."""
    if not cfg.download:
        return "downloads disabled"
    import torchvision.datasets as tvd
    from filelock import FileLock

    target = cache_dir() / "data"
    target.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(target / f".{torchvision_name}.lock")):
            getattr(tvd, torchvision_name)(root=str(target), download=True, **kwargs)
    except Exception as exc:  # network errors come in many types; report, don't crash
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return None


# --------------------------------------------------------------------------------------- CIFAR-10 (pickles)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: only numpy array reconstruction is allowed, nothing that runs code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 images [N, 3, 32, 32], int64 labels [N])."""
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (top level is {type(batch).__name__})")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 python batch (no data/labels entries)")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: expected N x 3072 uint8 rows and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _read_cifar_dir(directory: Path) -> tuple[Split, Split] | None:
    names = (*_CIFAR_TRAIN, "test_batch")
    if not all((directory / n).is_file() for n in names):
        return None
    parts = [read_cifar_batch(directory / n) for n in names]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    test_x, test_y = parts[5]
    return (
        Split(torch.from_numpy(train_x.copy()), torch.from_numpy(train_y)),
        Split(torch.from_numpy(test_x.copy()), torch.from_numpy(test_y)),
    )


def _load_cifar10(cfg: DataCfg) -> tuple[Split, Split, str]:
    places = []
    if cfg.root:
        places += [Path(cfg.root) / "cifar-10-batches-py", Path(cfg.root)]
    places.append(cache_dir() / "data" / "cifar-10-batches-py")
    for directory in places:
        loaded = _read_cifar_dir(directory)
        if loaded is not None:
            return loaded[0], loaded[1], str(directory)
    error = _download(cfg, "CIFAR10")
    if error is None:
        loaded = _read_cifar_dir(places[-1])
        if loaded is not None:
            return loaded[0], loaded[1], str(places[-1])
    raise DataError(
        f"CIFAR-10 not found: looked for data_batch_1..5 and test_batch in {', '.join(map(str, places))}"
        f"{'; download failed: ' + error if error else ''}. "
        "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and set the data root to that directory."
    )


# --------------------------------------------------------------------------------------- Imagenette (JPEG tree)


def _imagenette_dir_candidates(root: Path) -> list[Path]:
    return [root / name for name in ("imagenette2-160", "imagenette2-320", "imagenette2")] + [root]


def _list_imagenette(directory: Path, split: str) -> list[tuple[Path, int]] | None:
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


def _decode_images(files: Sequence[tuple[Path, int]], side: int, what: str) -> Split:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF
    from tqdm import tqdm

    xs = torch.empty((len(files), 3, side, side), dtype=torch.uint8)
    ys = torch.empty(len(files), dtype=torch.int64)
    for i, (path, label) in enumerate(tqdm(files, desc=f"decoding {what}", unit="img", leave=False, mininterval=2.0)):
        try:
            img = decode_image(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from None
        img = TF.resize(img, [side], antialias=True)  # shorter side -> side
        xs[i] = TF.center_crop(img, [side, side])
        ys[i] = label
    return Split(xs, ys)


def _fingerprint(files: Sequence[tuple[Path, int]]) -> str:
    h = hashlib.sha1()
    for path, label in files:
        stat = path.stat()
        h.update(f"{path.name}:{label}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    return h.hexdigest()[:12]


def _load_imagenette_dir(directory: Path, side: int) -> tuple[Split, Split] | None:
    train_files = _list_imagenette(directory, "train")
    val_files = _list_imagenette(directory, "val")
    if train_files is None or val_files is None:
        return None
    out = []
    for split, files in (("train", train_files), ("val", val_files)):
        # Decoding ~13k JPEGs takes minutes; the decoded uint8 tensors are cached, keyed by the file list.
        cached = cache_dir() / "decoded" / f"imagenette-{side}px-{split}-{_fingerprint(files)}.pt"
        if cached.is_file():
            blob = torch.load(cached, weights_only=True)
            out.append(Split(blob["x"], blob["y"]))
            continue
        decoded = _decode_images(files, side, f"imagenette {split}")
        with atomic_open(cached, "wb") as f:
            torch.save({"x": decoded.x, "y": decoded.y}, f)
        out.append(decoded)
    return out[0], out[1]


def _load_imagenette(cfg: DataCfg, side: int) -> tuple[Split, Split, str]:
    places = _imagenette_dir_candidates(Path(cfg.root)) if cfg.root else []
    places.append(cache_dir() / "data" / "imagenette2-160")
    for directory in places:
        loaded = _load_imagenette_dir(directory, side)
        if loaded is not None:
            return loaded[0], loaded[1], str(directory)
    # torchvision >= 0.17 knows Imagenette; "val" is Imagenette's test split (the paper reports on it).
    error = _download(cfg, "Imagenette", size="160px")
    if error is None:
        loaded = _load_imagenette_dir(places[-1], side)
        if loaded is not None:
            return loaded[0], loaded[1], str(places[-1])
    raise DataError(
        f"Imagenette not found: looked for train/ and val/ class folders in {', '.join(map(str, places))}"
        f"{'; download failed: ' + error if error else ''}. "
        "Download imagenette2-160.tgz from https://github.com/fastai/imagenette, unpack it and set the data root to that directory."
    )
