from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from study.spec import load_spec, parse_spec, preset_names, read_spec_dict
from trainables.config import ConfigError


def test_presets_load_and_resolve() -> None:
    assert {"quick", "fmnist-paper", "cifar10-paper", "imagenette-paper"} <= set(preset_names())
    for name in preset_names():
        spec = load_spec(name)
        assert spec.name == name
        assert spec.resolved_arch in ("cnn3", "vgg16")
        again = parse_spec(yaml.safe_load(spec.to_yaml()))  # the dumped spec is a valid spec
        assert again == spec
    quick = load_spec("quick")
    assert load_spec("fmnist-paper").objective_eps == 0.3 and load_spec("cifar10-paper").objective_eps == 0.03
    assert quick.num_samples >= 8
    # the quick study scores where robustness can move, with an attack that reaches its eps, and searches methods
    assert quick.objective_eps == 0.1 and quick.objective_alpha * quick.objective.steps >= 2 * quick.objective_eps
    assert {"patch", "fgsm_rs", "pgd_at"} <= set(quick.search.methods)
    paper_space = load_spec("quick-paper")  # the same study in the paper's space
    assert set(paper_space.search.methods) == {"patch"}
    assert dataclasses.replace(paper_space, name="quick", search=quick.search) == quick


def test_extra_objectives() -> None:
    def extra(value: object) -> list[str]:
        spec = load_spec("quick", {"objective.multi_objective": value, "scheduler.type": "fifo"})
        return [e.value for e in spec.objective.extra_objectives]

    assert extra(False) == [] and extra(True) == ["clean"] and extra(["cost"]) == ["cost"]
    assert extra(["cost", "clean"]) == ["cost", "clean"]


def test_overrides_apply_dotted_keys() -> None:
    spec = load_spec("quick", {"num_samples": 3, "resources.gpu": 0.25, "name": "x1"})
    assert spec.num_samples == 3 and spec.resources.gpu == 0.25 and spec.name == "x1"


