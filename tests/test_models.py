from __future__ import annotations

import pytest
import torch

from trainables.models import InputLayer, InputSpec, build_model, model_names
from trainables.vocab import Arch, ConfigError, Dataset, dataset_info, values


def _input(dataset: Dataset, side: int | None = None) -> InputSpec:
    return InputSpec.of(dataset_info(dataset, side))


def _fits(arch: str, spec: InputSpec) -> bool:
    try:
        build_model(arch, spec)
    except ConfigError:  # e.g. vgg16 on 28x28 F-MNIST: refused, tested below
        return False
    return True


# Every registered model on every data set's input shape it accepts (Imagenette at 64 px keeps it fast).
INPUTS = [_input(d, 64 if d is Dataset.IMAGENETTE else None) for d in Dataset]
CASES = [(arch, spec) for arch in model_names() for spec in INPUTS if _fits(arch, spec)]
FMNIST = _input(Dataset.FMNIST)


def test_registry_has_a_factory_for_every_arch() -> None:
    assert model_names() == sorted(values(Arch))


@pytest.mark.parametrize("name, spec", CASES, ids=[f"{a}-{s.height}px-{s.channels}ch" for a, s in CASES])
def test_forward_backward_channels_last(name: str, spec: InputSpec) -> None:
    torch.manual_seed(0)
    model = build_model(name, spec).eval()
    assert isinstance(model[0], InputLayer)
    x = torch.rand(3, spec.channels, spec.height, spec.width)
    out = model(x)
    assert out.shape == (3, spec.num_classes) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, out.detach(), atol=1e-4, rtol=1e-4)


def test_normalize_is_the_first_layer_and_uses_the_spec() -> None:
    spec = InputSpec(1, 28, 28, 10, (0.5,), (0.25,))
    model = build_model("cnn3", spec)
    x = torch.full((1, 1, 28, 28), 0.75)
    assert torch.allclose(model[0](x), torch.ones_like(x))


def test_unknown_or_unfit_models_are_refused() -> None:
    with pytest.raises(ConfigError, match="'resnet'"):
        build_model("resnet", FMNIST)
    with pytest.raises(ConfigError, match="closest: torchvision/resnet18"):
        build_model("torchvision/resnet81", FMNIST)
    # a fixed image side below the arch's smallest is upsampled by the input layer: 28 px F-MNIST into VGG-16
    assert build_model("vgg16", FMNIST)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
