"""The study layer's settings, one pydantic model per concept (the spine is `trainables.config.spine`): the base
model (`BaseCfg`), the search space (`SearchCfg`, `MethodSearch`), the scheduler, the sampler, the resources per
trial, experiment tracking, the invocation options of the commands that start Ray, and the reproduction
(`ReproCfg`). The study spec (`study.spec.StudySpec`) composes them with the tensor layer's models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictInt, field_validator, model_validator

from trainables.cells import DEFAULT_OPTIMIZERS, DEFAULT_ROBUST_METHODS
from trainables.config import AuditCfg, AugCfg, DataCfg, MethodCfg, ModelCfg, PretrainCfg
from trainables.config.spine import Count, FieldError, Flag, PathText, Positive, Settings, Share, Unit
from trainables.vocab import (
    DEFAULT_WEIGHTS,
    METHODS,
    ROBUST_METHODS,
    Dataset,
    GridPart,
    Method,
    Optimizer,
    PatchOp,
    SamplerType,
    SchedulerType,
    arch_info,
    not_a_parameter,
    paper_eps,
    patches_need_jitter,
)

LrBound = Annotated[Positive, Field(le=10)]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"


def _name(value: Any) -> Any:
    if not isinstance(value, str) or not re.match(NAME_PATTERN, value):
        raise ValueError(f"must be 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit, got {value!r}")
    return value


# A study's or a reproduction's name: it names a directory.
RunName = Annotated[str, BeforeValidator(_name), Field(json_schema_extra={"pattern": NAME_PATTERN})]


def _ordered(pair: tuple[Any, Any] | None) -> tuple[Any, Any] | None:
    if pair is not None and pair[0] > pair[1]:
        raise ValueError(f"lower bound must be <= upper bound, got {list(pair)!r}")
    return pair


class BaseCfg(Settings):
    """The base model the trials fine-tune: a checkpoint, or pretrained first (once, cached by these settings)."""

    checkpoint: PathText | None = Field(None, description="a model of the data set: a patchtune checkpoint "
                                                          "(`patchtune pretrain`) or a plain PyTorch state dict of "
                                                          "model.arch")
    weights: Annotated[str, Field(min_length=1, strict=True)] | None = Field(
        None, description=f"pretrain the base from a library model's weights: {DEFAULT_WEIGHTS} (the library's "
                          f"recommended), a named tag (IMAGENET1K_V2, a1_in1k) or a weights file (null: from scratch)")
    pretrain: PretrainCfg | None = Field(None, description="pretrain the base first (null with no checkpoint: "
                                                           "the defaults)")

    @model_validator(mode="after")
    def _exactly_one(self) -> BaseCfg:
        if self.checkpoint is not None and self.weights is not None:
            raise FieldError("weights", f"{self.weights!r} pretrains a base; checkpoint {self.checkpoint!r} is one "
                                        "already: give one of them")
        if self.checkpoint is not None and self.pretrain is not None:
            raise ValueError("give exactly one of checkpoint (a path) or pretrain (settings)")
        if self.checkpoint is None and self.pretrain is None:
            object.__setattr__(self, "pretrain", PretrainCfg())  # the model fills in its default
        return self


class MethodSearch(Settings):
    """One fine-tuning method in the search and the ranges of its own parameters."""

    at_steps: tuple[Count, Count] | None = Field(None, description="attack steps, an inclusive range (null: the "
                                                                   "method's default)")
    beta: tuple[Positive, Positive] | None = Field(None, description="trades: the KL weight's range, log scale (null: "
                                                                     "its default)")
    augment: Annotated[tuple[Flag, ...], Field(min_length=1, max_length=2)] | None = Field(
        None, description="with the patch augmentation: [false], [true] or [false, true] to let Optuna decide (null: "
                          "[true] for patch, [false] for the others)")

    _order_steps = field_validator("at_steps")(lambda cls, v: _ordered(v))
    _order_beta = field_validator("beta")(lambda cls, v: _ordered(v))

    @field_validator("augment")
    @classmethod
    def _distinct(cls, value: tuple[bool, ...] | None) -> tuple[bool, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"must be [false], [true] or [false, true], got {list(value)!r}")
        return value

    def augment_choices(self, method: Method) -> tuple[bool, ...]:
        return self.augment if self.augment is not None else (method is Method.PATCH,)


class SearchCfg(Settings):
    """What Optuna searches. Learning rates are per optimizer, on a log scale; a method's parameters and the patch
    parameters are sampled only where they mean something."""

    lr: Annotated[dict[Optimizer, tuple[LrBound, LrBound]], Field(min_length=1)] = Field(
        default_factory=lambda: {Optimizer.ADAM: (1e-4, 1e-2), Optimizer.RMSPROP: (1e-4, 1e-2)},
        description="optimizers searched, each with its learning-rate range")
    batch_size: Annotated[tuple[Count, ...], Field(min_length=1)] = Field(
        (64, 128, 256), description="batch sizes to choose from")
    patch_size: tuple[Count, Count] = Field((4, 14), description="patch side w in pixels, an inclusive range")
    num_patches: tuple[Annotated[int, Field(ge=1, le=16, strict=True)], Annotated[int, Field(ge=1, le=16, strict=True)]] = \
        Field((1, 1), description="patches per image, an inclusive range")
    jitter: Annotated[int, Field(ge=0, strict=True)] = Field(0, description="patch offset from the centre in pixels "
                                                                            "(fixed, not searched)")
    pool: dict[PatchOp, Flag] = Field(default_factory=lambda: {op: True for op in PatchOp},
                                      description="the ops that may be drawn (on) or not (off)")
    search_pool: Flag = Field(True, description="Optuna switches each op that is on in `pool` on or off (at least one "
                                                "stays on)")
    methods: Annotated[dict[Method, MethodSearch], Field(min_length=1)] = Field(
        default_factory=lambda: {Method.PATCH: MethodSearch()},
        description="fine-tuning methods searched, each with its parameters' ranges (the paper's space: patch alone)")
    train_eps: Unit | None = Field(None, description="the adversarial methods' training budget (null: the objective's "
                                                     "eps)")
    eps_warmup: Share = Field(0.0, description="the adversarial methods' eps warm-up: the share of a trial's training "
                                               "steps over which eps grows linearly to train_eps (0: full eps at once)")

    _order_patch = field_validator("patch_size", "num_patches")(lambda cls, v: _ordered(v))

    @field_validator("lr")
    @classmethod
    def _lr_ranges(cls, value: dict[Optimizer, tuple[float, float]]) -> dict[Optimizer, tuple[float, float]]:
        for name, pair in value.items():
            if pair[0] > pair[1]:
                raise FieldError(name.value, f"lower bound must be <= upper bound, got {list(pair)!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SearchCfg:
        if patches_need_jitter(self.num_patches[1], self.jitter):
            raise FieldError("num_patches", "more than one patch needs jitter > 0 (otherwise every patch sits on the "
                                            "centre)")
        if not any(self.pool.values()):
            raise FieldError("pool", "at least one op must be on")
        for method, ranges in self.methods.items():
            for name in ("at_steps", "beta"):
                if getattr(ranges, name) is not None and name not in METHODS[method].params:
                    raise FieldError(f"methods.{method.value}.{name}", not_a_parameter(method))
            if method is Method.PATCH and ranges.augment not in (None, (True,)):
                raise FieldError("methods.patch.augment", "patch is the patch augmentation itself: it can only be "
                                                          "[true]")
        return self

    @property
    def ops(self) -> tuple[PatchOp, ...]:
        return tuple(op for op, on in self.pool.items() if on)

    def resolved(self, objective_eps: float) -> SearchCfg:
        """Every default decided: the training eps (the objective's), each method's augmentation choices and the
        fixed values of the parameters it reads but does not search (a range of one value)."""
        methods = {}
        for method, ranges in self.methods.items():
            fixed = MethodCfg(method=method).resolved(objective_eps)
            reads = METHODS[method].params
            methods[method] = ranges.replace(
                augment=ranges.augment_choices(method),
                at_steps=ranges.at_steps or ((fixed.at_steps, fixed.at_steps) if "at_steps" in reads else None),
                beta=ranges.beta or ((fixed.beta, fixed.beta) if "beta" in reads else None))
        return self.replace(methods=methods, train_eps=self.train_eps if self.train_eps is not None else objective_eps)


class SchedulerCfg(Settings):
    """Which trials run to the end: ASHA stops the weak ones early (successive halving on the objective)."""

    type: SchedulerType = Field(SchedulerType.ASHA, description="asha or fifo (every trial runs every epoch)")
    grace_period: Count = Field(1, description="asha: epochs every trial gets before it may be stopped")
    reduction_factor: Annotated[int, Field(ge=2, strict=True)] = Field(2, description="asha: 1 / the share of trials "
                                                                                      "promoted at each rung")


class SamplerCfg(Settings):
    """How Optuna proposes trials."""

    type: SamplerType = Field(SamplerType.TPE, description="tpe, random, gp (a Gaussian process), or nsga2 "
                                                           "(multi-objective)")
    n_startup_trials: Annotated[int, Field(ge=0, strict=True)] = Field(
        10, description="tpe, gp: random trials before the model proposes")
    multivariate: Flag = Field(True, description="tpe: model the parameters jointly (grouped by the conditional "
                                                 "space's branches), not one at a time")
    seed: StrictInt | None = Field(None, description="the sampler's seed (null: the study's seed)")


class ResourcesCfg(Settings):
    """What each trial reserves on the cluster."""

    cpus_per_trial: Annotated[Positive, Field(le=1024)] = Field(1.0, description="CPUs each trial reserves")
    gpus_per_trial: Annotated[float, Field(ge=0, le=64, allow_inf_nan=False, strict=True)] = Field(
        0.0, description="GPUs each trial reserves; fractions pack several trials on one GPU (e.g. 0.25 for cnn3)")


MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class TrackingCfg(Settings):
    """Experiment tracking beside Tune's own files: every trial as an MLflow run."""

    mlflow: str | None = Field(None, description="MLflow tracking URI: sqlite:///mlflow.db, file:///abs/dir, "
                                                 "http://host:5000 (null: off)")
    experiment: Annotated[str, Field(min_length=1, strict=True)] | None = Field(
        None, description="MLflow experiment (null: the study's name)")

    @field_validator("mlflow")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.split("://", 1)[0].split("+")[0] if "://" in value else ""
        if scheme not in MLFLOW_SCHEMES:
            raise ValueError(f"must be an MLflow tracking URI ({', '.join(s + '://' for s in MLFLOW_SCHEMES)}...), "
                             f"got {value!r}")
        return value


class RayOptions(Settings):
    """Where a command that starts Ray runs: not settings of the study (they are not saved with it)."""

    address: str | None = Field(None, description="Ray cluster address (`auto`: the running cluster; null: "
                                                  "$RAY_ADDRESS, else a fresh local Ray)")
    dashboard: Flag = Field(False, description="start Ray's dashboard on 127.0.0.1 and print its URL")
    dashboard_host: str = Field("127.0.0.1", description="interface for the dashboard. Anything else exposes Ray's "
                                                         "dashboard and Jobs API, which run code for whoever reaches "
                                                         "them (CVE-2023-48022): only behind token auth "
                                                         "(RAY_AUTH_MODE=token) on a trusted network")


class ReproCfg(Settings):
    """`patchtune reproduce`: the paper's fixed settings x seeds as a Ray Tune grid, with robust fine-tuning cells.

    The models are the paper's (its architecture, lr, pretraining epochs and patch size for the data set); the
    budgets not given take the data set's (`REPRO_BUDGETS`: F-MNIST fits 2 CPU cores, the VGG data sets are
    GPU-cluster jobs)."""

    data: DataCfg = Field(default_factory=DataCfg, description="the images; fine-tuning and scoring use the limits")
    model: ModelCfg = Field(default_factory=ModelCfg, description="the architecture (the paper's for the data set)")
    pretrain: PretrainCfg = Field(default_factory=PretrainCfg, description="each seed's base model (Adam; the "
                                                                           "paper's lr and epochs unless given)")
    aug: AugCfg = Field(default_factory=AugCfg, description="the paper's patch augmentation (all five ops)")
    lr: Annotated[Positive, Field(le=10)] | None = Field(None, description="fine-tuning lr (null: the paper's for the "
                                                                           "arch)")
    epochs: Count = Field(2, description="fine-tuning and adversarial-training epochs")
    long_epochs: Count = Field(10, description="epochs of the long patch fine-tunes (the paper fine-tuned for 20 "
                                               "GPU-minutes)")
    seeds: Count = Field(3, description="seeds: one base model each, every cell trained on each")
    eot_draws: Count = Field(4, description="transform draws per EOT step of the test-time-transform setting")
    at_from_scratch: Flag = Field(False, description="the paper's adversarial-training baselines from a fresh init "
                                                     "for the pretraining epochs, not from the base")
    strong_steps: Count = Field(AuditCfg.model_fields["strong_steps"].default,
                                description="the strong PGD row: iterations (alpha = Madry's 2.5 eps / steps)")
    strong_restarts: Count = Field(AuditCfg.model_fields["strong_restarts"].default,
                                   description="the strong PGD row: random starts")
    robust_methods: tuple[Method, ...] = Field(DEFAULT_ROBUST_METHODS, description="robust fine-tuning methods, each "
                                                                                   "x `optimizers`, at the paper's eps")
    optimizers: tuple[Optimizer, ...] = Field(DEFAULT_OPTIMIZERS, description="optimizers of the robust cells")
    eps_warmup: Share = Field(0.0, description="the robust cells' eps warm-up: the share of the training steps over "
                                               "which eps grows linearly to the paper's")
    grid: GridPart = Field(GridPart.ALL, description="all; paper: the paper's cells only; robust: the robust cells "
                                                     "beside the undefended model and the paper's two patch fine-tunes")
    resources: ResourcesCfg = Field(default_factory=ResourcesCfg, description="what each cell reserves")
    storage: PathText = Field("runs/reproductions",
                                                                      description="parent of the output directory")
    name: RunName | None = Field(None, description="output directory name (null: reproduce-DATASET-TIMESTAMP)")

    @model_validator(mode="after")
    def _consistent(self) -> ReproCfg:
        if self.data.dataset not in REPRO_BUDGETS:
            raise FieldError("data.dataset", f"the paper does not cover {self.data.dataset.value}: reproduce runs on "
                                             f"{', '.join(d.value for d in REPRO_BUDGETS)} (a study runs on any data)")
        bad = [m.value for m in self.robust_methods if m not in ROBUST_METHODS]
        if bad:
            raise FieldError("robust_methods", f"{', '.join(bad)} is not a robust fine-tuning method (choose from "
                                               f"{', '.join(m.value for m in ROBUST_METHODS)})")
        if self.robust_methods and not self.optimizers:
            raise FieldError("optimizers", "robust methods need at least one optimizer")
        if self.grid is GridPart.ROBUST and not self.robust_methods:
            raise FieldError("grid", "robust needs at least one robust method: no robust fine-tuning cells to train")
        if self.eps_warmup and (not self.robust_methods or self.grid is GridPart.PAPER):
            raise FieldError("eps_warmup", f"{self.eps_warmup:g} warms up the robust fine-tuning cells; this grid has "
                                           "none")
        return self

    def resolved(self) -> ReproCfg:
        """The paper's model for the data set, and the data set's budgets where none was given."""
        dataset = self.data.dataset
        model = self.model.resolved(dataset)
        assert model.arch is not None
        budget = REPRO_BUDGETS[dataset]
        data = self.data.replace(**{k: v for k, v in budget.get("data", {}).items() if k not in self.data.given()})
        pretrain = self.pretrain.replace(**{k: v for k, v in budget.get("pretrain", {}).items()
                                            if k not in self.pretrain.given()})
        own = {k: v for k, v in budget.items() if k not in ("data", "pretrain") and k not in self.given()}
        return self.replace(data=data, model=model, pretrain=pretrain.resolved(model.arch, finetune=False),
                            aug=self.aug.resolved(data.info), lr=self.lr or arch_info(model.arch).lr, **own)

    @property
    def eps(self) -> float:
        """The paper's eps for the data set: every cell trains and is scored at it."""
        return paper_eps(self.data.dataset)


# `patchtune reproduce`'s flags and `api.reproduce`'s keywords: each the view of one setting (keyword -> path).
REPRODUCE_KEYWORDS = {
    **{name: name for name in ("epochs", "long_epochs", "seeds", "eot_draws", "at_from_scratch", "strong_steps",
                               "strong_restarts", "robust_methods", "optimizers", "eps_warmup", "grid", "storage",
                               "name", "lr")},
    "limit_train": "data.limit_train", "limit_val": "data.limit_val", "limit_test": "data.limit_test",
    "data_root": "data.root",
    "pretrain_epochs": "pretrain.epochs", "pretrain_limit_train": "pretrain.limit_train",
    "pretrain_limit_eval": "pretrain.limit_eval", "cpus_per_trial": "resources.cpus_per_trial",
    "gpus_per_trial": "resources.gpus_per_trial",
}

# The reproduction's budgets per data set, where the user gives none. F-MNIST runs on 2 CPU cores in about half an
# hour: fine-tuning on 10k images (PGD-AT costs 11 passes per image), every setting scored on 500 test images; a
# fine-tune is monitored on 1000 validation images (never used to choose anything). The VGG data sets are GPU jobs.
REPRO_BUDGETS: dict[Dataset, dict[str, Any]] = {
    Dataset.FMNIST: {"data": {"limit_train": 10000, "limit_val": 1000, "limit_test": 500}, "epochs": 2},
    Dataset.CIFAR10: {"data": {"limit_val": 1000}, "epochs": 10, "long_epochs": 50},
    Dataset.IMAGENETTE: {"data": {"limit_val": 1000}, "pretrain": {"epochs": 100}, "epochs": 10, "long_epochs": 50},
}
