"""Models by name. Normalisation is each model's first layer, so inputs and attack budgets stay in [0, 1] pixels.

Factories are device-agnostic (no `.cuda()`); callers move the model. A new architecture is a member of
`trainables.vocab.Arch` (with its paper defaults in `vocab.ARCHS`) plus a factory registered here with
`@register_model(Arch.NAME)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from trainables.vocab import Arch, ConfigError, DatasetInfo, parse_enum


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model needs to know about its data: shape, classes, and the per-channel normalisation."""

    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, info: DatasetInfo) -> InputSpec:
        """What a model needs from a data set's description."""
        return cls(info.channels, info.height, info.width, info.num_classes, info.mean, info.std)


ModelFactory = Callable[[InputSpec], nn.Module]
_REGISTRY: dict[Arch, ModelFactory] = {}


def register_model(arch: Arch) -> Callable[[ModelFactory], ModelFactory]:
    def wrap(factory: ModelFactory) -> ModelFactory:
        if arch in _REGISTRY:
            raise ValueError(f"model {arch.value!r} registered twice")
        _REGISTRY[arch] = factory
        return factory

    return wrap


def model_names() -> list[str]:
    return sorted(a.value for a in _REGISTRY)


def build_model(name: Arch | str, spec: InputSpec) -> nn.Module:
    """Build `name` for inputs described by `spec`; a ConfigError names an unknown architecture."""
    arch = parse_enum(Arch, name, "arch")
    if arch not in _REGISTRY:
        raise ConfigError(f"arch {arch.value!r} has no registered factory (registered: {', '.join(model_names())})")
    return nn.Sequential(Normalize(spec.mean, spec.std), _REGISTRY[arch](spec))


def fresh_model(name: Arch | str, spec: InputSpec, seed: int) -> nn.Module:
    """A fresh initialisation of `name` drawn from `seed` alone: what "from scratch" means everywhere (pretraining,
    `patchtune finetune --from-scratch`, the reproduction's adversarial training from scratch)."""
    torch.manual_seed(seed)
    return build_model(name, spec)


class Normalize(nn.Module):
    """(x - mean) / std per channel, as buffers so they move with the model and are saved with it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@register_model(Arch.CNN3)
def cnn3(spec: InputSpec) -> nn.Module:
    """The paper's custom F-MNIST CNN: three 3x3 conv layers, each followed by ReLU (and 2x2 max-pooling),
    then a two-layer classifier. 28x28 -> 14 -> 7 -> 3, so 128 * 3 * 3 = 1152 features."""
    h, w = spec.height, spec.width
    for _ in range(3):
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ConfigError(f"cnn3 needs images of at least 8x8 pixels, got {spec.height}x{spec.width}")
    return nn.Sequential(
        nn.Conv2d(spec.channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * h * w, 128), nn.ReLU(inplace=True),
        nn.Linear(128, spec.num_classes),
    )


_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model(Arch.VGG16)
def vgg16(spec: InputSpec) -> nn.Module:
    """VGG-16 (configuration D, 13 conv + 3 FC) with batch norm, sized for the input.

    32x32 CIFAR-10: the five pools leave 1x1x512, so the classifier is the usual CIFAR head 512-512-512-C.
    Larger inputs (Imagenette, 160 px -> 5x5) are average-pooled to 1x1 first, which keeps the head small
    enough to train from scratch here (ImageNet's 4096-wide 7x7 head holds 120 M parameters).
    """
    if min(spec.height, spec.width) < 32:
        raise ConfigError(f"vgg16 needs images of at least 32x32 pixels, got {spec.height}x{spec.width}")
    layers: list[nn.Module] = []
    channels = spec.channels
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(512, spec.num_classes),
    )
