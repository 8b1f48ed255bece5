"""The configuration spine: the base of every settings model, the field types they share, and one-line errors.

Every setting patchtune has is a field of one pydantic model (one model per concept: data, model, augmentation,
attack, method, training, objective, audit here; search, scheduler, sampler, resources, tracking, the study
and the reproduction in `study.settings`), declared once with its type, range, default and a one-line
description. The study spec, the CLI's flags and the Python API's keywords are views of those fields: a flag
or keyword that is not given is None, and the model fills in its default. JSON Schema and the docs' spec
reference are generated from the same models.

A bad value raises `ConfigError` with one line naming the field's path and the value
("search.lr.adam: must be > 0, got 0"), which the CLI prints before anything runs (exit status 2).
Scalars are strict: "3" is not an integer, true is not a number, NaN is not a budget.
"""

from __future__ import annotations

import enum
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)
from pydantic.fields import FieldInfo
from typing_extensions import Self

from trainables.vocab import ConfigError

__all__ = ["Count", "FieldError", "Flag", "PathText", "Positive", "Settings", "Share", "Unit", "UnitClosed", "as_jsonable",
           "config_error", "field_path_of", "merged", "nested", "settings_fields", "value_type"]

# Shared field types. Strict: YAML's "3" or true never silently becomes a number.
Positive = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
Unit = Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]  # a pixel budget in (0, 1]
UnitClosed = Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)]  # [0, 1]
Share = Annotated[StrictFloat, Field(ge=0, lt=1, allow_inf_nan=False)]  # a share of something in [0, 1)
Count = Annotated[StrictInt, Field(ge=1)]
Flag = StrictBool
# A file or directory path: text, or a path object (the Python API's callers pass `Path`s).
PathText = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v),
                     Field(min_length=1, strict=True)]


class FieldError(ValueError):
    """A check across fields, raised from a model validator, that names the field it is about by its path below
    the model ("methods.fgsm_rs.at_steps"): the one-line error then names that field, not the model."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class Settings(BaseModel):
    """A frozen, validated settings record. Unknown keys are refused; errors are one-line `ConfigError`s."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False, validate_default=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc, type(self)) from None

    @classmethod
    def parse(cls, raw: Any, path: str = "") -> Self:
        """`raw` (a mapping, e.g. from YAML) as this model; errors name the field as `path.field`."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path or cls.__name__}: must be a mapping of settings, got {_show(raw)}")
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as exc:
            raise config_error(exc, cls, prefix=path) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with `changes` (`dataclasses.replace` for settings); the fields left to their defaults
        stay so (`given` tells them apart)."""
        return self.parse({**{k: getattr(self, k) for k in self.model_fields_set}, **changes})

    def given(self) -> frozenset[str]:
        """The fields set explicitly (not left to their defaults)."""
        return frozenset(self.model_fields_set)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (enums as their values, tuples as lists), every field included."""
        out: dict[str, Any] = self.model_dump(mode="json")
        return out


# ------------------------------------------------------------------------------------------- errors


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, enum.Enum):
        return repr(value.value)
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def _expected(ctx: Mapping[str, Any]) -> str:
    """"'a', 'b' or 'c'" -> "a, b, c"."""
    text = str(ctx.get("expected", ""))
    return ", ".join(part.strip().strip("'") for part in re.split(r",| or ", text) if part.strip())


_TYPES = {
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "string_type": "must be a string", "finite_number": "must be finite",
    "tuple_type": "must be a list", "list_type": "must be a list", "dict_type": "must be a mapping",
    "set_type": "must be a list",
}


def _message(err: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {_show(value)}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return f"must not be empty{got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}{got}"
    if kind in _TYPES:
        return _TYPES[kind] + got
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op, bound = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"),
                     "less_than_equal": ("<=", "le")}[kind]
        return f"must be {op} {ctx[bound]:g}{got}" if isinstance(ctx[bound], (int, float)) else f"must be {op} {ctx[bound]}{got}"
    if kind == "enum":
        return f"must be one of {_expected(ctx)}{got}"
    if kind in ("model_type", "model_attributes_type"):
        if value is None:
            return "must be a mapping of settings, got null (leave the key out for the defaults)"
        return f"must be a mapping of settings{got}"
    if kind == "extra_forbidden":
        allowed = ", ".join(model.model_fields) if model is not None else ""
        return f"unknown key {_show(err['loc'][-1])}" + (f" (allowed: {allowed})" if allowed else "")
    if kind in ("too_short", "too_long"):
        return f"must have {_length(ctx)} items{got}"
    if kind == "missing":
        return "is required"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    return f"{err['msg']}{got}"


def _length(ctx: Mapping[str, Any]) -> str:
    lo, hi = ctx.get("min_length"), ctx.get("max_length")
    return f"{lo}" if lo == hi and lo is not None else f"at least {lo}" if hi is None else f"at most {hi}"


class SettingError(ConfigError):
    """A ConfigError that knows which setting it is about (`path`, below the model that raised it) and what is
    wrong with it (`problem`), so a model that holds that model can name the setting from its own root."""

    def __init__(self, path: tuple[str, ...], problem: str) -> None:
        super().__init__(f"{'.'.join(path)}: {problem}" if path else problem)
        self.path, self.problem = path, problem


def config_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> SettingError:
    """The first of pydantic's errors as one line: "<field path>: <what is wrong>, got <value>"."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        path, owner = loc[:-1], _model_at(model, loc[:-1])
    else:
        path, owner = loc, None
    if err["type"] == "enum" and loc and loc[-1] == "[key]":  # a mapping keyed by a vocabulary
        path, message = loc[:-2], f"unknown key {_show(err['input'])} (choose from {_expected(err.get('ctx') or {})})"
    else:
        message = _message(err, owner)
    names = [str(p) for p in path if isinstance(p, str) and not _is_union_tag(p)]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        names += cause.path.split(".")
    elif isinstance(cause, SettingError):  # a nested model's own error (raised by its __init__)
        names, message = names + list(cause.path), cause.problem
    return SettingError(tuple([*prefix.split("."), *names] if prefix else names), message)


