"""Loaders on real files: real Fashion-MNIST, and CIFAR-10 / Imagenette files written here in their real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg

import trainables.data.sources as sources
from trainables.config import ConfigError, DataCfg, Dataset
from trainables.data import IMAGENETTE_WNIDS, DataError, iterate_batches, load_data, read_idx


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHTUNE_CACHE", str(tmp_path / "cache"))


def test_real_fmnist_full_sizes_and_disjoint_split() -> None:
    d = load_data(DataCfg())
    assert (len(d.train), len(d.val), len(d.test)) == (54000, 6000, 10000)
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (1, 28, 28)
    assert set(d.train.y.unique().tolist()) == set(range(10))
    # the validation split is held out from training: no image appears in both
    train_keys = {hash(row.numpy().tobytes()) for row in d.train.x[:20000].flatten(1)}
    overlap = sum(hash(row.numpy().tobytes()) in train_keys for row in d.val.x.flatten(1))
    assert overlap < 10  # F-MNIST has a handful of exact duplicate images, nothing more


def test_split_is_deterministic_and_seeded() -> None:
    a = load_data(DataCfg(limit_train=100, limit_val=50, limit_test=30))
    b = load_data(DataCfg(limit_train=100, limit_val=50, limit_test=30))
    c = load_data(DataCfg(limit_train=100, limit_val=50, split_seed=1))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.val.x, c.val.x)
    assert (len(a.train), len(a.val), len(a.test)) == (100, 50, 30)
    assert len(a.test.y.unique()) >= 8  # the test subset is shuffled, so it mixes classes


def test_read_idx_round_trip_and_truncation(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2, 3, 4) + arr.tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b")


def test_fmnist_from_data_root_in_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 60), ("t10k", 20)):
        imgs = np.full((n, 28, 28), 7, dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + imgs.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, n) + labels.tobytes())
    d = load_data(DataCfg(root=str(tmp_path / "root"), val_fraction=0.25))
    assert (len(d.train), len(d.val), len(d.test)) == (45, 15, 20)
    assert d.source.endswith("raw") and int(d.train.x.max()) == 7


def test_missing_fmnist_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "DEBIAN_FMNIST", tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        load_data(DataCfg(root=str(tmp_path), download=False))
    msg = str(err.value)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg and "downloads disabled" in msg


# ---------------------------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, n_per_batch: int = 20) -> np.ndarray:
    """CIFAR-10's python format: pickled dicts with bytes keys, `data` N x 3072 uint8 (R, G, B planes)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
                 b"data": data, b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)]}
        with (d / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    with (d / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": n_per_batch}, f, protocol=2)
    assert first is not None
    return first


def test_cifar10_python_batches(tmp_path: Path) -> None:
    first = _write_cifar(tmp_path)
    d = load_data(DataCfg(dataset="cifar10", root=str(tmp_path), val_fraction=0.1, download=False))
    assert (len(d.train) + len(d.val), len(d.test)) == (100, 20)
    assert d.train.x.shape[1:] == (3, 32, 32) and d.info.num_classes == 10
    # channel planes: the first 1024 bytes of a row are the red channel, row-major
    all_train = torch.cat([d.train.x, d.val.x])
    target = torch.from_numpy(first[0].reshape(3, 32, 32))
    assert any(torch.equal(img, target) for img in all_train)


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    _write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with (tmp_path / "cifar-10-batches-py" / "data_batch_3").open("wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        load_data(DataCfg(dataset="cifar10", root=str(tmp_path), download=False))
    assert not (tmp_path / "pwned").exists()


def test_cifar10_missing_gives_instructions(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cs.toronto.edu"):
        load_data(DataCfg(dataset="cifar10", root=str(tmp_path), download=False))


# ---------------------------------------------------------------------------------------------- Imagenette


def _write_imagenette(root: Path, per_class: int = 2) -> None:
    """Imagenette's tree: imagenette2-160/{train,val}/<wnid>/*.JPEG, images of varied aspect ratio."""
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label, wnid in enumerate(IMAGENETTE_WNIDS):
            folder = root / "imagenette2-160" / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = (160, 213) if i % 2 == 0 else (240, 160)
                img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
                # a flat colour per class (red = 25 * label) that JPEG and resizing keep recognisable
                img[0], img[1], img[2] = label * 25, 255 - label * 25, 128
                write_jpeg(img, str(folder / f"{wnid}_{i}.JPEG"), quality=95)


def test_imagenette_jpeg_tree_resized_and_cached(tmp_path: Path) -> None:
    _write_imagenette(tmp_path / "data")
    cfg = DataCfg(dataset="imagenette", root=str(tmp_path / "data"), image_size=64, val_fraction=0.25, download=False)
    d = load_data(cfg)
    assert d.train.x.shape[1:] == (3, 64, 64) and len(d.test) == 20 and len(d.train) + len(d.val) == 20
    assert d.info.height == 64
    # the class survives decoding and resizing: red channel ~ 25 * label
    red = d.test.x[:, 0].float().mean((1, 2))
    assert torch.allclose(red, d.test.y.float() * 25, atol=6)
    cached = list((tmp_path / "cache" / "decoded").glob("imagenette-64px-*.pt"))
    assert len(cached) == 2
    again = load_data(cfg)
    assert torch.equal(again.test.x, d.test.x)


def test_imagenette_rejects_unknown_class_folder(tmp_path: Path) -> None:
    _write_imagenette(tmp_path / "data", per_class=1)
    (tmp_path / "data" / "imagenette2-160" / "train" / "cats").mkdir()
    with pytest.raises(DataError, match="cats"):
        load_data(DataCfg(dataset="imagenette", root=str(tmp_path / "data"), download=False))


def test_image_size_only_for_imagenette() -> None:
    with pytest.raises(ConfigError, match="image_size"):
        DataCfg(dataset=Dataset.FMNIST, image_size=64)


def test_iterate_batches_covers_every_sample_once(fmnist_small) -> None:
    seen = []
    for x, y in iterate_batches(fmnist_small.val, 64, torch.device("cpu"), shuffle=True,
                                generator=torch.Generator().manual_seed(0)):
        assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
        seen.append(y)
    assert torch.equal(torch.cat(seen).sort().values, fmnist_small.val.y.sort().values)
