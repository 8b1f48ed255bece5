"""The define-by-run space against a plain Optuna study (no Ray)."""

from __future__ import annotations

import functools
import pickle

import optuna

from study.settings import MethodSearch, SearchCfg
from study.spaces import define_space
from study.spec import load_spec
from trainables.config import trial_cfgs


def test_space_samples_valid_conditional_configs() -> None:
    search = SearchCfg.parse(dict(lr={"adam": (1e-4, 1e-2), "sgd": (1e-3, 1e-1)}, batch_size=(32, 64), patch_size=(3, 9),
                        num_patches=(1, 3), jitter=2))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(60):
        trial = study.ask()
        # OptunaSearch merges the suggested parameters with what the function returns
        derived = define_space(trial, search, {"epochs": 3, "seed": 7})
        config = {**trial.params, **derived}
        configs.append((trial.params, config))
        study.tell(trial, 0.0)
    for params, config in configs:
        opt = config["optimizer"]
        low, high = search.lr[opt]
        assert low <= config["lr"] <= high
        assert f"lr_{opt}" in params and all(not k.startswith("lr_") or k == f"lr_{opt}" for k in params)
        assert config["batch_size"] in (32, 64) and 3 <= config["patch_size"] <= 9 and 1 <= config["num_patches"] <= 3
        pool = config["pool"].split(",")
        assert pool and set(pool) <= set(search.ops)
        assert config["epochs"] == 3 and config["seed"] == 7
    assert {c["optimizer"] for _, c in configs} == {"adam", "sgd"}
    assert len({c["pool"] for _, c in configs}) > 5  # the pool is really searched


def test_fixed_pool_and_single_patch_need_no_parameters() -> None:
    search = SearchCfg.parse(dict(lr={"adam": (1e-3, 1e-3)}, batch_size=(64,), pool={"noise": True, "flip": False},
                                  search_pool=True))
    trial = optuna.create_study().ask()
    derived = define_space(trial, search, {})
    config = {**trial.params, **derived}
    assert config["pool"] == "noise" and config["lr"] == 1e-3 and config["num_patches"] == 1
    assert not any(k.startswith("op_") for k in trial.params)


def test_bound_space_pickles_with_the_stdlib() -> None:
    # Tune checkpoints the searcher (OptunaSearch, with its space) with stdlib pickle: a closure as the space
    # cannot be pickled, and Tuner.fit fails at its first experiment snapshot.
    space = functools.partial(define_space, search=load_spec("quick").search, constants={"epochs": 2})
    restored = pickle.loads(pickle.dumps(space))
    config = restored(optuna.create_study().ask())
    assert config["epochs"] == 2


def test_each_method_samples_only_its_own_parameters() -> None:
    search = SearchCfg.parse(dict(lr={"adam": (1e-4, 1e-2)}, patch_size=(3, 9), train_eps=0.2, eps_warmup=0.3, methods={
        "patch": MethodSearch(), "fgsm_rs": MethodSearch(), "pgd_at": MethodSearch(at_steps=(2, 7), augment=(False, True)),
        "trades": MethodSearch(at_steps=(3, 3), beta=(1.0, 6.0), augment=(True,)),
        "paper_pgd_at": MethodSearch(at_steps=(4, 4))}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(80):
        trial = study.ask()
        derived = define_space(trial, search, {"epochs": 1})
        config = {**trial.params, **derived}
        study.tell(trial, 0.0)
        method = config["method"]
        seen.add((method, config["augment"]))
        assert ("at_steps" in config) == (method in ("pgd_at", "trades", "paper_pgd_at"))
        assert ("beta" in config) == (method == "trades")
        assert ("pgd_at_at_steps" in trial.params) == (method == "pgd_at") and "trades_at_steps" not in trial.params
        assert ("train_eps" in config) == (method != "patch")
        # the eps warm-up goes to the methods that read it (not to patch, not to the paper's baselines)
        assert config.get("eps_warmup") == (0.3 if method in ("fgsm_rs", "pgd_at", "trades") else None)
        method_cfg = trial_cfgs({"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 1, **config})[2]
        assert method_cfg.eps_warmup == config.get("eps_warmup", 0.0)
        # patch parameters exist exactly when the augmentation is on
        assert ("patch_size" in config) == ("pool" in config) == config["augment"]
        if method == "pgd_at":
            assert 2 <= config["at_steps"] <= 7
        if method == "trades":
            assert config["at_steps"] == 3 and 1.0 <= config["beta"] <= 6.0
    assert seen == {("patch", True), ("fgsm_rs", False), ("pgd_at", False), ("pgd_at", True), ("trades", True),
                    ("paper_pgd_at", False)}