def _is_union_tag(part: str) -> bool:
    # pydantic names union members in the location ("bool", "tuple[str-enum[X], ...]", "function-after[...]")
    return part in ("bool", "int", "float", "str", "[key]") or "[" in part


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The settings model at `loc` inside `model`: a field's model, or a mapping's value model (a part of `loc`
    that is no field is a mapping key, which keeps the values' model). None where the path leaves models."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, str) and part in current.model_fields:
            current = _model_in(current.model_fields[part].annotation)
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for arg in _flatten(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _flatten(annotation: Any) -> list[Any]:
    """The types inside `X | None`, `Annotated[X, ...]`, `Mapping[K, X]`, `tuple[X, ...]`."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    if origin is Annotated:
        return _flatten(typing.get_args(annotation)[0])
    out = []
    for arg in typing.get_args(annotation):
        out += _flatten(arg)
    return out


# ------------------------------------------------------------------------------------------- introspection


def settings_fields(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    """Every setting of `model`, nested models expanded: {"search.lr": FieldInfo, ...} (mapping values that are
    models count as one setting, e.g. `search.methods`)."""
    out: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _direct_model(info.annotation)
        if nested is not None:
            out.update(settings_fields(nested, f"{path}."))
        else:
            out[path] = info
    return out


def value_type(annotation: Any) -> Any:
    """The type a setting's values have: `X` of `X | None` and of `Annotated[X, ...]` (a union of several types
    stays a union)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return value_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return value_type(args[0]) if len(args) == 1 else annotation
    return annotation


def _direct_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a field typed `M` or `M | None` (not a mapping or list of models)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    for candidate in (annotation, *args):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_path_of(model: type[BaseModel], path: str) -> FieldInfo:
    """The FieldInfo at dotted `path` in `model` (KeyError if there is none)."""
    fields = settings_fields(model)
    if path not in fields:
        raise KeyError(f"{model.__name__} has no setting {path!r}")
    return fields[path]


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"resources.gpus_per_trial": 1} -> {"resources": {"gpus_per_trial": 1}}: dotted setting paths as the nested
    mapping a model parses."""
    out: dict[str, Any] = {}
    for dotted, value in values.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with the nested `changes` on top (a mapping in both is merged, anything else replaced)."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def as_jsonable(obj: Any) -> Any:
    """Settings / dataclasses / enums / tuples -> plain JSON types (checkpoint metadata, --json output)."""
    import dataclasses

    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
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
