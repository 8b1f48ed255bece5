"""The configuration spine: every setting declared once, in one model per concept, and every CLI flag and API
keyword a view of one of them that carries no default of its own; the spec's JSON Schema comes from the same
models."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from cli_flags import command_options

from study import api
from study.cli.flags import FLAGS
from study.options import (
    AuditOptions,
    EvalOptions,
    FinetuneOptions,
    Output,
    PretrainOptions,
    RunOptions,
    SchemaOptions,
    ShowAugmentOptions,
)
from study.settings import REPRODUCE_KEYWORDS, BaseCfg, RayOptions, ReproCfg
from study.spec import RUN_OVERRIDES, StudySpec, json_schema, preset_names, read_spec_dict
from trainables import config
from trainables.config.spine import Settings, settings_fields

ROOT = Path(__file__).resolve().parents[1]
MODELS: tuple[type[Settings], ...] = (
    config.DataCfg, config.ModelCfg, config.AugCfg, config.TrainCfg, config.PretrainCfg, config.MethodCfg,
    config.AttackCfg, config.ObjectiveCfg, config.AuditCfg, StudySpec, BaseCfg, ReproCfg, RayOptions, Output,
    PretrainOptions,
    FinetuneOptions, EvalOptions, AuditOptions, RunOptions, ShowAugmentOptions, SchemaOptions,
)


def all_settings() -> dict[str, set[str]]:
    """Every setting, derived from the models: model name -> its (dotted) setting paths."""
    return {m.__name__: set(settings_fields(m)) for m in MODELS}


def test_every_setting_has_a_type_a_default_rule_and_a_description() -> None:
    for model in MODELS:
        for path, info in settings_fields(model).items():
            assert info.description, f"{model.__name__}.{path} has no description"
            assert info.annotation is not None, f"{model.__name__}.{path} has no type"


def _flags() -> dict[tuple[str, str], argparse.Action]:
    """Every (command, flag) the `patchtune` parser accepts, with its argparse action (one spelling per flag)."""
    return {(command, flag): action for command, options in command_options().items()
            for flag, action in options.items()
            if flag.startswith("--") and flag != "--help" and not flag.startswith("--no-")}


def test_every_cli_flag_is_a_view_of_one_setting_with_no_default_of_its_own() -> None:
    settings = all_settings()
    flags = _flags()
    assert len(flags) > 80
    for (command, flag), action in flags.items():
        assert (command, flag) in FLAGS, f"patchtune {command} {flag} is not declared as a view of a setting"
        model, path = FLAGS[(command, flag)].split(".", 1)
        assert model in settings and path in settings[model], f"{command} {flag} -> {model}.{path} is no setting"
        assert action.default is None, f"patchtune {command} {flag} has a default of its own: {action.default!r}"
        # the flag is the setting's name (or, in a section, the section and the name joined: --data-root)
        name = path.rsplit(".", 1)[-1].replace("_", "-")
        assert flag == f"--{name}" or flag.replace("--", "").replace("-", "_") in (
            path.replace(".", "_"), *RUN_OVERRIDES, *REPRODUCE_KEYWORDS), (command, flag, path)
    assert set(FLAGS) == set(flags), "every declared flag exists"


def test_the_help_shows_the_models_defaults() -> None:
    text = subprocess.run([sys.executable, "-m", "study.cli", "audit", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT).stdout
    assert "(default: 100)" in text and "(default: 5000)" in text  # strong_steps, square_queries from AuditCfg


# Python-only keywords: what a caller passes in Python and a command line cannot (callbacks, progress bars).
PYTHON_ONLY = {"progress", "log"}
# keyword -> setting of the calls whose keywords are fixed (the rest take **keywords, checked below)
KEYWORDS = {
    "run": {"address": "RayOptions.address", "dashboard": "RayOptions.dashboard",
            "dashboard_host": "RayOptions.dashboard_host"},
    "resume": {"address": "RayOptions.address", "dashboard": "RayOptions.dashboard"},
    "reproduce": {"address": "RayOptions.address"},
    "audit": {"base": "AuditOptions.base", "data_root": "DataCfg.root", "arch": "ModelCfg.arch",
              "dataset": "DataCfg.dataset", "image_size": "DataCfg.image_size", "device": "Output.device"},
}


def test_every_api_keyword_is_a_view_of_one_setting_with_no_default_of_its_own() -> None:
    settings = all_settings()
    for call, views in KEYWORDS.items():
        signature = inspect.signature(getattr(api, call))
        for name, parameter in signature.parameters.items():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or name in PYTHON_ONLY:
                continue
            assert name in views, f"api.{call}({name}=...) is not declared as a view of a setting"
            model, path = views[name].split(".", 1)
            assert path in settings[model], (call, name)
            assert parameter.default is None, f"api.{call}({name}=...) has a default of its own: {parameter.default!r}"
    # the calls that take settings by keyword: each keyword one setting, by the same name
    assert all(path in settings["StudySpec"] for path in RUN_OVERRIDES.values())
    assert all(path in settings["ReproCfg"] for path in REPRODUCE_KEYWORDS.values())
    assert all(k.endswith(p.rsplit(".", 1)[-1]) for k, p in {**RUN_OVERRIDES, **REPRODUCE_KEYWORDS}.items())
    with pytest.raises(TypeError, match="unknown keyword"):
        api.reproduction_cfg("fmnist", limit=3)
    with pytest.raises(TypeError, match="unknown setting"):
        api.audit("x.pt", steps=3)
    assert api.reproduction_cfg("fmnist", epochs=1, limit_train=64).data.limit_train == 64


def test_a_setting_given_nowhere_takes_the_models_default() -> None:
    """Not given means the model's default: the CLI and the API pass only what was given."""
    assert api.reproduction_cfg("fmnist").strong_steps == config.AuditCfg().strong_steps == 100
    assert api.reproduction_cfg("fmnist").data.limit_train == 10000  # the data set's budget, where none is given
    assert api.reproduction_cfg("cifar10").data.limit_train is None  # ... and all images on CIFAR-10
    assert api.load_spec("quick", num_samples=None).num_samples == read_spec_dict("quick")["num_samples"]


