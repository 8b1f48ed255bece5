"""The libraries' networks: any classification model of torchvision or timm by name (`torchvision/resnet18`,
`timm/convnext_tiny`), built for a data set's classes, with the library's pretrained weights or a weights file.

Pretrained weights come through the library's own download cache (torch.hub's for torchvision, the Hugging Face
hub's for timm). A file is read with `weights_only=True`. When the weights' classifier has another number of
classes than the data set (ImageNet's 1000 against 10), its keys are dropped and the new head keeps its fresh
initialisation; `Weights.replaced_head` names them, for the log and the checkpoint's metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.vocab import (
    ARCHS,
    DEFAULT_WEIGHTS,
    Arch,
    ConfigError,
    DatasetInfo,
    UserError,
    arch_library,
    values,
)


class WeightsError(UserError, RuntimeError):
    """Pretrained weights that cannot be had (offline, an unknown tag) or a file that is not weights for the arch."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """What pretrained weights brought: where from, their normalisation (None: they define none) and the head keys
    dropped because the weights have another number of classes."""

    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    replaced_head: tuple[str, ...] = ()
    weights_classes: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "mean": self.mean, "std": self.std,
                "replaced_head": list(self.replaced_head), "weights_classes": self.weights_classes}

    def head_line(self, arch: str, num_classes: int) -> str | None:
        """The log line saying the classifier was replaced, or None where it was kept."""
        if not self.replaced_head:
            return None
        return (f"{arch}: the weights' {self.weights_classes}-class classifier ({', '.join(self.replaced_head)}) "
                f"was replaced by a freshly initialised {num_classes}-class head")


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("timm models need the timm extra: pip install 'patchtune[timm]'") from None
    return timm


def check_arch(arch: str) -> str:
    """`arch` if its library has it; else a ConfigError naming it with the closest names."""
    library, _, name = arch.partition("/")
    if library == "torchvision":
        known: tuple[str, ...] | list[str] = _torchvision_names()
        if name in known:
            return arch
    elif library == "timm":
        timm = _timm()
        if timm.is_model(name):
            return arch
        known = timm.list_models()
    else:
        if arch in values(Arch):
            return arch
        known = values(Arch)
    close = difflib.get_close_matches(name or arch, known, n=3, cutoff=0.6)
    prefix = f"{library}/" if library in ("torchvision", "timm") else ""
    hint = f" (closest: {', '.join(prefix + c for c in close)})" if close else ""
    raise ConfigError(f"arch {arch!r}: {library or 'patchtune'} has no classification model {name or arch!r}{hint}")


def min_side(arch: str) -> int:
    """The smallest input side `arch` takes (smaller images are upsampled to it by the model's input layer)."""
    library, _, name = arch.partition("/")
    if library == "torchvision":
        import torchvision.models

        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        return int(max(32, *meta.get("min_size", (1, 1))))
    if library == "timm":
        return 32  # timm's CNNs pool adaptively; a fixed-size model (a ViT) fails the probe of `library_net`
    return ARCHS[Arch(arch)].min_side


def check_inputs(arch: str, info: DatasetInfo) -> None:
    """Refuse a chosen image side (`data.image_size`) below what `arch` takes (a fixed one is upsampled), and a
    library network that cannot take the images at all (a ViT built for another size): before any image is read.
    An unknown arch name is refused first."""
    check_arch(arch)
    if info.resizable and info.side < min_side(arch):
        raise ConfigError(f"data.image_size {info.side} is below the smallest input {arch} takes ({min_side(arch)} "
                          f"px): use --image-size {min_side(arch)} or more")
    if arch_library(arch) is not None:
        net, _ = library_net(arch, 2, 3)
        side = max(min_side(arch), 1)
        height, width = (info.height, info.width) if min(info.height, info.width) >= side else (side, side)
        probe(net, arch, torch.zeros(1, 3, height, width))


def probe(model: nn.Module, arch: str, x: torch.Tensor) -> None:
    """A forward pass of a blank batch: a network that cannot take such inputs fails here, in one line."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # shape errors are RuntimeErrors, a ViT's size check an AssertionError
        raise ConfigError(f"arch {arch} cannot take {x.shape[-2]}x{x.shape[-1]} images: "
                          f"{(str(exc).splitlines() or [type(exc).__name__])[0][:160]}") from None
    finally:
        model.train(was_training)


def weights_identity(arch: str, weights: str) -> str:
    """What weights hold, for a cache key: a file by its path, size and time; a torchvision tag by its file (DEFAULT
    resolved); a timm tag with timm's version."""
    if is_weights_file(weights):
        path = Path(weights).expanduser().resolve()
        stat = path.stat() if path.is_file() else None
        return f"{path}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
    library, _, name = arch.partition("/")
    if library == "torchvision":
        import torchvision.models

        tags = torchvision.models.get_model_weights(name)
        return str(tags[weights].url) if weights in tags.__members__ else weights
    return f"timm {_timm().__version__} {name}.{weights}"


def fetch_weights(arch: str, weights: str) -> None:
    """Make sure `weights` of `arch` can be had, before any other work: a file is a state dict; a tag is known
    and in the library's download cache (downloaded now where it is not); else a WeightsError in one line."""
    library, _, name = arch.partition("/")
    if library not in ("torchvision", "timm"):
        raise ConfigError(f"weights {weights!r}: {arch} has no library weights (give weights with torchvision/NAME "
                          "or timm/NAME, or a checkpoint)")
    if is_weights_file(weights):
        read_state_dict(Path(weights))
    elif library == "torchvision":
        _torchvision_pretrained(arch, weights)
    else:
        library_net(arch, 1000, 3, weights)


# torchvision's networks with auxiliary classifiers: built without them (one output in training too); their
# pretrained weights' aux heads are dropped, and their inputs transformed as those weights expect.
_AUX_NETS = ("googlenet", "inception_v3")
_AUX_HEADS = ("AuxLogits.", "aux1.", "aux2.")


def _torchvision_pretrained(arch: str, weights: str) -> tuple[nn.Module, Any]:
    """The pretrained network through torchvision's own loader (its download cache, hash check and key fixes),
    and its weights tag; offline, a WeightsError that says which file to fetch."""
    import torchvision.models

    name = arch.partition("/")[2]
    tags = torchvision.models.get_model_weights(name)
    if weights not in tags.__members__:
        raise WeightsError(f"weights {weights!r}: {arch} has {', '.join(tags.__members__)} (or give a file)")
    tag = tags[weights]
    said = io.StringIO()  # torch.hub's "Downloading: ..." line: shown once it worked, not above the refusal
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            pretrained = torchvision.models.get_model(name, weights=tag, progress=False)
        sys.stderr.write(said.getvalue())
        return pretrained, tag
    except Exception as exc:  # network failures come in many types
        target = Path(torch.hub.get_dir()) / "checkpoints" / tag.url.rsplit("/", 1)[-1]
        raise WeightsError(f"weights {weights} of {arch} cannot be downloaded here ({_reason(exc)}); download "
                           f"{tag.url} where you can and pass the file: --weights FILE (or put it at {target})") from None


def library_net(arch: str, num_classes: int, channels: int, weights: str | None = None) -> tuple[nn.Module, Weights | None]:
    """A library network for `num_classes` classes on `channels`-channel inputs, with `weights` (None: random;
    DEFAULT or a named tag: the library's; otherwise a file path) loaded."""
    library, _, name = arch.partition("/")
    if library == "torchvision":
        if channels != 3:
            raise ConfigError(f"arch {arch}: torchvision models take 3-channel images, not {channels}")
        import torchvision.models

        pretrained, tag = (None, None) if weights is None or is_weights_file(weights) else \
            _torchvision_pretrained(arch, weights)
        extra: dict[str, Any] = {}
        if name in _AUX_NETS:
            extra = {"aux_logits": False, "init_weights": True,
                     "transform_input": bool(getattr(pretrained, "transform_input", False))}
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
        if weights is None:
            return net, None
        if pretrained is None:
            return net, load_into(net, read_state_dict(Path(weights)), arch, source=weights)
        assert tag is not None
        transform = tag.transforms()
        return net, load_into(net, pretrained.state_dict(), arch, source=f"{arch}:{tag.name}",
                              mean=tuple(transform.mean), std=tuple(transform.std))
    timm = _timm()
    if weights is None or is_weights_file(weights):
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)
        if weights is None:
            return net, None
        return net, load_into(net, read_state_dict(Path(weights)), arch, source=weights)
    full = name if weights == DEFAULT_WEIGHTS else f"{name}.{weights}"
    try:
        net = timm.create_model(full, pretrained=True, num_classes=num_classes, in_chans=channels)
    except RuntimeError as exc:  # timm's "Unknown model" / no pretrained tag
        raise WeightsError(f"weights {weights!r} of {arch}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:  # the hub cannot be reached, and the weights are not in its cache
        raise WeightsError(f"weights {weights!r} of {arch} cannot be downloaded here ({_reason(exc)}); download them "
                           f"where you can (timm.create_model({full!r}, pretrained=True) fills the Hugging Face cache, "
                           f"~/.cache/huggingface) and copy the cache, or pass the weights file: --weights FILE") from None
    cfg = net.pretrained_cfg
    return net, Weights(f"{arch}:{cfg.get('tag') or weights}", tuple(cfg["mean"]), tuple(cfg["std"]),
                        replaced_head=(), weights_classes=cfg.get("num_classes"))


def is_weights_file(weights: str) -> bool:
    """A path, not a tag: it names a directory, has a weights file's suffix, or is a file here."""
    return ("/" in weights or "\\" in weights or Path(weights).suffix in (".pt", ".pth", ".bin", ".ckpt")
            or Path(weights).is_file())


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:160].rstrip(": ")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from `path`: the file of `torch.save(model.state_dict())`, or a dict holding one under
    `state_dict` or `model` (as trainers save them), read weights-only. DataParallel's `module.` prefix is dropped."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file can fail in any way (older files are not zip archives)
        why = f"a damaged PyTorch archive: {_reason(exc)}" if zipfile.is_zipfile(path) else "not a file torch.save writes"
        raise WeightsError(f"{path} is not a readable PyTorch state dict ({why})") from None
    return state_dict_in(blob, path)


