"""Models by name: the paper's (`cnn3`, `vgg16`) and any classification model of torchvision or timm
(`trainables.zoo`). Every model is `nn.Sequential(InputLayer, network)`: the input layer takes images in [0, 1]
pixels, so inputs and attack budgets stay in pixel units whatever the network expects: it converts gray images to
the network's three channels (or colour to its one), upsamples images smaller than the network takes, and
normalises with the weights' mean and std (or the data set's).

Factories are device-agnostic (no `.cuda()`); callers move the model. A new paper architecture is a member of
`trainables.vocab.Arch` (with its defaults in `vocab.ARCHS`) plus a factory registered here with
`@register_model(Arch.NAME)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from trainables import zoo
from trainables.vocab import Arch, ConfigError, DatasetInfo, arch_library, parse_enum


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


def build_model(name: Arch | str, spec: InputSpec, *, channels: int | None = None) -> nn.Module:
    """`name` with fresh weights for inputs described by `spec`; `channels`: the network's input channels where
    they differ from the images' (a saved network's). A ConfigError names an unknown architecture."""
    model, _ = model_with_weights(name, spec, None, channels=channels)
    return model


def model_with_weights(name: Arch | str, spec: InputSpec, weights: str | None, *,
                       channels: int | None = None) -> tuple[nn.Module, zoo.Weights | None]:
    """`name` for `spec`'s images with `weights` (a library model's: DEFAULT, a tag or a file; None: fresh) and
    what they brought (their normalisation, a replaced head)."""
    arch = str(getattr(name, "value", name))
    if arch_library(arch) is None:
        arch_enum = parse_enum(Arch, arch, "arch")
        if weights is not None:
            zoo.fetch_weights(arch, weights)  # refuses: the paper's architectures have no library weights
        net_channels = channels or spec.channels
        height, width = _upsampled(spec.height, spec.width, zoo.min_side(arch))
        net = _REGISTRY[arch_enum](dataclasses.replace(spec, channels=net_channels, height=height, width=width))
        loaded = None
    else:
        zoo.check_arch(arch)
        net_channels = channels or 3
        net, loaded = zoo.library_net(arch, spec.num_classes, net_channels, weights)
    mean = loaded.mean if loaded is not None and loaded.mean is not None else spec.mean
    std = loaded.std if loaded is not None and loaded.std is not None else spec.std
    model = nn.Sequential(InputLayer(mean, std, channels=net_channels, min_side=zoo.min_side(arch)), net)
    if arch_library(arch) is not None:
        zoo.probe(model, arch, torch.zeros(1, spec.channels, spec.height, spec.width))
    return model, loaded


def fresh_model(name: Arch | str, spec: InputSpec, seed: int, *, channels: int | None = None) -> nn.Module:
    """A fresh initialisation of `name` drawn from `seed` alone: what "from scratch" means everywhere (pretraining,
    `patchtune finetune --from-scratch`, the reproduction's adversarial training from scratch)."""
    torch.manual_seed(seed)
    return build_model(name, spec, channels=channels)


def network_channels(state: dict[str, torch.Tensor]) -> int | None:
    """The input channels of a saved network: those of its first convolution (None: it has none)."""
    return next((int(v.shape[1]) for k, v in state.items() if v.ndim == 4 and k.endswith("weight")), None)


class InputLayer(nn.Module):
    """Pixels in [0, 1] to what the network takes: gray to its three channels (or colour to its one, by
    luminance), images below its smallest side upsampled (bilinear), then (x - mean) / std per channel. The mean
    and std are buffers, so they move with the model and are saved with it."""

    mean: torch.Tensor
    std: torch.Tensor
    _LUMA = (0.299, 0.587, 0.114)

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, channels: int | None = None,
                 min_side: int = 1) -> None:
        super().__init__()
        channels = channels or len(mean)
        self.channels, self.min_side = channels, min_side
        self.register_buffer("mean", _per_channel(mean, channels).view(1, -1, 1, 1))
        self.register_buffer("std", _per_channel(std, channels).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.channels == 1:
            luma = torch.tensor(self._LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * luma).sum(1, keepdim=True)
        size = _upsampled(x.shape[-2], x.shape[-1], self.min_side)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def _upsampled(height: int, width: int, min_side: int) -> tuple[int, int]:
    """The size an image of `height` x `width` takes for a network whose smallest side is `min_side`."""
    side = min(height, width)
    if side >= min_side:
        return height, width
    return round(height * min_side / side), round(width * min_side / side)


def _per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    """A statistic per channel of the network: a gray one repeated for colour, a colour one averaged for gray."""
    t = torch.tensor(list(values), dtype=torch.float32)
    if len(t) == channels:
        return t
    if len(t) == 1:
        return t.repeat(channels)
    return t.mean().view(1).repeat(channels)


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
