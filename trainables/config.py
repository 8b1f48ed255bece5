"""Validated, frozen configuration records for the pure tensor layer.

Everything a user can type ends up in one of these dataclasses; `__post_init__` refuses bad values with a
`ConfigError` whose message names the field and the value ("lr must be > 0, got -1.0"), so command-line
tools and the study runner can turn it into a one-line error before any work starts.
Units sit next to the defaults: pixel budgets are in [0, 1] image units, sizes in pixels.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

from trainables.vocab import (
    DEFAULT_AT_STEPS,
    DEFAULT_EPS_GRID,
    DEFAULT_EPS_WARMUP,
    DEFAULT_TRADES_BETA,
    METHOD_PARAMS,
    PAPER_ALPHA,
    PAPER_STEPS,
    AttackName,
    ConfigError,
    Dataset,
    Method,
    Objective,
    Optimizer,
    PatchOp,
    dataset_info,
    not_a_parameter,
    parse_enum,
    patches_need_jitter,
)

__all__ = [
    "AttackCfg", "AttackName", "AugCfg", "ConfigError", "DataCfg", "Dataset", "Method", "MethodCfg", "ObjectiveCfg",
    "Optimizer", "PatchOp",
    "TrainCfg", "as_jsonable", "paper_attacks", "parse_enum", "trial_cfgs",
]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _finite_positive(value: float, field: str) -> None:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{field} must be a number, got {value!r}")
    _check(math.isfinite(value) and value > 0, f"{field} must be > 0, got {value!r}")


def _positive_int(value: int, field: str) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool), f"{field} must be an integer, got {value!r}")
    _check(value >= 1, f"{field} must be >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataCfg:
    dataset: Dataset = Dataset.FMNIST
    root: str | None = None  # directory searched first; None = only the standard places
    val_fraction: float = 0.1  # share of the training split held out for validation / hyperparameter search
    split_seed: int = 0  # seeds the train/val split only, so it stays fixed across trials and runs
    limit_train: int | None = None  # None = all; small values for quick runs
    limit_val: int | None = None
    limit_test: int | None = None
    image_size: int | None = None  # Imagenette only: side in pixels after resize + centre crop (default 160)
    download: bool = True  # fall back to torchvision's download when no local copy exists

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", parse_enum(Dataset, self.dataset, "dataset"))
        _check(
            isinstance(self.val_fraction, (int, float)) and 0.0 < self.val_fraction < 1.0,
            f"val_fraction must be in (0, 1), got {self.val_fraction!r}",
        )
        for name in ("limit_train", "limit_val", "limit_test"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(value, name)
        if self.image_size is not None:
            _check(self.dataset is Dataset.IMAGENETTE, f"image_size is only settable for imagenette, got dataset {self.dataset.value}")
            _check(
                isinstance(self.image_size, int) and 32 <= self.image_size <= 512,
                f"image_size must be an integer in [32, 512], got {self.image_size!r}",
            )


@dataclasses.dataclass(frozen=True)
class AugCfg:
    """The paper's patch augmentation: one op per image drawn uniformly from `pool`, applied to centre patches."""

    pool: tuple[PatchOp, ...] = tuple(PatchOp)
    # w, pixels (w x w patches); no default here: callers pass their data set's (`DatasetInfo.default_patch_size`)
    patch_size: int = dataclasses.field(kw_only=True)
    num_patches: int = 1
    jitter: int = 0  # max offset in pixels of each patch from the exact centre (0 = the central patch)
    prob: float = 1.0  # chance that an image is modified at all (1.0 = the paper)
    rotate_degrees: float = 30.0  # rotation angle drawn from U(-d, d), degrees
    translate_fraction: float = 0.25  # shift drawn from U(-f, f) * patch_size in each axis
    noise_std: float = 0.1  # Gaussian noise std in [0, 1] pixel units
    occlude_value: float = 0.0  # value written into occluded patches, [0, 1]

    def __post_init__(self) -> None:
        pool = self.pool
        if isinstance(pool, str):
            pool = tuple(p for p in pool.split(",") if p.strip())
        pool = tuple(parse_enum(PatchOp, p, "pool op") for p in pool)
        _check(len(pool) > 0, "pool must contain at least one op (rotate, translate, flip, noise, occlude); got an empty pool")
        _check(len(set(pool)) == len(pool), f"pool lists an op twice: {','.join(p.value for p in pool)}")
        object.__setattr__(self, "pool", pool)
        _positive_int(self.patch_size, "patch_size")
        _positive_int(self.num_patches, "num_patches")
        _check(isinstance(self.jitter, int) and self.jitter >= 0, f"jitter must be an integer >= 0, got {self.jitter!r}")
        _check(
            not patches_need_jitter(self.num_patches, self.jitter),
            f"num_patches {self.num_patches} needs jitter > 0 (without it every patch sits on the centre), got jitter 0",
        )
        _check(0.0 <= self.prob <= 1.0, f"prob must be in [0, 1], got {self.prob!r}")
        _check(0.0 <= self.rotate_degrees <= 180.0, f"rotate_degrees must be in [0, 180], got {self.rotate_degrees!r}")
        _check(0.0 <= self.translate_fraction <= 1.0, f"translate_fraction must be in [0, 1], got {self.translate_fraction!r}")
        _check(0.0 <= self.noise_std <= 1.0, f"noise_std must be in [0, 1], got {self.noise_std!r}")
        _check(0.0 <= self.occlude_value <= 1.0, f"occlude_value must be in [0, 1], got {self.occlude_value!r}")

    def check_fits(self, height: int, width: int) -> None:
        """Refuse a patch larger than the image it is cut from."""
        _check(
            self.patch_size <= min(height, width),
            f"patch_size {self.patch_size} is larger than the {height}x{width} image",
        )


