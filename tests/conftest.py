"""Shared fixtures: real Fashion-MNIST (small subsets) and a tiny cnn3 trained once per session."""

from __future__ import annotations

import os

import pytest
import torch

from trainables.config import DataCfg, TrainCfg
from trainables.data import DataBundle, load_data
from trainables.engine import fit, pick_device
from trainables.models import InputSpec, build_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def device() -> torch.device:
    # CPU by default; TORCH_DEVICE=cuda runs the same suite on a GPU.
    return pick_device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def fmnist_small() -> DataBundle:
    """Real F-MNIST: 4000 train / 500 val / 500 test images."""
    return load_data(DataCfg(limit_train=4000, limit_val=500, limit_test=500))


def spec_of(data: DataBundle) -> InputSpec:
    i = data.info
    return InputSpec(i.channels, i.height, i.width, i.num_classes, i.mean, i.std)


@pytest.fixture(scope="session")
def trained_cnn3(fmnist_small: DataBundle, device: torch.device) -> torch.nn.Module:
    """cnn3 after 2 epochs on 4000 real images (~80% clean accuracy): undefended, easy to attack."""
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(fmnist_small)).to(device)
    fit(model, fmnist_small.train, fmnist_small.val, TrainCfg(epochs=2, lr=2e-3, batch_size=64), device=device,
        progress=False)
    model.eval()
    return model