BAD = [
    ({"epochs": 0}, "epochs: must be >= 1, got 0"),
    ({"epochs": "3"}, "epochs: must be an integer, got '3'"),
    ({"dataset": "mnist"}, "dataset: must be one of fmnist, cifar10, imagenette, got 'mnist'"),
    ({"frobnicate": 1}, "unknown key 'frobnicate'"),
    ({"search": {"lr": {"adagrad": [1e-3, 1e-2]}}}, "search.lr: unknown optimizer 'adagrad'"),
    ({"search": {"lr": {"adam": [1e-2, 1e-3]}}}, "search.lr.adam: lower bound must be <= upper bound, got [0.01, 0.001]"),
    ({"search": {"lr": {"adam": [0, 1e-3]}}}, "search.lr.adam: must be > 0, got 0"),
    ({"search": {"patch_size": [4, 40]}}, "search.patch_size: upper bound 40 is larger than the 28x28 images"),
    ({"search": {"pool": {op: False for op in ("rotate", "translate", "flip", "noise", "occlude")}}}, "at least one op must be on"),
    ({"search": {"pool": {"blur": True}}}, "search.pool: unknown op 'blur'"),
    ({"search": {"methods": {"madry": {}}}}, "search.methods: must be one of patch, fgsm_rs, pgd_at, trades, got 'madry'"),
    ({"search": {"methods": {"trades": {"beta": [0, 6]}}}}, "search.methods.trades.beta: must be > 0, got 0"),
    ({"search": {"methods": {"trades": {"beta": [-1.0, 6]}}}}, "search.methods.trades.beta: must be > 0, got -1.0"),
    ({"search": {"methods": {"pgd_at": {"steps": [0, 5]}}}}, "search.methods.pgd_at.steps: must be >= 1, got 0"),
    ({"search": {"methods": {"fgsm_rs": {"steps": [1, 3]}}}},
     "search.methods.fgsm_rs.steps: is not a parameter of method fgsm_rs (it takes eps, warmup)"),
    ({"search": {"methods": {"pgd_at": {"beta": [1, 2]}}}},
     "search.methods.pgd_at.beta: is not a parameter of method pgd_at (it takes eps, steps, warmup)"),
    ({"search": {"methods": {"patch": {"augment": [False, True]}}}},
     "search.methods.patch.augment: patch is the patch augmentation itself: it can only be [true]"),
    ({"search": {"methods": {"pgd_at": {"augment": ["yes"]}}}}, "search.methods.pgd_at.augment: must be [false], [true]"),
    ({"search": {"methods": {"pgd_at": {"alpha": 0.1}}}}, "search.methods.pgd_at: unknown key 'alpha'"),
    ({"search": {"methods": {}}}, "search.methods: must map method names to their parameter ranges"),
    ({"search": {"train_eps": 0}}, "search.train_eps: must be > 0, got 0"),
    ({"search": {"eps_warmup": 1.0}}, "search.eps_warmup: must be < 1, got 1.0"),
    ({"search": {"eps_warmup": -0.1}}, "search.eps_warmup: must be >= 0, got -0.1"),
    ({"search": {"train_eps": 1.5}}, "search.train_eps: must be <= 1, got 1.5"),
    ({"search": {"num_patches": [1, 3], "jitter": 0}}, "more than one patch needs jitter > 0"),
    ({"search": {"batch_size": []}}, "search.batch_size: must be a non-empty list"),
    ({"objective": {"metric": "auc"}}, "objective.metric: must be one of pgd_acc, robust_auc, got 'auc'"),
    ({"objective": {"eps": 1.5}}, "objective.eps: must be <= 1, got 1.5"),
    ({"objective": {"restarts": 0}}, "objective.restarts: must be >= 1, got 0"),
    ({"objective": {"multi_objective": ["cost", "speed"]}, "scheduler": {"type": "fifo"}},
     "objective.multi_objective: must be true, false or a list of distinct clean, cost, got ['cost', 'speed']"),
    ({"objective": {"multi_objective": []}, "scheduler": {"type": "fifo"}}, "objective.multi_objective: must be true"),
    ({"objective": {"multi_objective": ["cost"]}}, "asha cannot be combined with objective.multi_objective"),
    ({"objective": {"multi_objective": True}}, "asha cannot be combined with objective.multi_objective"),
    ({"sampler": {"type": "nsga2"}}, "nsga2 is a multi-objective sampler"),
    ({"sampler": {"type": "cmaes"}}, "sampler.type: must be one of tpe, random, nsga2, got 'cmaes'"),
    ({"scheduler": {"grace_period": 5}}, "scheduler.grace_period: must be <= epochs"),
    ({"resources": {"gpu": -1}}, "resources.gpu: must be >= 0, got -1"),
    ({"name": "a b/c"}, "name: must be 1-80 letters"),
    ({"base": {"checkpoint": "x.pt", "pretrain": {"epochs": 1}}}, "base: give exactly one of checkpoint"),
    ({"base": {"pretrain": {"optimizer": "lion"}}}, "base.pretrain.optimizer: must be one of"),
    ({"base": {"pretrain": {"limit_eval": 0}}}, "base.pretrain.limit_eval: must be >= 1, got 0"),
    ({"data": {"val_fraction": 0}}, "data.val_fraction: must be > 0, got 0"),
    ({"data": {"image_size": 64}}, "data.image_size: is only settable for imagenette"),
    ({"audit": {"enabled": "yes"}}, "audit.enabled: must be true or false, got 'yes'"),
    ({"audit": {"eps": [0.3, 2]}}, "audit.eps: must be <= 1, got 2"),
    ({"audit": {"limit": 0}}, "audit.limit: must be >= 1, got 0"),
    ({"audit": {"components": ["apgd-ce", "cw"]}}, "audit.components: must be a non-empty subset of"),
    ({"audit": {"strong": 3}}, "audit: unknown key 'strong'"),
]


@pytest.mark.parametrize("patch, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_specs_name_the_field_and_value(patch: dict, message: str) -> None:
    raw = read_spec_dict("quick")
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    with pytest.raises(ConfigError) as err:
        parse_spec(raw)
    assert message in str(err.value)


def test_yaml_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsearch: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ column \d+ is not valid YAML"):
        load_spec(str(bad))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_spec(str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_spec("no-such-preset")


def test_yaml_is_parsed_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(ConfigError):
        load_spec(str(evil))
    assert not (tmp_path / "pwned").exists()


SECTIONS = ["data", "base", "search", "objective", "resources", "scheduler", "sampler", "audit"]


@pytest.mark.parametrize("section", SECTIONS)
def test_a_section_set_to_null_is_refused_in_one_line(section: str) -> None:
    # Found by the fuzz test in test_reliability.py: `sampler: null` ended in an AttributeError traceback.
    raw = read_spec_dict("quick")
    raw[section] = None
    with pytest.raises(ConfigError, match=rf"^{section}: must be a mapping of settings, got null"):
        parse_spec(raw)


def test_every_section_null_at_once_is_refused() -> None:
    raw = {**read_spec_dict("quick"), **{s: None for s in SECTIONS}}
    with pytest.raises(ConfigError, match="must be a mapping of settings, got null"):
        parse_spec(raw)


def test_base_pretrain_null_means_no_pretraining() -> None:
    spec = parse_spec({**read_spec_dict("quick"), "base": {"checkpoint": "b.pt", "pretrain": None}})
    assert spec.base.pretrain is None and spec.base.checkpoint == "b.pt"
