"""Your own model and your own data: torchvision and timm architectures by name, plain state dicts, library
weights (a file; the download refused offline), and ImageFolder trees written from real Fashion-MNIST images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from doc_blocks import ROOT, blocks
from PIL import Image
from test_cli import _assert_one_line_refusal, patchtune_here

from trainables.checkpoint import load_checkpoint
from trainables.config import DataCfg
from trainables.data import DataError, load_data
from trainables.models import InputSpec, build_model, model_with_weights
from trainables.vocab import FMNIST_CLASSES, ConfigError

CLASSES = (0, 1, 8)  # T-shirt/top, Trouser, Bag: three classes keep the trees small


def _folder(label: int) -> str:
    return FMNIST_CLASSES[label].replace("/", "-")


def write_tree(root: Path, *, suffix: str = ".png", per_class: int = 40, test: int = 10) -> Path:
    """An ImageFolder tree of real F-MNIST images: train/<class>/ (and test/<class>/ unless `test` is 0)."""
    data = load_data(DataCfg(limit_train=3000, limit_test=600))
    for split, source, n in (("train", data.train, per_class), ("test", data.test, test)):
        for label in CLASSES:
            if n == 0:
                continue
            folder = root / split / _folder(label)
            folder.mkdir(parents=True)
            images = source.x[source.y == label][:n, 0].numpy()
            for i, img in enumerate(images):
                Image.fromarray(img).save(folder / f"{i:03d}{suffix}", quality=95)
    return root


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHTUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def png_tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "pngs")


def test_an_imagefolder_tree_of_real_images_loads_with_its_classes_and_channels(png_tree: Path,
                                                                                tmp_path: Path) -> None:
    data = load_data(DataCfg(dataset="imagefolder", root=str(png_tree), image_size=32))
    assert data.info.classes == tuple(sorted(_folder(c) for c in CLASSES)) and data.info.num_classes == 3
    assert data.info.channels == 1 and data.train.x.shape[1:] == (1, 32, 32)  # gray files stay one channel
    assert len(data.test) == 30 and len(data.train) + len(data.val) == 120  # test/ is the test split
    assert data.info.default_eps == pytest.approx(8 / 255) and data.info.paper_eps is None
    # the PNGs decode to the images they were written from (28 px -> 32 px is the only change)
    at28 = load_data(DataCfg(dataset="imagefolder", root=str(png_tree), image_size=32, limit_test=None))
    assert int(at28.train.y.bincount().min()) > 0
    # JPEG, and no test/ folder: a test split is held out, the same whatever the split seed
    jpg = write_tree(tmp_path / "jpgs", suffix=".jpg", test=0)
    one = load_data(DataCfg(dataset="imagefolder", root=str(jpg), image_size=32, split_seed=1))
    two = load_data(DataCfg(dataset="imagefolder", root=str(jpg), image_size=32, split_seed=2))
    assert one.info.channels == 1 and len(one.test) == 12 and torch.equal(one.test.x.sort(0).values,
                                                                         two.test.x.sort(0).values)
    png = load_data(DataCfg(dataset="imagefolder", root=str(png_tree), image_size=32))
    assert (one.train.x.float().mean() - png.train.x.float().mean()).abs() < 3  # JPEG is close, not exact


def test_an_imagefolder_png_is_the_image_it_was_written_from(tmp_path: Path) -> None:
    root = tmp_path / "t"
    img = (np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) * 7) % 251
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(img).save(root / split / name / "x.png")
            Image.fromarray(np.stack([img, img // 2, img // 3], -1)).save(root / split / name / "y.png")
    data = load_data(DataCfg(dataset="imagefolder", root=str(root), image_size=32, val_fraction=0.25))
    assert data.info.channels == 3  # one colour image makes the data set RGB; gray ones are repeated
    everything = torch.cat([data.train.x, data.val.x, data.test.x])
    assert everything.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("broken, message", [
    ("no_train", "has no train/ folder"),
    ("empty", "holds no images"),
    ("missing_class", "has no folder for class 'Trouser'"),
    ("extra_class", "class 'Sneaker' is not one of the training classes"),
    ("corrupt", "cannot decode image"),
])
def test_broken_trees_are_one_line_errors_naming_the_culprit(png_tree: Path, broken: str, message: str) -> None:
    if broken == "no_train":
        (png_tree / "train").rename(png_tree / "training")
    elif broken == "empty":
        for f in (png_tree / "test").rglob("*.png"):
            f.unlink()
    elif broken == "missing_class":
        for f in (png_tree / "test" / "Trouser").iterdir():
            f.unlink()
        (png_tree / "test" / "Trouser").rmdir()
    elif broken == "extra_class":
        (png_tree / "test" / "Sneaker").mkdir()
    else:
        (png_tree / "train" / "Bag" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(DataError, match=message) as err:
        load_data(DataCfg(dataset="imagefolder", root=str(png_tree), image_size=32))
    assert "\n" not in str(err.value)
    if broken == "corrupt":
        assert "Bag/005.png" in str(err.value)


# ------------------------------------------------------------------------------------------- models


GRAY = InputSpec(1, 28, 28, 3, (0.5,), (0.25,))


@pytest.mark.parametrize("arch", ["torchvision/resnet18", "torchvision/mobilenet_v3_small"])
def test_torchvision_weights_file_gets_a_new_head_and_a_plain_state_dict_round_trips(arch: str,
                                                                                     tmp_path: Path) -> None:
    import torchvision

    name = arch.split("/")[1]
    torch.manual_seed(0)
    imagenet = torchvision.models.get_model(name, weights=None)  # the real architecture, 1000 classes
    torch.save(imagenet.state_dict(), tmp_path / "weights.pth")
    model, loaded = model_with_weights(arch, GRAY, str(tmp_path / "weights.pth"))
    assert loaded is not None and loaded.weights_classes == 1000 and loaded.replaced_head
    head_line = loaded.head_line(arch, 3)
    assert head_line is not None and "1000-class classifier" in head_line
    net = model[1]
    kept = {k: v for k, v in imagenet.state_dict().items() if k not in loaded.replaced_head}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in kept.items())
    x = torch.rand(2, 1, 28, 28)
    model.eval()
    assert model(x).shape == (2, 3)  # gray 28 px into a 3-channel network: repeated and upsampled to 32
    # the fine-tuned network saved as a plain state dict, read back as a checkpoint of the same model
    torch.save({"state_dict": net.state_dict()}, tmp_path / "trained.pt")
    ckpt = load_checkpoint(tmp_path / "trained.pt", arch=arch, dataset="imagefolder")
    again = ckpt.build(_info(GRAY))
    again.eval()
    assert ckpt.plain and torch.allclose(again(x), model(x), atol=1e-5)


def _info(spec: InputSpec):  # type: ignore[no-untyped-def]
    import dataclasses

    from trainables.vocab import dataset_info

    info = dataset_info("imagefolder")
    return dataclasses.replace(info, channels=spec.channels, height=spec.height, width=spec.width,
                               num_classes=spec.num_classes, mean=spec.mean, std=spec.std,
                               classes=tuple(str(i) for i in range(spec.num_classes)))


def test_a_timm_model_by_name_with_a_weights_file(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False)  # 1000 classes
    torch.save(net.state_dict(), tmp_path / "resnet10t.pth")
    model, loaded = model_with_weights("timm/resnet10t", GRAY, str(tmp_path / "resnet10t.pth"))
    assert loaded is not None and loaded.weights_classes == 1000 and "fc.weight" in loaded.replaced_head
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    with pytest.raises(ConfigError, match="closest: timm/resnet10t"):
        build_model("timm/resnet10x", GRAY)


def test_a_saved_one_channel_network_takes_colour_images_by_luminance() -> None:
    rgb = InputSpec(3, 28, 28, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model = build_model("cnn3", rgb, channels=1)
    assert model[1][0].in_channels == 1
    gray = torch.rand(2, 1, 28, 28)
    assert torch.allclose(model(gray.expand(-1, 3, -1, -1)), model(gray), atol=1e-5)


def test_weights_default_is_refused_offline_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty download cache
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: offline, on any machine
    tree = write_tree(tmp_path / "t", per_class=4, test=2)
    proc = patchtune_here("pretrain", "--arch", "torchvision/resnet18", "--weights", "DEFAULT", "--dataset",
                          "imagefolder", "--data-root", str(tree), "--image-size", "32", "--out",
                          str(tmp_path / "b.pt"), cwd=tmp_path)
    _assert_one_line_refusal(proc, "weights DEFAULT of torchvision/resnet18 cannot be downloaded here")
    assert "resnet18-f37072fd.pth" in proc.stderr and "--weights FILE" in proc.stderr
    assert not (tmp_path / "b.pt").exists()


# ------------------------------------------------------------------------------- the commands


def test_bad_own_model_and_data_inputs_are_one_line_refusals(tmp_path: Path, png_tree: Path) -> None:
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), tmp_path / "mobilenet.pt")
    (tmp_path / "notes.pt").write_text("lr 1e-3 looked good")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "dict.pt")
    (tmp_path / "empty").mkdir()
    data = ["--dataset", "imagefolder", "--data-root", str(png_tree), "--image-size", "32"]
    cases = [
        (["pretrain", "--arch", "torchvision/resnet81", *data], "closest: torchvision/resnet18"),
        (["pretrain", "--arch", "resnet18", *data], "did you mean torchvision/resnet18 or timm/resnet18"),
        (["eval", "mobilenet.pt", "--arch", "torchvision/resnet18", *data], "unexpected key 'features.0.0.weight'"),
        (["eval", "notes.pt", "--arch", "torchvision/resnet18", *data], "is not a checkpoint or state dict"),
        (["eval", "dict.pt", "--arch", "torchvision/resnet18", *data], "is not a state dict"),
        (["eval", "mobilenet.pt", *data], "plain state dict: say what it is with --arch and --dataset"),
        (["pretrain", "--arch", "torchvision/resnet18", "--dataset", "imagefolder", "--data-root", "empty"],
         "has no train/ folder"),
        (["pretrain", "--arch", "torchvision/inception_v3", "--dataset", "imagefolder", "--data-root",
          str(png_tree), "--image-size", "64"], "data.image_size 64 is below the smallest input "
                                                "torchvision/inception_v3 takes (75 px)"),
        (["pretrain", "--dataset", "imagefolder"], "imagefolder needs the tree's directory"),
        (["pretrain", "--arch", "cnn3", "--weights", "DEFAULT", *data], "cnn3 has no library weights"),
        (["pretrain", "--arch", "torchvision/resnet18", "--dataset", "imagefolder", "--data-root", "no_class",
          "--image-size", "32"], "no_class/test has no folder for class 'Trouser'"),
        (["pretrain", "--arch", "torchvision/resnet18", "--dataset", "imagefolder", "--data-root", "corrupt",
          "--image-size", "32"], "corrupt/train/Bag/005.png: cannot decode image"),
    ]
    shutil.copytree(png_tree, tmp_path / "no_class")
    shutil.rmtree(tmp_path / "no_class" / "test" / "Trouser")
    shutil.copytree(png_tree, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "train" / "Bag" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    for args, message in cases:
        out = ["--out", str(tmp_path / "out.pt")] if args[0] == "pretrain" else []
        proc = patchtune_here(*args, *out, cwd=tmp_path)
        _assert_one_line_refusal(proc, message)
        assert not (tmp_path / "out.pt").exists()


def test_a_spec_with_weights_and_a_checkpoint_is_refused(tmp_path: Path) -> None:
    import yaml

    spec = {"name": "both", "storage": str(tmp_path / "studies"), "model": {"arch": "torchvision/resnet18"},
            "data": {"dataset": "imagefolder", "root": str(tmp_path)},
            "base": {"weights": "DEFAULT", "checkpoint": "base.pt"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = patchtune_here("run", "spec.yaml", cwd=tmp_path)
    _assert_one_line_refusal(proc, "base.weights: 'DEFAULT' pretrains a base; checkpoint 'base.pt' is one already")
    assert not (tmp_path / "studies").exists()


def _run_blocks(test: str, cwd: Path) -> str:
    """The docs' blocks that `test` runs, as written, in a new user's shell (the environment's commands on
    PATH), in `cwd`; their output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    shown = [b for b in blocks(ROOT / "docs" / "guide" / "own-model.md") if b.run_by == f"tests/{Path(__file__).name}::{test}"]
    assert shown, f"docs/guide/own-model.md has no block run by {test}"
    out = ""
    for block in shown:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=1500)
        assert done.returncode == 0, f"{block.where} failed:\n{done.stderr[-3000:]}"
        out += done.stdout + done.stderr
    return out