@dataclasses.dataclass(frozen=True)
class AttackCfg:
    """One white-box L-inf attack. Budgets are in [0, 1] pixel units; normalisation lives inside the model."""

    name: AttackName = AttackName.PGD
    eps: float = 0.3
    alpha: float = 0.01  # step size per iteration, pixel units
    steps: int = 10
    restarts: int = 1  # PGD only: independent random starts; a sample counts as broken if any fools the model
    last_iterate: bool = False  # True = classic number (only the final iterate counts), False = any iterate

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", parse_enum(AttackName, self.name, "attack"))
        if self.name is AttackName.CLEAN:
            return
        _check(
            isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and 0.0 < self.eps <= 1.0,
            f"eps must be in (0, 1], got {self.eps!r}",
        )
        _finite_positive(self.alpha, "alpha")
        _check(self.alpha <= 1.0, f"alpha must be <= 1, got {self.alpha!r}")
        _positive_int(self.steps, "steps")
        _positive_int(self.restarts, "restarts")

    @property
    def label(self) -> str:
        """Stable, human-readable key such as `pgd10` or `fgsm`."""
        if self.name in (AttackName.CLEAN, AttackName.FGSM):
            return str(self.name.value)
        suffix = f"x{self.restarts}" if self.restarts > 1 else ""
        return f"{self.name.value}{self.steps}{suffix}"

    def describe(self) -> dict[str, Any]:
        if self.name is AttackName.CLEAN:
            return {"name": "clean"}
        out: dict[str, Any] = {"name": self.name.value, "eps": self.eps}
        if self.name is not AttackName.FGSM:
            out.update(alpha=self.alpha, steps=self.steps, random_start=self.name is AttackName.PGD)
            if self.name is AttackName.PGD:
                out["restarts"] = self.restarts
        out["counted"] = "last_iterate" if self.last_iterate else "any_iterate"
        return out


def paper_attacks(dataset: Dataset, names: Iterable[AttackName | str] | None = None) -> list[AttackCfg]:
    """Attack configs at the paper's parameters for `dataset` (clean, FGSM, IFGSM, PGD-10 by default)."""
    wanted = list(names) if names is not None else list(AttackName)
    eps = dataset_info(dataset).paper_eps
    return [AttackCfg(name=parse_enum(AttackName, n, "attack"), eps=eps, alpha=PAPER_ALPHA, steps=PAPER_STEPS) for n in wanted]


