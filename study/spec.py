"""The study spec: one YAML file -> validated, frozen dataclasses.

Parsed with `yaml.safe_load`; unknown keys, wrong types and bad values raise `ConfigError` naming the field
path and the value ("search.lr.adam: lower bound must be < upper bound, got [0.1, 0.01]"), so the runner
can stop with exit status 2 before Ray starts. Presets live in `study/presets/*.yaml`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from analysis.load import optuna_url
from trainables.vocab import (
    DEFAULT_EPS_GRID,
    METHOD_PARAMS,
    PAPER_STEPS,
    Arch,
    Component,
    ConfigError,
    Dataset,
    ExtraObjective,
    Method,
    Objective,
    Optimizer,
    PatchOp,
    SamplerType,
    SchedulerType,
    dataset_info,
    not_a_parameter,
    patches_need_jitter,
    values,
)

PRESET_DIR = Path(__file__).with_name("presets")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def _fail(path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{path}: {message}")


def _num(value: Any, path: str, *, low: float | None = None, high: float | None = None, integer: bool = False,
         low_open: bool = False, high_open: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        _fail(path, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not integer and not math.isfinite(value):
        _fail(path, f"must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        _fail(path, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        _fail(path, f"must be {'<' if high_open else '<='} {high}, got {value!r}")
    return value


def _member(value: Any, enum_type: type[Any], path: str) -> None:
    if value not in values(enum_type):
        _fail(path, f"must be one of {', '.join(values(enum_type))}, got {value!r}")


def _range(value: Any, path: str, *, integer: bool, low: float, high: float | None = None) -> tuple[Any, Any]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        _fail(path, f"must be a [low, high] pair, got {value!r}")
    lo = _num(value[0], path, integer=integer, low=low, high=high, low_open=not integer)
    hi = _num(value[1], path, integer=integer, low=low, high=high, low_open=not integer)
    if lo > hi:
        _fail(path, f"lower bound must be <= upper bound, got {list(value)!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """Build the base model first (once, cached by these settings) instead of loading a checkpoint."""

    optimizer: str = Optimizer.ADAM.value
    lr: float | None = None  # None = the paper's (1e-3 cnn3, 1e-4 vgg16)
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    limit_train: int | None = None  # pretrain on the first N training images (quick presets)
    limit_eval: int | None = None  # validate (the lr schedule) and test on the first N of each split (None: all)

    def validate(self, path: str) -> None:
        _member(self.optimizer, Optimizer, f"{path}.optimizer")
        if self.lr is not None:
            _num(self.lr, f"{path}.lr", low=0, low_open=True, high=10)
        _num(self.epochs, f"{path}.epochs", integer=True, low=1)
        _num(self.batch_size, f"{path}.batch_size", integer=True, low=1)
        _num(self.seed, f"{path}.seed", integer=True)
        for name in ("limit_train", "limit_eval"):
            if getattr(self, name) is not None:
                _num(getattr(self, name), f"{path}.{name}", integer=True, low=1)


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    checkpoint: str | None = None  # path to a `patchtune pretrain` checkpoint
    pretrain: PretrainSpec | None = None

    def validate(self, path: str) -> None:
        if (self.checkpoint is None) == (self.pretrain is None):
            _fail(path, "give exactly one of checkpoint (a path) or pretrain (settings)")
        if self.pretrain is not None:
            self.pretrain.validate(f"{path}.pretrain")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    root: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    limit_train: int | None = None  # fine-tuning images per trial (None = the whole training split)
    limit_test: int | None = None  # test images for the final evaluation of the best trial(s)
    image_size: int | None = None  # Imagenette only

    def validate(self, path: str) -> None:
        _num(self.val_fraction, f"{path}.val_fraction", low=0, low_open=True, high=0.9)
        _num(self.split_seed, f"{path}.split_seed", integer=True)
        for name in ("limit_train", "limit_test", "image_size"):
            if getattr(self, name) is not None:
                _num(getattr(self, name), f"{path}.{name}", integer=True, low=1)
        if self.root is not None and not isinstance(self.root, str):
            _fail(f"{path}.root", f"must be a directory path, got {self.root!r}")


@dataclasses.dataclass(frozen=True)
class MethodSearch:
    """One fine-tuning method in the search and the ranges of its own parameters (None: the method's default).

    `augment` lists the choices for combining an adversarial method with the patch augmentation: [false],
    [true], or [false, true] to let Optuna decide. Patch parameters are only sampled when it is on.
    """

    steps: tuple[int, int] | None = None  # pgd_at, trades: attack steps, inclusive range
    beta: tuple[float, float] | None = None  # trades: KL weight, log-scale range
    augment: tuple[bool, ...] | None = None  # None: [true] for patch, [false] for the adversarial methods

    def validate(self, path: str, method: Method) -> None:
        for name in ("steps", "beta"):
            if getattr(self, name) is not None and name not in METHOD_PARAMS[method]:
                _fail(f"{path}.{name}", not_a_parameter(method))
        if self.steps is not None:
            _range(self.steps, f"{path}.steps", integer=True, low=1)
        if self.beta is not None:
            _range(self.beta, f"{path}.beta", integer=False, low=0)
        if self.augment is not None:
            if (not isinstance(self.augment, tuple) or not self.augment or len(set(self.augment)) != len(self.augment)
                    or not all(isinstance(a, bool) for a in self.augment)):
                _fail(f"{path}.augment", f"must be [false], [true] or [false, true], got {self.augment!r}")
            if method is Method.PATCH and self.augment != (True,):
                _fail(f"{path}.augment", "patch is the patch augmentation itself: it can only be [true]")

    def augment_choices(self, method: Method) -> tuple[bool, ...]:
        return self.augment if self.augment is not None else (method is Method.PATCH,)


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """What Optuna searches. Learning-rate ranges are per optimizer and searched on a log scale."""

    lr: Mapping[str, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: {"adam": (1e-4, 1e-2), "rmsprop": (1e-4, 1e-2)})
    batch_size: tuple[int, ...] = (64, 128, 256)
    patch_size: tuple[int, int] = (4, 14)  # pixels, inclusive
    num_patches: tuple[int, int] = (1, 1)
    jitter: int = 0  # pixels; fixed, not searched
    pool: Mapping[str, bool] = dataclasses.field(default_factory=lambda: {op.value: True for op in PatchOp})
    search_pool: bool = True  # True: Optuna switches each enabled op on/off (at least one stays on)
    # Fine-tuning methods searched, each with its own parameter ranges; the paper's space is patch alone.
    methods: Mapping[str, MethodSearch] = dataclasses.field(default_factory=lambda: {Method.PATCH.value: MethodSearch()})
    train_eps: float | None = None  # the adversarial methods' training budget; None = the objective's eps
    # The adversarial methods' eps warm-up: the share of a trial's training steps over which eps grows linearly
    # to train_eps (0 = full eps from the first step; see trainables.vocab.DEFAULT_EPS_WARMUP).
    eps_warmup: float = 0.0

    def validate(self, path: str) -> None:
        if not isinstance(self.lr, Mapping) or not self.lr:
            _fail(f"{path}.lr", f"must map optimizer names to [low, high] ranges, got {self.lr!r}")
        for name, rng in self.lr.items():
            if name not in values(Optimizer):
                _fail(f"{path}.lr", f"unknown optimizer {name!r} (choose from {', '.join(values(Optimizer))})")
            _range(rng, f"{path}.lr.{name}", integer=False, low=0, high=10)
        if not isinstance(self.batch_size, (list, tuple)) or not self.batch_size:
            _fail(f"{path}.batch_size", f"must be a non-empty list of integers, got {self.batch_size!r}")
        for b in self.batch_size:
            _num(b, f"{path}.batch_size", integer=True, low=1)
        _range(self.patch_size, f"{path}.patch_size", integer=True, low=1)
        _range(self.num_patches, f"{path}.num_patches", integer=True, low=1, high=16)
        _num(self.jitter, f"{path}.jitter", integer=True, low=0)
        if patches_need_jitter(self.num_patches[1], self.jitter):
            _fail(f"{path}.num_patches", "more than one patch needs jitter > 0 (otherwise every patch sits on the centre)")
        if not isinstance(self.pool, Mapping):
            _fail(f"{path}.pool", f"must map ops to true/false, got {self.pool!r}")
        for op, on in self.pool.items():
            if op not in values(PatchOp):
                _fail(f"{path}.pool", f"unknown op {op!r} (choose from {', '.join(values(PatchOp))})")
            if not isinstance(on, bool):
                _fail(f"{path}.pool.{op}", f"must be true or false, got {on!r}")
        if not any(self.pool.values()):
            _fail(f"{path}.pool", "at least one op must be on")
        if not isinstance(self.search_pool, bool):
            _fail(f"{path}.search_pool", f"must be true or false, got {self.search_pool!r}")
        if not isinstance(self.methods, Mapping) or not self.methods:
            _fail(f"{path}.methods", f"must map method names to their parameter ranges, got {self.methods!r}")
        for name, method_search in self.methods.items():
            _member(name, Method, f"{path}.methods")
            method_search.validate(f"{path}.methods.{name}", Method(name))
        if self.train_eps is not None:
            _num(self.train_eps, f"{path}.train_eps", low=0, low_open=True, high=1)
        _num(self.eps_warmup, f"{path}.eps_warmup", low=0, high=1, high_open=True)

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(op for op, on in self.pool.items() if on)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """What the trials report each epoch on the validation subset, and which number Optuna/ASHA maximise.

    pgd_acc: worst-case PGD accuracy at (eps, alpha, steps): by default the paper's eps and 10 steps with alpha =
    2.5 eps / steps, so the attack can reach its budget (the paper's alpha 0.01 x 10 = 0.1 cannot reach 0.3; its
    PGD-10 is reported beside it every epoch as val_paper_pgd_acc).
    robust_auc: mean worst-case PGD accuracy over `eps_grid` (alpha = 2.5 eps / steps), which keeps a
    signal where one eps is flat (e.g. 0 % for every model at F-MNIST's eps 0.3).
    """

    metric: str = Objective.PGD_ACC.value
    eps: float | None = None  # None = the paper's eps for the data set
    alpha: float | None = None  # None = 2.5 eps / steps
    steps: int = PAPER_STEPS
    restarts: int = 1  # random starts of the objective's PGD; a sample is robust only if it survives every one
    eps_grid: tuple[float, ...] = DEFAULT_EPS_GRID
    val_limit: int | None = 1000  # validation images scored per epoch (None = the whole split)
    # Optimise more than the objective, for a Pareto front: true = [clean]; or a list of `ExtraObjective`s,
    # e.g. [cost] to trade robust accuracy against training compute, [clean, cost] for both.
    multi_objective: bool | tuple[str, ...] = False

    def validate(self, path: str) -> None:
        _member(self.metric, Objective, f"{path}.metric")
        if self.eps is not None:
            _num(self.eps, f"{path}.eps", low=0, low_open=True, high=1)
        if self.alpha is not None:
            _num(self.alpha, f"{path}.alpha", low=0, low_open=True, high=1)
        _num(self.steps, f"{path}.steps", integer=True, low=1)
        _num(self.restarts, f"{path}.restarts", integer=True, low=1)
        if not isinstance(self.eps_grid, (list, tuple)) or not self.eps_grid:
            _fail(f"{path}.eps_grid", f"must be a non-empty list of budgets, got {self.eps_grid!r}")
        for e in self.eps_grid:
            _num(e, f"{path}.eps_grid", low=0, low_open=True, high=1)
        if self.val_limit is not None:
            _num(self.val_limit, f"{path}.val_limit", integer=True, low=1)
        m = self.multi_objective
        if not isinstance(m, bool):
            allowed = values(ExtraObjective)
            if not isinstance(m, tuple) or not m or len(set(m)) != len(m) or any(v not in allowed for v in m):
                _fail(f"{path}.multi_objective", f"must be true, false or a list of distinct {', '.join(allowed)}, got "
                                                 f"{list(m) if isinstance(m, tuple) else m!r}")

    @property
    def extra_objectives(self) -> tuple[ExtraObjective, ...]:
        """What the study optimises beside the objective (empty: a single-objective study)."""
        m = self.multi_objective
        if isinstance(m, bool):
            return (ExtraObjective.CLEAN,) if m else ()
        return tuple(ExtraObjective(v) for v in m)


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    type: str = SchedulerType.ASHA.value
    grace_period: int = 1  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = 2

    def validate(self, path: str) -> None:
        _member(self.type, SchedulerType, f"{path}.type")
        _num(self.grace_period, f"{path}.grace_period", integer=True, low=1)
        _num(self.reduction_factor, f"{path}.reduction_factor", integer=True, low=2)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    type: str = SamplerType.TPE.value
    n_startup_trials: int = 10  # TPE: random trials before the model kicks in
    seed: int | None = None  # None = the study seed

    def validate(self, path: str) -> None:
        _member(self.type, SamplerType, f"{path}.type")
        _num(self.n_startup_trials, f"{path}.n_startup_trials", integer=True, low=0)
        if self.seed is not None:
            _num(self.seed, f"{path}.seed", integer=True)


@dataclasses.dataclass(frozen=True)
class ResourcesSpec:
    cpu: float = 1.0  # CPUs per trial
    gpu: float = 0.0  # GPUs per trial; fractions pack several trials on one GPU (e.g. 0.25 for cnn3)

    def validate(self, path: str) -> None:
        _num(self.cpu, f"{path}.cpu", low=0, low_open=True, high=1024)
        _num(self.gpu, f"{path}.gpu", low=0, high=64)


_MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


@dataclasses.dataclass(frozen=True)
class TrackingSpec:
    """Experiment tracking beside Tune's own files: every trial as an MLflow run (Tune's MLflowLoggerCallback)."""

    mlflow: str | None = None  # tracking URI: sqlite:///mlflow.db, file:///abs/dir, http://host:5000 (None = off)
    experiment: str | None = None  # MLflow experiment (default: the study's name)

    def validate(self, path: str) -> None:
        if self.mlflow is not None:
            scheme = self.mlflow.split("://", 1)[0] if isinstance(self.mlflow, str) and "://" in self.mlflow else ""
            if scheme.split("+")[0] not in _MLFLOW_SCHEMES:
                _fail(f"{path}.mlflow", f"must be an MLflow tracking URI ({', '.join(s + '://' for s in _MLFLOW_SCHEMES)}"
                                        f"...), got {self.mlflow!r}")
        if self.experiment is not None and (not isinstance(self.experiment, str) or not self.experiment.strip()):
            _fail(f"{path}.experiment", f"must be a non-empty name, got {self.experiment!r}")


@dataclasses.dataclass(frozen=True)
class AuditSpec:
    """`patchtune audit` of the best trial(s) at the end of the study (strong attacks + masking checks)."""

    enabled: bool = False
    eps: tuple[float, ...] | None = None  # None = the objective's eps
    limit: int = 500  # test images audited
    strong_steps: int = 100
    strong_restarts: int = 5
    autoattack: bool = True
    components: tuple[str, ...] = values(Component)
    square_queries: int = 5000  # AutoAttack's reference; fewer make a quicker, weaker black-box attack
    check_limit: int = 200

    def validate(self, path: str) -> None:
        if not isinstance(self.enabled, bool):
            _fail(f"{path}.enabled", f"must be true or false, got {self.enabled!r}")
        if not isinstance(self.autoattack, bool):
            _fail(f"{path}.autoattack", f"must be true or false, got {self.autoattack!r}")
        if self.eps is not None:
            if not isinstance(self.eps, tuple) or not self.eps:
                _fail(f"{path}.eps", f"must be a non-empty list of budgets, got {self.eps!r}")
            for e in self.eps:
                _num(e, f"{path}.eps", low=0, low_open=True, high=1)
        for name in ("limit", "strong_steps", "strong_restarts", "square_queries", "check_limit"):
            _num(getattr(self, name), f"{path}.{name}", integer=True, low=1)
        allowed = values(Component)
        if not isinstance(self.components, tuple) or not self.components or any(c not in allowed for c in self.components):
            _fail(f"{path}.components", f"must be a non-empty subset of {', '.join(allowed)}, got {self.components!r}")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    name: str
    dataset: str = Dataset.FMNIST.value
    arch: str | None = None  # None = the data set's default (cnn3 for fmnist, vgg16 otherwise)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    base: BaseSpec = dataclasses.field(default_factory=lambda: BaseSpec(pretrain=PretrainSpec()))
    search: SearchSpec = dataclasses.field(default_factory=SearchSpec)
    epochs: int = 2  # fine-tuning epochs per trial (ASHA's max_t)
    objective: ObjectiveSpec = dataclasses.field(default_factory=ObjectiveSpec)
    num_samples: int = 8
    max_concurrent: int = 2
    resources: ResourcesSpec = dataclasses.field(default_factory=ResourcesSpec)
    scheduler: SchedulerSpec = dataclasses.field(default_factory=SchedulerSpec)
    sampler: SamplerSpec = dataclasses.field(default_factory=SamplerSpec)
    seed: int = 0
    storage: str = "runs/studies"  # study directory = storage/name; shared FS or cloud URI on a cluster
    optuna_storage: str | None = None  # None = sqlite:///<study dir>/optuna.db; any SQLAlchemy URL; journal:PATH
    max_failures: int = 1  # retries per trial after a crash (node loss), resumed from its last checkpoint
    best_trials: int = 1  # best trials evaluated on the test split at the end
    audit: AuditSpec = dataclasses.field(default_factory=AuditSpec)
    tracking: TrackingSpec = dataclasses.field(default_factory=TrackingSpec)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            _fail("name", f"must be 1-80 letters, digits, '.', '_' or '-', got {self.name!r}")
        _member(self.dataset, Dataset, "dataset")
        if self.arch is not None:
            _member(self.arch, Arch, "arch")
        self.data.validate("data")
        self.base.validate("base")
        self.search.validate("search")
        self.objective.validate("objective")
        self.resources.validate("resources")
        self.scheduler.validate("scheduler")
        self.sampler.validate("sampler")
        self.audit.validate("audit")
        self.tracking.validate("tracking")
        _num(self.epochs, "epochs", integer=True, low=1)
        _num(self.num_samples, "num_samples", integer=True, low=1)
        _num(self.max_concurrent, "max_concurrent", integer=True, low=1)
        _num(self.seed, "seed", integer=True)
        _num(self.max_failures, "max_failures", integer=True, low=-1)
        _num(self.best_trials, "best_trials", integer=True, low=1)
        if not isinstance(self.storage, str) or not self.storage:
            _fail("storage", f"must be a directory path, got {self.storage!r}")
        if "://" in self.storage:
            _fail("storage", f"must be a filesystem path (mount cloud storage or NFS at the same path on every node), got {self.storage!r}")
        if self.data.image_size is not None and self.dataset != "imagenette":
            _fail("data.image_size", f"is only settable for imagenette, got dataset {self.dataset}")
        info = dataset_info(self.dataset, self.data.image_size)
        if self.search.patch_size[1] > info.side:
            _fail("search.patch_size", f"upper bound {self.search.patch_size[1]} is larger than the "
                                       f"{info.height}x{info.width} images")
        if self.objective.extra_objectives and self.scheduler.type == SchedulerType.ASHA:
            _fail("scheduler.type", "asha cannot be combined with objective.multi_objective (use fifo)")
        if self.sampler.type == SamplerType.NSGA2 and not self.objective.extra_objectives:
            _fail("sampler.type", "nsga2 is a multi-objective sampler; set objective.multi_objective: true or use tpe")
        if self.scheduler.grace_period > self.epochs:
            _fail("scheduler.grace_period", f"must be <= epochs ({self.epochs}), got {self.scheduler.grace_period}")

    # ----------------------------------------------------------------- derived values

    @property
    def dataset_enum(self) -> Dataset:
        return Dataset(self.dataset)

    @property
    def resolved_arch(self) -> str:
        return self.arch or dataset_info(self.dataset).default_arch.value

    @property
    def objective_eps(self) -> float:
        return self.objective.eps if self.objective.eps is not None else dataset_info(self.dataset).paper_eps

    @property
    def objective_alpha(self) -> float:
        o = self.objective
        return o.alpha if o.alpha is not None else min(1.0, 2.5 * self.objective_eps / o.steps)

    @property
    def sampler_seed(self) -> int:
        return self.sampler.seed if self.sampler.seed is not None else self.seed

    def study_dir(self) -> Path:
        return Path(self.storage).expanduser().resolve() / self.name

    def optuna_url(self) -> str:
        return optuna_url(self.study_dir(), self.optuna_storage)

    @property
    def audit_eps(self) -> tuple[float, ...]:
        return self.audit.eps if self.audit.eps is not None else (self.objective_eps,)

    def resolved(self) -> StudySpec:
        """The same spec with defaults that depend on the data set filled in (arch, objective eps, audit eps)."""
        return dataclasses.replace(self, arch=self.resolved_arch,
                                   objective=dataclasses.replace(self.objective, eps=self.objective_eps,
                                                                 alpha=self.objective_alpha),
                                   audit=dataclasses.replace(self.audit, eps=self.audit_eps))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(dataclasses.asdict(self))
        return out

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------- parsing


def _build(cls: type[Any], raw: Any, path: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, refusing unknown keys and building nested dataclasses."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        _fail(path or "spec", f"must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        _fail(path or "spec", f"unknown key {unknown[0]!r} (allowed: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else key
        nested = _dataclass_in(hints[key])
        mapped = _mapped_dataclass(hints[key])
        if mapped is not None and isinstance(value, Mapping):  # {name: settings}, e.g. search.methods
            kwargs[key] = {k: v if isinstance(v, mapped) else _build(mapped, v, f"{sub}.{k}") for k, v in value.items()}
            continue
        if nested is not None and value is None and type(None) not in typing.get_args(hints[key]):
            # `sampler: null` (or a bare `sampler:`) is not "the defaults": say so instead of guessing.
            _fail(sub, "must be a mapping of settings, got null (leave the key out for the defaults)")
        if nested is not None and value is not None:
            kwargs[key] = _build(nested, value, sub)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        elif isinstance(value, Mapping):
            kwargs[key] = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        else:
            kwargs[key] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        _fail(path or "spec", str(exc).split(") ", 1)[-1])
    return obj


def _dataclass_in(hint: Any) -> type[Any] | None:
    """The dataclass of a field typed `D` or `D | None`."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    for candidate in (hint, *args):
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
            return candidate
    return None


def _mapped_dataclass(hint: Any) -> type[Any] | None:
    """The dataclass `D` of a field typed `Mapping[str, D]`."""
    if typing.get_origin(hint) is not collections.abc.Mapping:
        return None
    value = typing.get_args(hint)[-1]
    return value if dataclasses.is_dataclass(value) and isinstance(value, type) else None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_spec_dict(source: str) -> dict[str, Any]:
    """A preset name or a YAML file path -> the raw mapping (safe_load)."""
    path = Path(source)
    if not path.is_file():
        preset = PRESET_DIR / f"{source}.yaml"
        if not preset.is_file():
            raise ConfigError(f"spec {source!r} is neither a file nor a preset ({', '.join(preset_names())})")
        path = preset
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read spec {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study spec must be a YAML mapping, got {type(raw).__name__}")
    return raw


def parse_spec(raw: Mapping[str, Any]) -> StudySpec:
    spec: StudySpec = _build(StudySpec, raw, "")
    return spec


def load_spec(source: str, overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Read a preset or file, apply dotted-key overrides ({'resources.gpu': 0.5}), validate."""
    raw = read_spec_dict(source)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: cannot override inside a non-mapping")
        node[leaf] = value
    return parse_spec(raw)
