from __future__ import annotations

import pytest
import torch

from trainables.config import ConfigError
from trainables.models import InputSpec, Normalize, build_model, model_names

SPECS = {
    "cnn3": [InputSpec(1, 28, 28, 10, (0.286,), (0.353,)), InputSpec(3, 32, 32, 10, (0.5,) * 3, (0.25,) * 3)],
    "vgg16": [InputSpec(3, 32, 32, 10, (0.5,) * 3, (0.25,) * 3), InputSpec(3, 64, 64, 10, (0.5,) * 3, (0.25,) * 3)],
}


def test_registry_lists_the_paper_models() -> None:
    assert {"cnn3", "vgg16"} <= set(model_names())


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("which", [0, 1])
def test_forward_backward_channels_last(name: str, which: int) -> None:
    spec = SPECS[name][which]
    torch.manual_seed(0)
    model = build_model(name, spec).eval()
    assert isinstance(model[0], Normalize)
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
        build_model("resnet", SPECS["cnn3"][0])
    with pytest.raises(ConfigError, match="at least 32x32"):
        build_model("vgg16", SPECS["cnn3"][0])