@dataclasses.dataclass(frozen=True)
class MethodCfg:
    """How fine-tuning builds its training batches (trainables/methods.py).

    A parameter the method does not read must stay None (METHOD_PARAMS); None for one it reads means its
    default: eps = the caller's (the study objective's, or the paper's eps), steps = DEFAULT_AT_STEPS,
    beta = DEFAULT_TRADES_BETA, warmup = DEFAULT_EPS_WARMUP (eps at full strength from the first step).
    """

    method: Method = Method.PATCH
    # the paper's patch augmentation too (the adversary attacks clean (+) modified images); None: only for patch
    augment: bool | None = None
    eps: float | None = None  # training budget, [0, 1] pixel units
    steps: int | None = None
    beta: float | None = None
    warmup: float | None = None  # share of the run's training steps over which eps grows linearly to its value

    def __post_init__(self) -> None:
        method = parse_enum(Method, self.method, "method")
        object.__setattr__(self, "method", method)
        if self.augment is None:
            object.__setattr__(self, "augment", method is Method.PATCH)
        for name in ("eps", "steps", "beta", "warmup"):
            _check(getattr(self, name) is None or name in METHOD_PARAMS[method],
                   f"{name} {not_a_parameter(method)}; got {name} {getattr(self, name)!r}")
        _check(isinstance(self.augment, bool), f"augment must be true or false, got {self.augment!r}")
        _check(self.augment or method is not Method.PATCH,
               "method patch is the patch augmentation itself: augment must be true")
        if self.eps is not None:
            _check(isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool) and math.isfinite(self.eps)
                   and 0.0 < self.eps <= 1.0, f"eps must be in (0, 1], got {self.eps!r}")
        if self.steps is not None:
            _positive_int(self.steps, "steps")
        if self.beta is not None:
            _finite_positive(self.beta, "beta")
        if self.warmup is not None:
            _check(isinstance(self.warmup, (int, float)) and not isinstance(self.warmup, bool)
                   and 0.0 <= self.warmup < 1.0, f"warmup must be in [0, 1), got {self.warmup!r}")

    @property
    def adversarial(self) -> bool:
        return self.method is not Method.PATCH

    def resolved(self, default_eps: float) -> MethodCfg:
        """Every parameter the method reads filled in (eps from `default_eps`)."""
        params = METHOD_PARAMS[self.method]
        defaults: dict[str, Any] = {"eps": default_eps, "steps": DEFAULT_AT_STEPS, "beta": DEFAULT_TRADES_BETA,
                                    "warmup": DEFAULT_EPS_WARMUP}
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if k in params and getattr(self, k) is None})

    def attack(self) -> AttackCfg | None:
        """The attack that crafts the training examples (last iterate, one random start); None for patch."""
        if not self.adversarial:
            return None
        assert self.eps is not None, "resolve the method first"
        if self.method is Method.FGSM_RS:
            return AttackCfg(AttackName.PGD, eps=self.eps, alpha=min(1.0, 1.25 * self.eps), steps=1, last_iterate=True)
        assert self.steps is not None
        return AttackCfg(AttackName.PGD, eps=self.eps, alpha=min(1.0, 2.5 * self.eps / self.steps), steps=self.steps,
                         last_iterate=True)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method.value, "augment": self.augment}
        out.update({k: getattr(self, k) for k in METHOD_PARAMS[self.method]})
        return out


@dataclasses.dataclass(frozen=True)
class TrainCfg:
    optimizer: Optimizer = Optimizer.ADAM
    lr: float = 1e-3
    batch_size: int = 128  # clean images per step; fine-tuning doubles it with their modified copies
    epochs: int = 8
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only (RMSProp keeps its usual momentum 0, as in Keras and torch)
    plateau_patience: int = 1  # pretraining's adaptive lr: ReduceLROnPlateau patience, in epochs (0 = no schedule)
    plateau_factor: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", parse_enum(Optimizer, self.optimizer, "optimizer"))
        _finite_positive(self.lr, "lr")
        _check(self.lr <= 10.0, f"lr must be <= 10, got {self.lr!r}")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.epochs, "epochs")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum!r}")
        _check(isinstance(self.plateau_patience, int) and self.plateau_patience >= 0, f"plateau_patience must be >= 0, got {self.plateau_patience!r}")
        _check(0.0 < self.plateau_factor < 1.0, f"plateau_factor must be in (0, 1), got {self.plateau_factor!r}")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool), f"seed must be an integer, got {self.seed!r}")


