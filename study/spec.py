"""The study spec: one YAML file, one `StudySpec`, a composition of the settings models.

Sections map one to one onto the models: `data` (`DataCfg`), `model` (`ModelCfg`), `base` (`BaseCfg`), `search`
(`SearchCfg`), `objective` (`ObjectiveCfg`), `resources`, `scheduler`, `sampler`, `audit` (`AuditCfg`) and
`tracking`, beside the study's own fields. The file is read with `yaml.safe_load`; unknown keys, wrong types and
bad values raise a `ConfigError` naming the field path and the value ("search.lr.adam: must be > 0, got 0"), so
the runner can stop with exit status 2 before Ray starts. Presets live in `study/presets/*.yaml`.

A study directory's `spec.yaml` is the resolved spec (`StudySpec.resolved`): every default filled in, the
objective's eps and alpha, the audit's budgets, the architecture and the base's pretraining settings resolved,
so `analysis/` reads values from it and computes nothing again. `json_schema()` is the spec's JSON Schema, for
editors (`patchtune schema`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, StrictInt, model_validator

from study.settings import (
    BaseCfg,
    ResourcesCfg,
    RunName,
    SamplerCfg,
    SchedulerCfg,
    SearchCfg,
    TrackingCfg,
)
from trainables.config import AuditCfg, DataCfg, ModelCfg, ObjectiveCfg
from trainables.config.spine import Count, FieldError, PathText, Settings, merged, nested
from trainables.vocab import ConfigError, SamplerType, SchedulerType, arch_library

PRESET_DIR = Path(__file__).with_name("presets")
# Keys an older spec had, and where they live now: a spec that still uses one is told where it went.
MOVED = {"dataset": "data.dataset", "arch": "model.arch", "objective.val_limit": "data.limit_val",
         "search.methods.*.steps": "search.methods.*.at_steps", "audit.eps_grid": "audit.sweep_eps",
         "resources.cpu": "resources.cpus_per_trial", "resources.gpu": "resources.gpus_per_trial"}


class StudySpec(Settings):
    """A hyperparameter study: Optuna proposes fine-tuning runs of a base model, Ray Tune runs and schedules them,
    each scored every epoch on the validation split; the best are evaluated on the test split at the end."""

    name: RunName = Field(
        description="study name: 1-80 letters, digits, '.', '_' or '-' (the study directory is STORAGE/NAME)")
    data: DataCfg = Field(default_factory=DataCfg, description="the images")
    model: ModelCfg = Field(default_factory=ModelCfg, description="the architecture")
    base: BaseCfg = Field(default_factory=BaseCfg, description="the base model the trials fine-tune")
    search: SearchCfg = Field(default_factory=SearchCfg, description="what Optuna searches")
    epochs: Count = Field(2, description="fine-tuning epochs per trial (ASHA's max_t)")
    objective: ObjectiveCfg = Field(default_factory=ObjectiveCfg, description="what every trial scores each epoch")
    num_samples: Count = Field(8, description="trials")
    max_concurrent: Count = Field(2, description="trials running at once")
    resources: ResourcesCfg = Field(default_factory=ResourcesCfg, description="what each trial reserves")
    scheduler: SchedulerCfg = Field(default_factory=SchedulerCfg, description="which trials run to the end")
    sampler: SamplerCfg = Field(default_factory=SamplerCfg, description="how Optuna proposes trials")
    seed: StrictInt = Field(0, description="the study's seed: the sampler's (unless its own is set) and every trial's")
    storage: PathText = Field(
        "runs/studies", description="directory of study directories (a shared filesystem on a cluster, mounted at "
                                    "the same path on every node)")
    optuna_storage: str | None = Field(None, description="Optuna storage: any SQLAlchemy URL, or journal:PATH "
                                                         "(null: sqlite:///<study dir>/optuna.db)")
    max_failures: Annotated[int, Field(ge=-1, strict=True)] = Field(
        1, description="retries per trial after a crash (node loss), resumed from its last checkpoint (-1: forever)")
    best_trials: Count = Field(1, description="best trials evaluated on the test split at the end")
    audit: AuditCfg = Field(default_factory=AuditCfg, description="the strong-attack audit of the best trial(s)")
    tracking: TrackingCfg = Field(default_factory=TrackingCfg, description="MLflow tracking")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping):
            for old, new in MOVED.items():
                found = _find(raw, old.split("."))
                if found is not None:
                    raise FieldError(".".join(found), f"moved to {_fill(new, found)} (see `patchtune schema` or "
                                                      "the docs' spec reference)")
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if "://" in self.storage:
            raise FieldError("storage", "must be a filesystem path (mount cloud storage or NFS at the same path on "
                                        f"every node), got {self.storage!r}")
        info = self.data.info
        if self.search.patch_size[1] > info.side:
            raise FieldError("search.patch_size", f"upper bound {self.search.patch_size[1]} is larger than the "
                                                  f"{info.height}x{info.width} images")
        if self.objective.extra_objectives and self.scheduler.type is SchedulerType.ASHA:
            raise FieldError("scheduler.type", "asha cannot be combined with objective.multi_objective (use fifo)")
        if self.sampler.type is SamplerType.NSGA2 and not self.objective.extra_objectives:
            raise FieldError("sampler.type", "nsga2 is a multi-objective sampler; set objective.multi_objective: true "
                                             "or use tpe")
        if self.base.weights is not None and arch_library(self.arch) is None:
            raise FieldError("base.weights", f"{self.base.weights!r}: {self.arch} has no library weights (weights "
                                             "need model.arch torchvision/NAME or timm/NAME)")
        if self.scheduler.grace_period > self.epochs:
            raise FieldError("scheduler.grace_period", f"must be <= epochs ({self.epochs}), got "
                                                       f"{self.scheduler.grace_period}")
        return self

    # ------------------------------------------------------------------------------------------- derived

    def resolved(self) -> StudySpec:
        """Every default that depends on another setting filled in: the image side (imagenette's), the architecture
        (the data set's), the objective's eps (the paper's) and alpha (Madry's), the audit's budgets (the objective's
        eps), the base's pretraining lr and epochs (the paper's for the arch), the sampler's seed (the study's), the
        MLflow experiment (the study's name)."""
        model = self.model.resolved(self.data.dataset)
        assert model.arch is not None
        objective = self.objective.resolved(self.data.dataset)
        assert objective.eps is not None
        pretrain = self.base.pretrain
        base = self.base if pretrain is None else self.base.replace(pretrain=pretrain.resolved(model.arch, finetune=False))
        return self.replace(data=self.data.resolved(), model=model, objective=objective, base=base,
                            search=self.search.resolved(objective.eps),
                            audit=self.audit.replace(eps=self.audit.eps or (objective.eps,)),
                            sampler=self.sampler.replace(seed=self.sampler_seed),
                            tracking=self.tracking.replace(experiment=self.tracking.experiment or self.name))

    @property
    def arch(self) -> str:
        arch = self.model.resolved(self.data.dataset).arch
        assert arch is not None
        return arch

    @property
    def sampler_seed(self) -> int:
        return self.sampler.seed if self.sampler.seed is not None else self.seed

    def study_dir(self) -> Path:
        return Path(self.storage).expanduser().resolve() / self.name

    def optuna_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.study_dir() / 'optuna.db'}"

    def to_yaml(self) -> str:
        """Every setting, resolved, as YAML (what a study directory's spec.yaml holds)."""
        return str(yaml.safe_dump(self.resolved().to_json(), sort_keys=False, default_flow_style=None, width=110))


