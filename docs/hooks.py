"""MkDocs hooks: the spec reference and the settings reference are generated from the settings models at build
time (so they cannot drift from the code), and the spec's JSON Schema is published beside them."""

from __future__ import annotations

import enum
import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

SPEC_MARKER = "<!-- generated: spec reference -->"
SETTINGS_MARKER = "<!-- generated: settings reference -->"
SEARCH_MARKER = "<!-- generated: search benchmark -->"
SEARCH_REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "search_replay.md"


def _type_text(annotation: Any) -> str:
    from trainables.config.spine import value_type

    kind = value_type(annotation)
    origin = typing.get_origin(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return f"section `{kind.__name__}`"
    if origin in (tuple, list):
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        inner = _type_text(args[0]) if args else "value"
        return f"list of {inner}" if Ellipsis in typing.get_args(kind) else f"[{', '.join(_type_text(a) for a in args)}]"
    if origin is dict:
        key, value = typing.get_args(kind)
        return f"mapping {_type_text(key)} → {_type_text(value)}"
    if origin in (typing.Union,) or str(kind).startswith(("bool |", "typing.Union")):
        return " or ".join(_type_text(a) for a in typing.get_args(kind) if a is not type(None))
    names = {int: "integer", float: "number", bool: "true / false", str: "text"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _range_text(info: Any) -> str:
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {getattr(meta, attr):g}")
    return ", ".join(bounds)


def _default_text(info: Any) -> str:
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{json.dumps(_plain(value))}`"


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    return value


def model_table(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One row per field of `model`: name, type, range, default, description."""
    rows = ["| setting | type | range | default | what it is |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | {_type_text(info.annotation)} | {_range_text(info)} | "
                    f"{_default_text(info)} | {description} |")
    return rows


def spec_reference() -> str:
    from study.spec import StudySpec
    from trainables.config.spine import value_type

    lines = ["The study spec's own settings, then one table per section (each section is one settings model).", ""]
    lines += model_table(StudySpec)
    sections = [(n, value_type(i.annotation)) for n, i in StudySpec.model_fields.items()
                if isinstance(value_type(i.annotation), type) and issubclass(value_type(i.annotation), BaseModel)]
    for name, model in sections:
        lines += ["", f"### `{name}:` ({model.__name__})", "", (model.__doc__ or "").split("\n\n")[0].strip(), ""]
        lines += model_table(model, f"{name}.")
        for field, info in model.model_fields.items():
            nested = value_type(info.annotation)
            inner = [a for a in typing.get_args(nested) if isinstance(a, type) and issubclass(a, BaseModel)]
            nested = inner[0] if inner else nested
            if isinstance(nested, type) and issubclass(nested, BaseModel):
                lines += ["", f"#### `{name}.{field}` ({nested.__name__})", ""]
                lines += model_table(nested, f"{name}.{field}.")
    return "\n".join(lines)


def settings_reference() -> str:
    from study import options, settings
    from trainables import config

    groups = [("The tensor layer (`trainables.config`)",
               [config.DataCfg, config.ModelCfg, config.AugCfg, config.TrainCfg, config.PretrainCfg, config.MethodCfg,
                config.AttackCfg, config.ObjectiveCfg, config.AuditCfg]),
              ("The study layer (`study.settings`)",
               [settings.BaseCfg, settings.SearchCfg, settings.MethodSearch, settings.SchedulerCfg,
                settings.SamplerCfg, settings.ResourcesCfg, settings.TrackingCfg, settings.RayOptions,
                settings.ReproCfg]),
              ("The commands' own options (`study.options`)",
               [options.Output, options.PretrainOptions, options.FinetuneOptions, options.EvalOptions,
                options.AuditOptions, options.RunOptions, options.ShowAugmentOptions, options.SchemaOptions])]
    lines: list[str] = []
    for title, models in groups:
        lines += [f"## {title}", ""]
        for model in models:
            lines += [f"### {model.__name__}", "", " ".join((model.__doc__ or "").split()), ""]
            lines += model_table(model) + [""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if SPEC_MARKER in markdown:
        markdown = markdown.replace(SPEC_MARKER, spec_reference())
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_reference())
    if SEARCH_MARKER in markdown:  # the replay's own report, as `python -m benchmarks.search_replay` last wrote it
        markdown = markdown.replace(SEARCH_MARKER, SEARCH_REPORT.read_text())
    return markdown


def on_files(files: Any, config: Any, **_: Any) -> Any:
    """Publish the spec's JSON Schema as a file of the site (`patchtune schema` prints the same), so the reference
    can link to it and the strict build checks that link."""
    from mkdocs.structure.files import File

    from study.spec import json_schema

    files.append(File.generated(config, "spec.schema.json", content=json_schema() + "\n"))
    return files