def as_jsonable(obj: Any) -> Any:
    """Dataclasses/enums/tuples -> plain JSON types (for checkpoint metadata and --json output)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [as_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): as_jsonable(v) for k, v in obj.items()}
    # Plain builtins only (e.g. torch's TorchVersion is a str subclass that weights_only loading refuses).
    if isinstance(obj, bool) or obj is None:
        return obj
    for kind in (int, float, str):
        if isinstance(obj, kind):
            return kind(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return as_jsonable(obj.item())
    raise TypeError(f"cannot store {type(obj).__name__} in metadata: {obj!r}")


@dataclasses.dataclass(frozen=True)
class ObjectiveCfg:
    """What a trial scores each epoch on its validation subset.

    pgd_acc: worst-case PGD accuracy at (eps, alpha, steps), the paper's parameters by default.
    robust_auc: mean worst-case PGD accuracy over `eps_grid`, each with alpha = 2.5 eps / steps (Madry et
    al.'s scaling, so every budget is reachable), which keeps a signal where a single eps is flat.
    """

    metric: Objective = Objective.PGD_ACC
    eps: float = 0.3
    alpha: float = PAPER_ALPHA
    steps: int = PAPER_STEPS
    eps_grid: tuple[float, ...] = DEFAULT_EPS_GRID
    restarts: int = 1  # random starts of the objective's PGD (a sample counts as robust only if it survives all)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", parse_enum(Objective, self.metric, "objective metric"))
        object.__setattr__(self, "eps_grid", tuple(float(e) for e in self.eps_grid))
        self.pgd()  # validates the budget and the restarts
        _check(len(self.eps_grid) > 0, "eps_grid must not be empty")

    def pgd(self) -> AttackCfg:
        return AttackCfg(name=AttackName.PGD, eps=self.eps, alpha=self.alpha, steps=self.steps, restarts=self.restarts)

    def grid(self) -> list[AttackCfg]:
        return [AttackCfg(name=AttackName.PGD, eps=e, alpha=min(1.0, 2.5 * e / self.steps), steps=self.steps)
                for e in self.eps_grid]


# The keys of a Tune trial's config that `trial_cfgs` reads: the method's, then the rest. Results tables and
# best.json carry exactly these.
TRIAL_METHOD_KEYS = ("method", "augment", "train_eps", "steps", "beta", "warmup")
TRIAL_CONFIG_KEYS = (*TRIAL_METHOD_KEYS, "optimizer", "lr", "batch_size", "patch_size", "num_patches", "pool", "epochs",
                     "seed")


def trial_cfgs(config: Mapping[str, Any], *, jitter: int = 0) -> tuple[TrainCfg, AugCfg | None, MethodCfg]:
    """A Tune trial's config dict -> (TrainCfg, AugCfg or None, MethodCfg); errors name the bad key and value.

    The patch keys (`patch_size`, `pool`, `num_patches`) are read only when the method uses the augmentation.
    """
    try:
        train = TrainCfg(optimizer=config["optimizer"], lr=float(config["lr"]), batch_size=int(config["batch_size"]),
                         epochs=int(config["epochs"]), seed=int(config.get("seed", 0)), plateau_patience=0)
        method = MethodCfg(config.get("method", Method.PATCH), augment=config.get("augment"),
                           eps=config.get("train_eps"), steps=config.get("steps"), beta=config.get("beta"),
                           warmup=config.get("warmup"))
        aug = None
        if method.augment:
            aug = AugCfg(pool=tuple(parse_enum(PatchOp, op, "pool op") for op in str(config["pool"]).split(",")),
                         patch_size=int(config["patch_size"]), num_patches=int(config.get("num_patches", 1)),
                         jitter=jitter)
    except KeyError as exc:
        raise ConfigError(f"trial config lacks {exc.args[0]!r}: {dict(config)!r}") from None
    return train, aug, method