def test_the_spec_json_schema_is_generated_from_the_models_and_checks_specs(tmp_path: Path) -> None:
    schema = json.loads(json_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in preset_names():  # every preset, and every resolved spec, is valid
        raw = read_spec_dict(name)
        assert not list(validator.iter_errors(raw)), name
        assert not list(validator.iter_errors(yaml.safe_load(StudySpec.parse(raw).to_yaml()))), name
    bad = {**read_spec_dict("quick"), "epochs": 0, "search": {"lr": {"adagrad": [1e-3, 1e-2]}}}
    assert {e.json_path for e in validator.iter_errors(bad)} >= {"$.epochs"}
    described = schema["$defs"]["AuditCfg"]["properties"]["strong_steps"]
    assert described["default"] == 100 and "strong PGD" in described["description"]
    # `patchtune schema` prints the same schema, or writes it
    proc = subprocess.run([sys.executable, "-m", "study.cli", "schema", "--out", str(tmp_path / "spec.schema.json")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "spec.schema.json").read_text()) == schema


def test_a_trial_config_reads_back_from_a_results_table() -> None:
    """Found by `make run`: results.parquet holds one row per trial, and a column that some trials lack (at_steps:
    only PGD-AT has it) comes back as floats with NaN, which the strict settings refuse (4.0 is no integer)."""
    import pandas as pd

    frame = pd.DataFrame([{"method": "pgd_at", "at_steps": 4, "optimizer": "adam", "lr": 1e-3, "batch_size": 64,
                           "epochs": 2, "seed": 0},
                          {"method": "patch", "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 128, "epochs": 2,
                           "seed": 0, "patch_size": 5, "num_patches": 1, "pool": "flip", "augment": True}])
    first, second = (config.trial_config(r) for r in frame.to_dict("records"))
    assert first["at_steps"] == 4 and isinstance(first["at_steps"], int) and first["patch_size"] is None
    train, aug, method = config.trial_cfgs(first)
    assert method.at_steps == 4 and aug is None and train.batch_size == 64
    train, aug, method = config.trial_cfgs(second)
    assert aug is not None and aug.patch_size == 5 and method.at_steps is None
