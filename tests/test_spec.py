from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.spec import load_spec, parse_spec, preset_names, read_spec_dict
from trainables.config import ConfigError


def test_presets_load_and_resolve() -> None:
    assert {"quick", "fmnist-paper", "cifar10-paper", "imagenette-paper"} <= set(preset_names())
    for name in preset_names():
        spec = load_spec(name)
        assert spec.name == name and spec.arch in ("cnn3", "vgg16")
        again = parse_spec(yaml.safe_load(spec.to_yaml()))  # the dumped (resolved) spec is a valid spec
        assert again == spec.resolved() and again.resolved() == again
    quick = load_spec("quick").resolved()
    assert load_spec("fmnist-paper").resolved().objective.eps == 0.3
    assert load_spec("cifar10-paper").resolved().objective.eps == 0.03
    assert quick.num_samples >= 8
    # the quick study scores where robustness can move, with an attack that reaches its eps, and searches methods
    assert quick.objective.eps == 0.1 and quick.objective.pgd().alpha * quick.objective.steps >= 2 * 0.1
    assert {"patch", "fgsm_rs", "pgd_at"} <= {m.value for m in quick.search.methods}
    paper_space = load_spec("quick-paper")  # the same study in the paper's space
    assert {m.value for m in paper_space.search.methods} == {"patch"}
    assert paper_space.replace(name="quick", search=load_spec("quick").search) == load_spec("quick")


def test_the_resolved_spec_leaves_nothing_to_compute() -> None:
    """spec.yaml is the resolved spec: every default that depends on another setting is filled in, so `analysis/`
    reads values and computes none (the arch, eps and alpha, the audit's budgets, the base's lr and epochs, each
    searched method's fixed parameters, the sampler's seed)."""
    raw = yaml.safe_load(load_spec("quick").to_yaml())
    assert raw["model"]["arch"] == "cnn3" and raw["objective"]["eps"] == 0.1 and raw["objective"]["alpha"] == 0.025
    assert raw["audit"]["eps"] == [0.1, 0.3] and raw["sampler"]["seed"] == 0
    assert raw["base"]["pretrain"]["lr"] == 1e-3 and raw["base"]["pretrain"]["epochs"] == 3
    assert raw["search"]["train_eps"] == 0.1 and raw["search"]["methods"]["patch"]["augment"] == [True]
    assert raw["search"]["methods"]["pgd_at"]["at_steps"] == [2, 4]
    bare = yaml.safe_load(parse_spec({"name": "bare", "data": {"dataset": "cifar10"}}).to_yaml())
    assert bare["model"]["arch"] == "vgg16" and bare["objective"]["eps"] == 0.03
    assert bare["objective"]["alpha"] == pytest.approx(2.5 * 0.03 / 10) and bare["base"]["pretrain"]["epochs"] == 200
    assert bare["audit"]["eps"] == [0.03] and bare["search"]["methods"]["patch"]["augment"] == [True]

    def nulls(node: object, path: str = "") -> list[str]:
        if isinstance(node, dict):
            return [p for k, v in node.items() for p in nulls(v, f"{path}.{k}")]
        return [path] if node is None else []

    # what is still null means "none" (no root, no limit, no checkpoint, no tracking), never "a default"; but for
    # optuna_storage: the study directory's own optuna.db, wherever that directory is moved to
    assert set(nulls(bare)) == {".data.root", ".data.limit_train", ".data.limit_val", ".data.limit_test",
                                ".data.image_size", ".base.checkpoint", ".base.weights", ".base.pretrain.limit_train",
                                ".base.pretrain.limit_eval", ".search.methods.patch.at_steps",
                                ".search.methods.patch.beta", ".optuna_storage", ".tracking.mlflow"}
    assert bare["tracking"]["experiment"] == "bare"
    nette = yaml.safe_load(parse_spec({"name": "n", "data": {"dataset": "imagenette"}}).to_yaml())
    assert nette["data"]["image_size"] == 160


def test_extra_objectives() -> None:
    def extra(value: object) -> list[str]:
        spec = load_spec("quick", {"objective.multi_objective": value, "scheduler.type": "fifo"})
        return [e.value for e in spec.objective.extra_objectives]

    assert extra(False) == [] and extra(True) == ["clean"] and extra(["cost"]) == ["cost"]
    assert extra(["cost", "clean"]) == ["cost", "clean"]