def _find(raw: Mapping[str, Any], path: list[str]) -> list[str] | None:
    """The concrete keys of `path` in `raw` ("*" matches any key), or None where it is absent."""
    head, *rest = path
    keys = [k for k in raw if head == "*" or k == head]
    for key in keys:
        if not rest:
            return [str(key)]
        if isinstance(raw[key], Mapping) and (found := _find(raw[key], rest)) is not None:
            return [str(key), *found]
    return None


def _fill(pattern: str, found: list[str]) -> str:
    """`pattern` ("search.methods.*.at_steps") with its "*" from the keys found."""
    parts = pattern.split(".")
    return ".".join(found[i] if p == "*" else p for i, p in enumerate(parts))


# --------------------------------------------------------------------------------------- reading


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
    return StudySpec.parse(raw)


# `patchtune run`'s flags and `api.load_spec`'s keywords: each the view of one spec setting (keyword -> path).
RUN_OVERRIDES = {
    "name": "name", "storage": "storage", "num_samples": "num_samples", "max_concurrent": "max_concurrent",
    "epochs": "epochs", "seed": "seed", "cpus_per_trial": "resources.cpus_per_trial",
    "gpus_per_trial": "resources.gpus_per_trial", "optuna_storage": "optuna_storage", "mlflow": "tracking.mlflow",
}


def load_spec(source: str, overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Read a preset or file, apply dotted-key overrides ({'resources.gpus_per_trial': 0.5}), validate."""
    raw = read_spec_dict(source)
    for dotted in overrides or {}:
        node: Any = raw
        for key in dotted.split(".")[:-1]:
            node = node.get(key, {}) if isinstance(node, Mapping) else None
            if node is not None and not isinstance(node, Mapping):
                raise ConfigError(f"{dotted}: cannot override inside a non-mapping")
    return parse_spec(merged(raw, nested(overrides or {})))


def json_schema() -> str:
    """The study spec's JSON Schema (draft 2020-12), generated from the models, for editors and validators."""
    schema = StudySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "patchtune study spec"
    return json.dumps(schema, indent=2)
