"""Every name a user can type or a table can show, declared once. No torch, no Ray.

The CLI's `choices=`, the study spec's validation, the Ray trainables and `analysis/` all derive from the
Enums and tables here, so a new data set, architecture, op, attack, objective, AutoAttack component or
evaluation setting is added in one place. This module is cheap to import (argparse builds its `--help` from it).
Units: pixel budgets are in [0, 1] image units, sizes in pixels.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import TypeVar


class UserError(Exception):
    """A problem the user can fix (a bad value, a missing or foreign file, an unreachable cluster), its message
    naming the culprit: `patchtune` prints it on one line and exits 2. Declared here, in the light vocabulary, so
    the CLI can catch every kind without importing torch."""


class Name(str, enum.Enum):
    """A name users type: it prints as its value ("adam", not "Optimizer.ADAM"), as `enum.StrEnum` does, and is
    interchangeable with it as a key."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __hash__(self) -> int:  # equal to its value, so it hashes like it: a mapping keyed by names takes either
        return hash(self.value)


class ConfigError(UserError, ValueError):
    """A user-supplied setting is invalid; the message names the setting and the bad value."""


class Dataset(Name):
    FMNIST = "fmnist"
    CIFAR10 = "cifar10"
    IMAGENETTE = "imagenette"
    IMAGEFOLDER = "imagefolder"  # the user's own images: torchvision's ImageFolder layout under data.root


class Arch(Name):
    """The paper's architectures; `trainables.models` registers one factory per member. Any classification model
    of a library is named `LIBRARY/NAME` (`ARCH_LIBRARIES`): `torchvision/resnet18`, `timm/convnext_tiny`."""

    CNN3 = "cnn3"
    VGG16 = "vgg16"


ARCH_LIBRARIES = ("torchvision", "timm")  # model registries an arch name may point into ("torchvision/resnet18")
ARCH_PATTERN = r"^(cnn3|vgg16|(torchvision|timm)/[A-Za-z0-9_.-]+)$"
DEFAULT_WEIGHTS = "DEFAULT"  # the library's recommended pretrained weights of an architecture


def check_arch_name(value: object) -> str:
    """`value` as an arch name (a paper architecture or LIBRARY/NAME); whether the library has NAME is checked
    where the library is imported (`trainables.zoo.check_arch`)."""
    text = str(getattr(value, "value", value)).strip()
    library, _, name = text.partition("/")
    if text.lower() in values(Arch):
        return text.lower()
    if library in ARCH_LIBRARIES and name and all(c.isalnum() or c in "_.-" for c in name):
        return text
    hint = (f" (did you mean {' or '.join(f'{lib}/{text}' for lib in ARCH_LIBRARIES)}?)" if "/" not in text else "")
    raise ConfigError(f"must be {', '.join(values(Arch))}, torchvision/NAME or timm/NAME; got {text!r}{hint}")


def arch_library(arch: str) -> str | None:
    """The library an arch name points into, or None for the paper's architectures."""
    library, sep, _ = arch.partition("/")
    return library if sep else None


class Optimizer(Name):
    ADAM = "adam"
    RMSPROP = "rmsprop"
    SGD = "sgd"
    ADAMW = "adamw"


OPTIMIZER_LABELS: Mapping[Optimizer, str] = {Optimizer.ADAM: "Adam", Optimizer.RMSPROP: "RMSProp",
                                             Optimizer.SGD: "SGD", Optimizer.ADAMW: "AdamW"}


class PatchOp(Name):
    ROTATE = "rotate"
    TRANSLATE = "translate"
    FLIP = "flip"
    NOISE = "noise"
    OCCLUDE = "occlude"


class AttackName(Name):
    CLEAN = "clean"
    FGSM = "fgsm"
    IFGSM = "ifgsm"
    PGD = "pgd"