def test_overrides_apply_dotted_keys() -> None:
    spec = load_spec("quick", {"num_samples": 3, "resources.gpus_per_trial": 0.25, "name": "x1"})
    assert spec.num_samples == 3 and spec.resources.gpus_per_trial == 0.25 and spec.name == "x1"
    assert spec.resources.cpus_per_trial == 1.0  # the other settings of the section stay


BAD = [
    ({"epochs": 0}, "epochs: must be >= 1, got 0"),
    ({"epochs": "3"}, "epochs: must be an integer, got '3'"),
    ({"data": {"dataset": "mnist"}}, "data.dataset: must be one of fmnist, cifar10, imagenette, imagefolder, got 'mnist'"),
    ({"frobnicate": 1}, "unknown key 'frobnicate' (allowed: name, data, model, base, search,"),
    ({"search": {"lr": {"adagrad": [1e-3, 1e-2]}}}, "search.lr: unknown key 'adagrad' (choose from adam, rmsprop"),
    ({"search": {"lr": {"adam": [1e-2, 1e-3]}}}, "search.lr.adam: lower bound must be <= upper bound, got [0.01, 0.001]"),
    ({"search": {"lr": {"adam": [0, 1e-3]}}}, "search.lr.adam: must be > 0, got 0"),
    ({"search": {"lr": {}}}, "search.lr: must not be empty, got {}"),
    ({"search": {"patch_size": [4, 40]}}, "search.patch_size: upper bound 40 is larger than the 28x28 images"),
    ({"search": {"pool": {op: False for op in ("rotate", "translate", "flip", "noise", "occlude")}}},
     "search.pool: at least one op must be on"),
    ({"search": {"pool": {"blur": True}}}, "search.pool: unknown key 'blur' (choose from rotate, translate"),
    ({"search": {"methods": {"madry": {}}}}, "search.methods: unknown key 'madry' (choose from patch, fgsm_rs, pgd_at"),
    ({"search": {"methods": {"trades": {"beta": [0, 6]}}}}, "search.methods.trades.beta: must be > 0, got 0"),
    ({"search": {"methods": {"trades": {"beta": [-1.0, 6]}}}}, "search.methods.trades.beta: must be > 0, got -1.0"),
    ({"search": {"methods": {"pgd_at": {"at_steps": [0, 5]}}}}, "search.methods.pgd_at.at_steps: must be >= 1, got 0"),
    ({"search": {"methods": {"pgd_at": {"at_steps": [5, 2]}}}},
     "search.methods.pgd_at.at_steps: lower bound must be <= upper bound, got [5, 2]"),
    ({"search": {"methods": {"fgsm_rs": {"at_steps": [1, 3]}}}},
     "search.methods.fgsm_rs.at_steps: is not a parameter of method fgsm_rs (it takes train_eps, eps_warmup)"),
    ({"search": {"methods": {"pgd_at": {"beta": [1, 2]}}}},
     "search.methods.pgd_at.beta: is not a parameter of method pgd_at (it takes train_eps, at_steps, eps_warmup)"),
    ({"search": {"methods": {"patch": {"augment": [False, True]}}}},
     "search.methods.patch.augment: patch is the patch augmentation itself: it can only be [true]"),
    ({"search": {"methods": {"pgd_at": {"augment": ["yes"]}}}}, "search.methods.pgd_at.augment: must be true or false, got 'yes'"),
    ({"search": {"methods": {"pgd_at": {"alpha": 0.1}}}},
     "search.methods.pgd_at: unknown key 'alpha' (allowed: at_steps, beta, augment)"),
    ({"search": {"methods": {}}}, "search.methods: must not be empty, got {}"),
    ({"search": {"train_eps": 0}}, "search.train_eps: must be > 0, got 0"),
    ({"search": {"eps_warmup": 1.0}}, "search.eps_warmup: must be < 1, got 1.0"),
    ({"search": {"eps_warmup": -0.1}}, "search.eps_warmup: must be >= 0, got -0.1"),
    ({"search": {"train_eps": 1.5}}, "search.train_eps: must be <= 1, got 1.5"),
    ({"search": {"num_patches": [1, 3], "jitter": 0}}, "search.num_patches: more than one patch needs jitter > 0"),
    ({"search": {"batch_size": []}}, "search.batch_size: must not be empty, got []"),
    ({"objective": {"metric": "auc"}}, "objective.metric: must be one of pgd_acc, robust_auc, got 'auc'"),
    ({"objective": {"eps": 1.5}}, "objective.eps: must be <= 1, got 1.5"),
    ({"objective": {"restarts": 0}}, "objective.restarts: must be >= 1, got 0"),
    ({"objective": {"multi_objective": ["cost", "speed"]}, "scheduler": {"type": "fifo"}},
     "objective.multi_objective: must be true, false or a list of distinct clean, cost, got ['cost', 'speed']"),
    ({"objective": {"multi_objective": []}, "scheduler": {"type": "fifo"}}, "objective.multi_objective: must be true"),
    ({"objective": {"multi_objective": ["cost"]}}, "scheduler.type: asha cannot be combined with objective.multi_objective"),
    ({"objective": {"multi_objective": True}}, "scheduler.type: asha cannot be combined with objective.multi_objective"),
    ({"sampler": {"type": "nsga2"}}, "sampler.type: nsga2 is a multi-objective sampler"),
    ({"sampler": {"type": "cmaes"}}, "sampler.type: must be one of tpe, random, gp, nsga2, got 'cmaes'"),
    ({"scheduler": {"grace_period": 5}}, "scheduler.grace_period: must be <= epochs (2), got 5"),
    ({"resources": {"gpus_per_trial": -1}}, "resources.gpus_per_trial: must be >= 0, got -1"),
    ({"name": "a b/c"}, "name: must be 1-80 letters"),
    ({"storage": "s3://bucket"}, "storage: must be a filesystem path"),
    ({"base": {"checkpoint": "x.pt", "pretrain": {"epochs": 1}}}, "base: give exactly one of checkpoint"),
    ({"base": {"pretrain": {"optimizer": "lion"}}}, "base.pretrain.optimizer: must be one of adam, rmsprop, sgd, adamw"),
    ({"base": {"pretrain": {"limit_eval": 0}}}, "base.pretrain.limit_eval: must be >= 1, got 0"),
    ({"data": {"val_fraction": 0}}, "data.val_fraction: must be > 0, got 0"),
    ({"data": {"val_fraction": 0.95}}, "data.val_fraction: must be <= 0.9, got 0.95"),
    ({"data": {"image_size": 64}}, "data.image_size: is only settable for imagenette and imagefolder, got dataset fmnist"),
    ({"data": {"dataset": "imagenette", "image_size": 16}}, "data.image_size: must be >= 32, got 16"),
    ({"model": {"arch": "resnet"}}, "model.arch: must be cnn3, vgg16, torchvision/NAME or timm/NAME; got 'resnet' (did you mean "
                                       "torchvision/resnet or timm/resnet?)"),
    ({"audit": {"enabled": "yes"}}, "audit.enabled: must be true or false, got 'yes'"),
    ({"audit": {"eps": [0.3, 2]}}, "audit.eps: must be <= 1, got 2"),
    ({"audit": {"limit": 0}}, "audit.limit: must be >= 1, got 0"),
    ({"audit": {"components": ["apgd-ce", "cw"]}}, "audit.components: must be one of apgd-ce, apgd-t, fab-t, square, got 'cw'"),
    ({"audit": {"strong": 3}}, "audit: unknown key 'strong'"),
    ({"tracking": {"mlflow": "ftp://x"}}, "tracking.mlflow: must be an MLflow tracking URI"),
    # the spec's older layout is told where each key went
    ({"dataset": "fmnist"}, "dataset: moved to data.dataset"),
    ({"arch": "cnn3"}, "arch: moved to model.arch"),
    ({"objective": {"val_limit": 300}}, "objective.val_limit: moved to data.limit_val"),
    ({"search": {"methods": {"pgd_at": {"steps": [2, 4]}}}}, "search.methods.pgd_at.steps: moved to search.methods.pgd_at.at_steps"),
    ({"resources": {"gpu": 1}}, "resources.gpu: moved to resources.gpus_per_trial"),
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
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


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


SECTIONS = ["data", "model", "base", "search", "objective", "resources", "scheduler", "sampler", "audit", "tracking"]


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
