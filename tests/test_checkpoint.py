from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import spec_of
from trainables.atomic import atomic_open
from trainables.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainables.models import build_model


def _save(tmp_path: Path, fmnist_small, name: str = "m.pt", arch: str = "cnn3") -> Path:
    model = build_model(arch, spec_of(fmnist_small))
    path = tmp_path / name
    save_checkpoint(path, model, {"arch": arch, "dataset": "fmnist", "kind": "pretrain", "test_acc": 0.5})
    return path


def test_round_trip_rebuilds_identical_model(tmp_path: Path, fmnist_small) -> None:
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(fmnist_small))
    save_checkpoint(tmp_path / "a.pt", model, {"arch": "cnn3", "dataset": "fmnist", "seed": 3})
    ckpt = load_checkpoint(tmp_path / "a.pt", arch="cnn3", dataset="fmnist")
    rebuilt = ckpt.build()
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x), model(x))
    assert ckpt.meta["seed"] == 3 and "torch" in ckpt.meta["versions"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp files left


def test_wrong_arch_or_dataset_refused(tmp_path: Path, fmnist_small) -> None:
    path = _save(tmp_path, fmnist_small)
    with pytest.raises(CheckpointError, match="holds arch 'cnn3', not 'vgg16'"):
        load_checkpoint(path, arch="vgg16")
    with pytest.raises(CheckpointError, match="trained on 'fmnist', not 'cifar10'"):
        load_checkpoint(path, dataset="cifar10")


def test_weights_that_do_not_fit_the_arch_are_refused(tmp_path: Path, fmnist_small) -> None:
    path = tmp_path / "bad.pt"
    save_checkpoint(path, torch.nn.Linear(3, 3), {"arch": "cnn3", "dataset": "fmnist"})
    with pytest.raises(CheckpointError, match="do not fit arch 'cnn3'"):
        load_checkpoint(path).build()


# Text files once reached torch's legacy unpickler and ended in a KeyError / IndexError traceback.
@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage", b"hello", b"a b c",
                                     b"NOTES\nremember to try lr 1e-3\n", bytes(range(256))])
def test_corrupt_files_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a (readable )?checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint_refused(tmp_path: Path, fmnist_small) -> None:
    path = _save(tmp_path, fmnist_small)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_arbitrary_pickles_are_not_executed(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"format": "patchtune-ckpt/1", "meta": Evil(), "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_a_plain_state_dict_needs_its_arch_and_data_set(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="plain state dict: say what it is with --arch and --dataset"):
        load_checkpoint(tmp_path / "sd.pt")
    torch.save({"w": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="is not a state dict"):
        load_checkpoint(tmp_path / "list.pt", arch="cnn3", dataset="fmnist")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("half of the new conte")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