class Method(Name):
    """How fine-tuning builds its training batches (trainables/methods.py); each but `patch` can be combined with
    the patch augmentation (the adversary then attacks clean (+) patch-modified images)."""

    PATCH = "patch"  # the paper's: clean (+) patch-modified images, no adversary
    FGSM_RS = "fgsm_rs"  # FGSM from a random start, alpha = 1.25 eps (Wong, Rice & Kolter 2020)
    PGD_AT = "pgd_at"  # PGD-k adversarial training, alpha = 2.5 eps / k (Madry et al. 2018)
    TRADES = "trades"  # CE on clean + beta * KL(adversarial || clean) (Zhang et al. 2019)
    # The paper's Table 2 baselines: adversarial training on its own attacks, at its alpha 0.01 and 10 steps
    PAPER_FGSM_AT = "paper_fgsm_at"
    PAPER_IFGSM_AT = "paper_ifgsm_at"
    PAPER_PGD_AT = "paper_pgd_at"


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    label: str  # how tables and figures name it
    params: tuple[str, ...]  # the `MethodCfg` parameters it reads (besides the optimizer and its lr)
    attack: AttackName | None  # the attack that crafts its training examples (None: no adversary)
    paper_baseline: bool = False  # one of the paper's adversarial-training baselines (Table 2)


METHODS: Mapping[Method, MethodInfo] = {
    Method.PATCH: MethodInfo("patch", (), None),
    Method.FGSM_RS: MethodInfo("FGSM-RS", ("train_eps", "eps_warmup"), AttackName.PGD),
    Method.PGD_AT: MethodInfo("PGD-AT", ("train_eps", "at_steps", "eps_warmup"), AttackName.PGD),
    Method.TRADES: MethodInfo("TRADES", ("train_eps", "at_steps", "beta", "eps_warmup"), AttackName.PGD),
    Method.PAPER_FGSM_AT: MethodInfo("paper FGSM-AT", ("train_eps",), AttackName.FGSM, paper_baseline=True),
    Method.PAPER_IFGSM_AT: MethodInfo("paper IFGSM-AT", ("train_eps", "at_steps", "at_alpha"), AttackName.IFGSM,
                                      paper_baseline=True),
    Method.PAPER_PGD_AT: MethodInfo("paper PGD-AT", ("train_eps", "at_steps", "at_alpha"), AttackName.PGD,
                                    paper_baseline=True),
}
# The robust fine-tuning methods (an adversary at a step size that reaches eps), the paper's baselines aside.
ROBUST_METHODS: tuple[Method, ...] = tuple(m for m, i in METHODS.items() if i.attack is not None and not i.paper_baseline)


def not_a_parameter(method: Method) -> str:
    """Why a parameter `method` does not read is refused (the spec and the configs say it alike)."""
    return f"is not a parameter of method {method.value} (it takes {', '.join(METHODS[method].params) or 'none'})"


def warmup_text(share: float) -> str:
    """How the CLI, tables and reports name an eps warm-up."""
    return f"eps warmed up over the first {share:.0%} of the steps"


class Objective(Name):
    """What a study's trials maximise on the validation split (see `ObjectiveCfg`)."""

    PGD_ACC = "pgd_acc"
    ROBUST_AUC = "robust_auc"


class ExtraObjective(Name):
    """What a multi-objective study optimises beside its objective (`objective.multi_objective: [clean, cost]`)."""

    CLEAN = "clean"
    COST = "cost"


# The trial metric each extra objective reads, and its direction. Cost is training compute in forward passes of
# one image (attack steps included): deterministic, unlike device-seconds, and comparable across nodes.
EXTRA_OBJECTIVE_METRICS: dict[ExtraObjective, tuple[str, str]] = {
    ExtraObjective.CLEAN: ("val_clean_acc", "max"),
    ExtraObjective.COST: ("cost_fwd_passes", "min"),
}


class Component(Name):
    """AutoAttack's components, in the order the standard version runs them."""

    APGD_CE = "apgd-ce"
    APGD_T = "apgd-t"
    FAB_T = "fab-t"
    SQUARE = "square"


class Setting(Name):
    """Evaluation settings of the reproduction (trainables/variants.py): the usual ways an evaluation goes soft."""

    WHITEBOX = "whitebox"
    TRANSFER = "transfer"
    SOFTMAX = "softmax"
    TRAINMODE = "trainmode"
    NORMEPS = "normeps"
    TTT = "ttt"
    TTT_EOT = "ttt_eot"