def state_dict_in(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict a loaded file holds (see `read_state_dict`), or a WeightsError naming the file."""
    if isinstance(blob, dict):
        for key in ("state_dict", "model"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise WeightsError(f"{path} is not a state dict (expected a mapping of parameter names to tensors, as "
                           f"torch.save(model.state_dict(), FILE) writes)")
    keys = list(blob)
    if all(k.startswith("module.") for k in keys):
        blob = {k.removeprefix("module."): v for k, v in blob.items()}
    return dict(blob)


def shape_mismatches(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], arch: str) -> list[str]:
    """The keys whose shapes differ between a network's state (`own`) and `state`; a key one has and the other
    lacks is a WeightsError naming the first (unexpected before missing)."""
    for kind, keys in (("unexpected", [k for k in state if k not in own]), ("missing", [k for k in own if k not in state])):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise WeightsError(f"weights do not fit arch {arch!r}: {kind} key {keys[0]!r}{more}")
    return [k for k in own if own[k].shape != state[k].shape]


def misshapen(key: str, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], arch: str) -> str:
    return (f"weights do not fit arch {arch!r}: {key!r} has shape {tuple(state[key].shape)}, the model's "
            f"{tuple(own[key].shape)}")


def load_into(net: nn.Module, state: dict[str, torch.Tensor], arch: str, *, source: str,
              mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Weights:
    """Load `state` into `net`, dropping the classifier's keys where the weights have another class count; any
    other mismatch is a WeightsError naming the first key that does not fit."""
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_AUX_HEADS)}
    try:
        wrong = shape_mismatches(own, state, arch)
    except WeightsError as exc:
        raise WeightsError(f"{source}: {exc}") from None
    head = [k for k in wrong if own[k].ndim >= 1 and state[k].shape[1:] == own[k].shape[1:]]
    classes = {int(state[k].shape[0]) for k in head}
    if len(head) < len(wrong) or len(classes) > 1:
        k = next((k for k in wrong if k not in head), wrong[0])
        raise WeightsError(f"{source}: {misshapen(k, state, own, arch)}")
    net.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    return Weights(source, mean, std, replaced_head=tuple(head), weights_classes=classes.pop() if classes else None)
