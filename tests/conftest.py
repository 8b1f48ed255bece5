"""Shared fixtures: real Fashion-MNIST (small subsets) and a tiny cnn3 trained once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from trainables.config import DataCfg, TrainCfg
from trainables.data import DataBundle, load_data
from trainables.engine import fit, pick_device
from trainables.models import InputSpec, build_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The suite gives the same result on every run: property tests draw a fixed sequence of examples (derandomize) and
# keep no example database between runs. `HYPOTHESIS_PROFILE=explore make test` searches fresh examples instead;
# whatever it finds goes into the suite as an explicit case.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=500, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def device() -> torch.device:
    # CPU by default; TORCH_DEVICE=cuda runs the same suite on a GPU.
    return pick_device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def fmnist_small() -> DataBundle:
    """Real F-MNIST: 4000 train / 500 val / 500 test images."""
    return load_data(DataCfg(limit_train=4000, limit_val=500, limit_test=500))


def spec_of(data: DataBundle) -> InputSpec:
    return InputSpec.of(data.info)


@pytest.fixture(scope="session")
def trained_cnn3(fmnist_small: DataBundle, device: torch.device) -> torch.nn.Module:
    """cnn3 after 2 epochs on 4000 real images (~80% clean accuracy): undefended, easy to attack."""
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(fmnist_small)).to(device)
    fit(model, fmnist_small.train, fmnist_small.val, TrainCfg(epochs=2, lr=2e-3, batch_size=64), device=device,
        progress=False)
    model.eval()
    return model


@pytest.fixture
def cnn3_in_train_mode(trained_cnn3: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The shared trained cnn3 switched to train mode (attacks must switch to eval and back), restored to eval
    whatever the test does, so a failing test cannot leave the session fixture in the wrong mode."""
    trained_cnn3.train()
    try:
        yield trained_cnn3
    finally:
        trained_cnn3.eval()


@pytest.fixture(scope="session")
def tiny_study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real study (4 trials, 1 epoch) on real Ray, shared by the notebook and report tests."""
    from study.runner import run_study
    from study.spec import parse_spec

    storage = tmp_path_factory.mktemp("studies")
    spec = parse_spec({
        "name": "nbstudy", "dataset": "fmnist", "storage": str(storage),
        "base": {"pretrain": {"epochs": 1, "limit_train": 2000}},
        "data": {"limit_train": 600, "limit_test": 100},
        "search": {"lr": {"adam": [1e-4, 1e-2], "rmsprop": [1e-4, 1e-2]}, "batch_size": [64], "patch_size": [4, 10]},
        "epochs": 1, "objective": {"metric": "robust_auc", "eps_grid": [0.02, 0.05], "val_limit": 100},
        "num_samples": 4, "max_concurrent": 2, "scheduler": {"type": "fifo"}, "sampler": {"type": "random", "seed": 1},
        "audit": {"enabled": True, "limit": 48, "strong_steps": 10, "strong_restarts": 2, "check_limit": 24,
                  "components": ["apgd-ce", "square"]},
    })
    return run_study(spec)


@pytest.fixture(scope="session")
def tiny_repro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real `patchtune reproduce fmnist` (2 seeds x 6 methods) on real Ray."""
    from study.reproduce import make_spec, reproduce

    spec = make_spec("fmnist", seeds=2, limit_train=300, limit_test=40, pretrain_epochs=1, epochs=1, eot_draws=2,
                     long_epochs=2, at_from_scratch=True)
    return reproduce(spec, tmp_path_factory.mktemp("repro"), name="tiny")


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real base checkpoint (cnn3, 1 epoch on 3000 F-MNIST images) for study tests."""
    from trainables.checkpoint import save_checkpoint
    from trainables.pipeline import pretrain

    cfg = DataCfg(limit_train=3000, limit_val=300, limit_test=300)
    model, meta = pretrain("cnn3", load_data(cfg), cfg, TrainCfg(epochs=1, lr=2e-3), device=pick_device("cpu"),
                           progress=False)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_checkpoint(path, model, meta)
    return path