SETTING_LABELS: Mapping[Setting, str] = {
    Setting.WHITEBOX: "white-box", Setting.TRANSFER: "transfer from base", Setting.SOFTMAX: "softmax-output loss",
    Setting.TRAINMODE: "train-mode attack", Setting.NORMEPS: "eps in normalised units",
    Setting.TTT: "test-time transform", Setting.TTT_EOT: "test-time transform + EOT",
}


class SchedulerType(Name):
    ASHA = "asha"
    FIFO = "fifo"


class SamplerType(Name):
    TPE = "tpe"
    RANDOM = "random"
    GP = "gp"
    NSGA2 = "nsga2"


class SplitName(Name):
    TRAIN = "train"
    VAL = "val"  # held out from the training split: hyperparameters are chosen here
    TEST = "test"  # final reports only


class EvalSplit(Name):
    """The splits a model may be scored on (never the one it trained on)."""

    TEST = "test"
    VAL = "val"


class GridPart(Name):
    """Which cells `patchtune reproduce --grid` trains."""

    ALL = "all"  # the paper's cells, then the robust fine-tuning cells
    PAPER = "paper"  # the paper's cells only
    ROBUST = "robust"  # the robust fine-tuning cells beside the undefended model and the paper's two patch fine-tunes


E = TypeVar("E", bound=enum.Enum)


def parse_enum(enum_type: type[E], value: object, field: str) -> E:
    """`value` as a member of `enum_type`, or a ConfigError listing the valid choices."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).strip().lower())
    except ValueError:
        raise ConfigError(f"{field} must be one of {', '.join(values(enum_type))}; got {value!r}") from None


def values(enum_type: type[enum.Enum]) -> tuple[str, ...]:
    """The members' string values, in declaration order (for CLI choices and messages)."""
    return tuple(str(m.value) for m in enum_type)


# ------------------------------------------------------------------------------------- the paper's settings

# White-box budgets of the paper's Table 1: eps per data set, alpha 0.01, 10 iterations.
PAPER_ALPHA = 0.01
PAPER_STEPS = 10
# The eps grid of `robust_auc`: from small budgets (where models differ) up to the paper's F-MNIST eps.
DEFAULT_EPS_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
PATCH_AREA_SIDE_FRACTION = 0.3  # default patch side: ~0.3 x the image side (~1/10 of the area), "around the center"


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    lr: float  # the lr of pretraining (with its adaptive schedule) and fine-tuning (fixed): the paper's for its own
    pretrain_epochs: int  # cnn3 reaches ~91 % F-MNIST test accuracy in 10; the paper trained VGG-16 for 200
    min_side: int = 1  # the smallest input side the network takes (smaller images are upsampled to it)


ARCHS: Mapping[Arch, ArchInfo] = {
    Arch.CNN3: ArchInfo(lr=1e-3, pretrain_epochs=10, min_side=8),
    Arch.VGG16: ArchInfo(lr=1e-4, pretrain_epochs=200, min_side=32),
}
# A library model: Adam at 1e-4 is the usual rate for fine-tuning a pretrained network (and VGG-16's in the paper);
# 10 epochs of pretraining adapt a pretrained network's new head and features to a small data set.
LIBRARY_ARCH = ArchInfo(lr=1e-4, pretrain_epochs=10)


def arch_info(arch: str) -> ArchInfo:
    """Training defaults of an arch: the paper's for its own, `LIBRARY_ARCH` for a library model."""
    return ARCHS[Arch(arch)] if arch_library(arch) is None else LIBRARY_ARCH

FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENETTE_CLASSES = ("tench", "English springer", "cassette player", "chain saw", "church",
                      "French horn", "garbage truck", "gas pump", "golf ball", "parachute")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENETTE_DEFAULT_SIZE = 160  # pixels: shorter side resized to this, then a centre crop to a square