def test_eval_and_audit_of_a_plain_torchvision_state_dict(tmp_path: Path) -> None:
    import torchvision

    tree = write_tree(tmp_path / "photos")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "mine.pt")
    out = _run_blocks("test_eval_and_audit_of_a_plain_torchvision_state_dict", tmp_path)
    assert "mine.pt" in out and "worst case" in out.lower(), out[-2000:]
    data = ["--arch", "torchvision/resnet18", "--dataset", "imagefolder", "--data-root", str(tree),
            "--image-size", "32"]
    proc = patchtune_here("eval", "mine.pt", *data, "--attacks", "clean,pgd", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["arch"] == "torchvision/resnet18" and result["n"] == 30 and result["dataset"] == "imagefolder"
    assert result["attacks"]["pgd"]["eps"] == pytest.approx(8 / 255)  # no paper eps: 8/255
    proc = patchtune_here("audit", "mine.pt", *data, "--limit", "12", "--no-autoattack", "--strong-steps", "5",
                          "--strong-restarts", "1", "--check-limit", "6", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["audits"][0]
    assert report["n"] == 12 and report["eps"] == pytest.approx(8 / 255) and 0 <= report["worst_case_acc"] <= 1


def test_pretrain_from_a_weights_file_replaces_the_head_and_says_so(tmp_path: Path, png_tree: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18-imagenet.pth")
    proc = patchtune_here("pretrain", "--arch", "torchvision/resnet18", "--weights", "resnet18-imagenet.pth",
                          "--dataset", "imagefolder", "--data-root", str(png_tree), "--image-size", "32",
                          "--epochs", "1", "--limit-train", "60", "--out", "base.pt", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1000-class classifier (fc.weight, fc.bias) was replaced by a freshly initialised 3-class head" in proc.stderr
    base = load_checkpoint(tmp_path / "base.pt")
    assert base.meta["weights"]["replaced_head"] == ["fc.weight", "fc.bias"]
    assert base.meta["weights"]["source"] == "resnet18-imagenet.pth"
    assert base.meta["input"]["classes"] == ["Bag", "T-shirt-top", "Trouser"] and base.meta["data"]["root"] == str(png_tree)


def test_the_docs_example_runs_as_written(tmp_path: Path) -> None:
    """docs/guide/own-model.md's example, end to end: a tree of real images, a ResNet-18 base pretrained by
    `patchtune pretrain`, a study with a method search, its report."""
    out = _run_blocks("test_the_docs_example_runs_as_written", tmp_path)
    study = tmp_path / "runs" / "studies" / "photos-resnet18"
    best = json.loads((study / "best.json").read_text())
    assert best["trials"] and (study / "audit.json").is_file() and (study / "report" / "report.html").is_file()
    assert "THE BASE" in out  # the verdict against the base, in words
    assert load_checkpoint(study / "best.pt").arch == "torchvision/resnet18"
    assert load_checkpoint(tmp_path / "base.pt").meta["input"]["classes"] == ["bag", "sneaker", "trouser", "tshirt"]


def test_networks_with_auxiliary_heads_train_with_one_output_and_fixed_size_ones_are_refused() -> None:
    spec = InputSpec(3, 32, 32, 4, (0.5,) * 3, (0.25,) * 3)
    model = build_model("torchvision/googlenet", spec)
    model.train()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)  # not GoogLeNetOutputs: the loss takes it as it is
    pytest.importorskip("timm")
    from trainables.vocab import dataset_info
    from trainables.zoo import check_inputs

    with pytest.raises(ConfigError, match="timm/vit_tiny_patch16_224 cannot take 64x64 images"):
        check_inputs("timm/vit_tiny_patch16_224", dataset_info("imagefolder", 64))


def test_a_checkpoint_is_refused_on_images_it_was_not_trained_on() -> None:
    import dataclasses

    from trainables.checkpoint import Checkpoint, CheckpointError, input_meta
    from trainables.vocab import dataset_info

    trained_on = dataclasses.replace(dataset_info("imagefolder", 32), classes=("bag", "shoe"), num_classes=2)
    model = build_model("cnn3", InputSpec.of(trained_on))
    ckpt = Checkpoint({"arch": "cnn3", "dataset": "imagefolder", "input": input_meta(trained_on, model)},
                      model.state_dict())
    assert ckpt.build(trained_on)(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(CheckpointError, match=r"trained on classes bag, shoe \(2\), not these images' \(3; 'hat'"):
        ckpt.build(dataclasses.replace(trained_on, classes=("bag", "hat", "shoe"), num_classes=3))
    with pytest.raises(CheckpointError, match="trained on 32x32 images, not 64x64"):
        ckpt.check_fits(dataset_info("imagefolder", 64))


def test_sixteen_bit_gray_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    from trainables.data.formats import decode_images

    values = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    split = decode_images([(tmp_path / "deep.png", 0)], 32, "a 16-bit PNG")
    assert split.x.shape == (1, 1, 32, 32)
    assert abs(split.x.float().mean().item() - (values / 65535 * 255).mean()) < 0.5
