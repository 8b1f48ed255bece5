"""The data sets' real on-disk formats, read into uint8 tensors: IDX files (F-MNIST), CIFAR-10's pickled python
batches, and image files (an ImageFolder tree, Imagenette's among them), decoded once and cached.

CIFAR batches are pickles. They are read with a restricted unpickler that only rebuilds dicts, lists, bytes and
numpy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.atomic import atomic_open
from trainables.data.splits import DataError, Split, cache_dir


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


def idx_split(images_path: Path, labels_path: Path) -> Split:
    """One IDX image file and its label file as a Split ([N, 1, H, W])."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path}: expected N x H x W images with N labels, got {images.shape} and {labels.shape}")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


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


def cifar_split(paths: Sequence[Path]) -> Split:
    parts = [read_cifar_batch(p) for p in paths]
    return Split(torch.from_numpy(np.concatenate([p[0] for p in parts]).copy()),
                 torch.from_numpy(np.concatenate([p[1] for p in parts])))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def decode_images(files: Sequence[tuple[Path, int]], side: int, what: str) -> Split:
    """Image files -> uint8 [N, C, side, side]: the shorter side resized to `side`, then a centre crop. C is 1
    when every image is gray (its colour channels equal, or a gray file), else 3. A file that does not decode
    is a DataError naming it: nothing is skipped."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF
    from tqdm import tqdm

    xs = torch.empty((len(files), 3, side, side), dtype=torch.uint8)
    ys = torch.empty(len(files), dtype=torch.int64)
    gray = True
    for i, (path, label) in enumerate(tqdm(files, desc=f"decoding {what}", unit="img", leave=False, mininterval=2.0,
                                           disable=None)):
        try:
            with Image.open(path) as img:
                rgb = np.asarray(_eight_bit(img).convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot decode image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        img_t = TF.resize(torch.from_numpy(rgb.copy()).permute(2, 0, 1), [side], antialias=True)  # shorter side -> side
        xs[i] = TF.center_crop(img_t, [side, side])
        ys[i] = label
        gray = gray and bool((xs[i, 0] == xs[i, 1]).all() and (xs[i, 1] == xs[i, 2]).all())
    return Split(xs[:, :1].clone() if gray and len(files) else xs, ys)


def _eight_bit(img: Any) -> Any:
    """16-bit, 32-bit and float gray images scaled to 8 bits (PIL's own conversion clips them at 255)."""
    from PIL import Image

    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return img
    values = np.asarray(img, dtype=np.float64)
    top = 1.0 if img.mode == "F" and values.max() <= 1.0 else 65535.0 if img.mode.startswith("I;16") or \
        values.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8), "L")


def _fingerprint(files: Sequence[tuple[Path, int]]) -> str:
    h = hashlib.sha1()
    for path, label in files:
        stat = path.stat()
        h.update(f"{path}:{label}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def decoded_images(files: Sequence[tuple[Path, int]], side: int, name: str, split: str) -> Split:
    """`decode_images`, cached as uint8 tensors keyed by the file list (decoding ~13k JPEGs takes minutes)."""
    cached = cache_dir() / "decoded" / f"{name}-{side}px-{split}-{_fingerprint(files)}.pt"
    if cached.is_file():
        blob = torch.load(cached, weights_only=True)
        return Split(blob["x"], blob["y"])
    decoded = decode_images(files, side, f"{name} {split}")
    with atomic_open(cached, "wb") as f:
        torch.save({"x": decoded.x, "y": decoded.y}, f)
    return decoded