IMAGEFOLDER_DEFAULT_SIZE = 224  # pixels: the input side ImageNet-pretrained networks were trained at
# A data set the paper does not cover has no paper eps: 8/255, the usual L-inf budget for natural images
# (CIFAR-10, ImageNet), is its default.
NATURAL_EPS = 8 / 255
# Gray images normalised like ImageNet's: the mean of its channel statistics.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Shape, classes and normalisation of a data set, plus the paper's defaults for it."""

    name: Dataset
    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]  # per-channel, applied by the model's first layer
    std: tuple[float, ...]
    classes: tuple[str, ...]
    default_arch: str
    paper_eps: float | None  # the paper's L-inf budget for this data set (None: the paper does not cover it)

    @property
    def default_eps(self) -> float:
        """The budget a run takes when none is given: the paper's, else `NATURAL_EPS`."""
        return self.paper_eps if self.paper_eps is not None else NATURAL_EPS

    @property
    def eps_source(self) -> str:
        """Where `default_eps` comes from, in words."""
        return "the paper's" if self.paper_eps is not None else "8/255, the usual budget for natural images"

    @property
    def resizable(self) -> bool:
        """Whether its images are decoded at a chosen side (`data.image_size`)."""
        return self.name in (Dataset.IMAGENETTE, Dataset.IMAGEFOLDER)

    @property
    def side(self) -> int:
        return min(self.height, self.width)

    @property
    def default_patch_size(self) -> int:
        return max(2, round(self.side * PATCH_AREA_SIDE_FRACTION))


_DATASETS: Mapping[Dataset, DatasetInfo] = {
    Dataset.FMNIST: DatasetInfo(Dataset.FMNIST, 1, 28, 28, 10, (0.2860,), (0.3530,), FMNIST_CLASSES, Arch.CNN3, 0.3),
    Dataset.CIFAR10: DatasetInfo(Dataset.CIFAR10, 3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                                 CIFAR10_CLASSES, Arch.VGG16, 0.03),
    Dataset.IMAGENETTE: DatasetInfo(Dataset.IMAGENETTE, 3, IMAGENETTE_DEFAULT_SIZE, IMAGENETTE_DEFAULT_SIZE, 10,
                                    IMAGENET_MEAN, IMAGENET_STD, IMAGENETTE_CLASSES, Arch.VGG16, 0.03),
    # The user's own images: their classes and channels are read from the tree (`trainables.data`); until then
    # it is RGB with no classes. ImageNet's statistics normalise it, as nearly every pretrained network expects.
    Dataset.IMAGEFOLDER: DatasetInfo(Dataset.IMAGEFOLDER, 3, IMAGEFOLDER_DEFAULT_SIZE, IMAGEFOLDER_DEFAULT_SIZE, 0,
                                     IMAGENET_MEAN, IMAGENET_STD, (), "torchvision/resnet18", None),
}


def dataset_info(name: Dataset | str, image_size: int | None = None) -> DatasetInfo:
    """The data set's description; `image_size` is the side a resized data set (Imagenette, an ImageFolder tree)
    is cropped to."""
    info = _DATASETS[parse_enum(Dataset, name, "dataset")]
    if image_size is None or not info.resizable:
        return info
    return dataclasses.replace(info, height=image_size, width=image_size)


def paper_eps(dataset: Dataset | str) -> float:
    """The paper's eps for one of its data sets (the reproduction covers only those)."""
    eps = dataset_info(dataset).paper_eps
    if eps is None:
        raise ConfigError(f"the paper does not cover data set {dataset}: it has no paper eps")
    return eps


def default_eps(dataset: Dataset | str) -> float:
    return dataset_info(dataset).default_eps


def patches_need_jitter(num_patches: int, jitter: int) -> bool:
    """Several patches without jitter would all sit on the centre, one over the other."""
    return num_patches > 1 and jitter <= 0


def encode_outcomes(correct: Iterable[bool]) -> str:
    """Per-sample outcomes in data order as "1" (right) / "0" (wrong): the form audit.json's `worst_case_mask`
    and the reproduction's `per_image` column store, so paired tests can read them back per image."""
    return "".join("1" if ok else "0" for ok in correct)


def decode_outcomes(text: str) -> list[float]:
    """`encode_outcomes` read back as 1.0 / 0.0 per sample."""
    return [1.0 if c == "1" else 0.0 for c in text]
