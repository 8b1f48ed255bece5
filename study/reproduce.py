"""`patchtune reproduce DATASET`: the paper's fixed settings x seeds as a Ray Tune grid (not Optuna).

Per seed: a base model pretrained with Adam (a Ray task, cached); then one model per cell of
`study.grid.reproduction_grid` (undefended, patch fine-tuning with Adam and with RMSProp, short and long,
FGSM-, IFGSM- and PGD-AT at the paper's alpha with the same epoch budget, and robust fine-tuning methods
(FGSM-RS, PGD-AT reaching eps, TRADES) x optimizers at the paper's eps), every model scored on the test split
under every evaluation setting (trainables/variants.py) and a strong PGD, with its training compute. Writes
results.parquet (one row per seed x cell, with the cell's description), reproduction.json and tables.md into
the output dir.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.reproduction import power_statement, render
from study.cluster import gpus_for_task, ray_session
from study.grid import OPTIMIZERS, ROBUST_METHODS, GridPart, reproduction_grid
from study.preflight import StudyError
from study.runner import pretrain_base
from trainables.atomic import atomic_open, atomic_write_text
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import (
    AttackCfg,
    AttackName,
    AugCfg,
    ConfigError,
    DataCfg,
    Dataset,
    Method,
    Optimizer,
    paper_attacks,
    parse_enum,
)
from trainables.data import load_data
from trainables.vocab import ARCHS, dataset_info, paper_eps, warmup_text


@dataclasses.dataclass(frozen=True)
class ReproSpec:
    dataset: str
    arch: str
    lr: float  # the paper's fine-tuning lr
    pretrain_epochs: int
    epochs: int  # fine-tuning / adversarial-training epochs
    patch_size: int
    limit_train: int | None  # fine-tuning images
    limit_test: int | None
    pretrain_limit_train: int | None = None  # pretraining images (None: the whole training split)
    pretrain_limit_eval: int | None = None  # validation / test images each base is scored on (None: the whole splits)
    limit_val: int = 1000  # validation images each fine-tune is monitored on (never used to choose anything)
    seeds: int = 3
    eot_draws: int = 4
    long_epochs: int = 10  # fine-tuning epochs of the `patch_*_long` cells
    at_from_scratch: bool = False  # adversarial training from a fresh init for pretrain_epochs, not from the base
    strong_steps: int = 100  # the strong-PGD row: alpha = 2.5 eps / steps, `strong_restarts` random starts
    strong_restarts: int = 5
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    # robust fine-tuning cells: these methods x these optimizers, at the paper's eps and fine-tuning lr
    robust_methods: tuple[str, ...] = tuple(m.value for m in ROBUST_METHODS)
    optimizers: tuple[str, ...] = tuple(o.value for o in OPTIMIZERS)
    eps_warmup: float = 0.0  # the robust cells' eps warm-up: share of training steps over which eps grows to its value
    grid: str = GridPart.ALL.value  # which cells (study.grid.GridPart)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", parse_enum(GridPart, self.grid, "grid").value)
        methods = tuple(parse_enum(Method, m, "robust method").value for m in self.robust_methods)
        if Method.PATCH.value in methods:
            raise ConfigError("robust method 'patch' is not one: the paper's patch cells are always in the grid")
        object.__setattr__(self, "robust_methods", methods)
        object.__setattr__(self, "optimizers", tuple(parse_enum(Optimizer, o, "optimizer").value for o in self.optimizers))
        if methods and not self.optimizers:
            raise ConfigError("robust methods need at least one optimizer")
        if self.grid == GridPart.ROBUST.value and not methods:
            raise ConfigError("grid 'robust' needs at least one robust method")
        if (not isinstance(self.eps_warmup, (int, float)) or isinstance(self.eps_warmup, bool)
                or not 0 <= self.eps_warmup < 1):
            raise ConfigError(f"eps_warmup must be in [0, 1), got {self.eps_warmup!r}")
        for name in ("pretrain_limit_train", "pretrain_limit_eval"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("pretrain_epochs", "epochs", "patch_size", "seeds", "eot_draws", "long_epochs", "strong_steps",
                     "strong_restarts", "limit_val"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")


# Budgets per data set; arch, lr, pretraining epochs and patch size are the paper's (trainables.vocab).
# F-MNIST runs on 2 CPU cores in about half an hour: fine-tuning and adversarial training on 10k images
# (PGD-AT costs 11 passes per image), every setting scored on 500 test images (`--limit-train/--limit-test`
# for more). The VGG defaults are GPU-cluster jobs.
BUDGETS: dict[Dataset, dict[str, Any]] = {
    Dataset.FMNIST: {"epochs": 2, "limit_train": 10000, "limit_test": 500},
    Dataset.CIFAR10: {"epochs": 10, "limit_train": None, "limit_test": None, "long_epochs": 50},
    Dataset.IMAGENETTE: {"pretrain_epochs": 100, "epochs": 10, "limit_train": None, "limit_test": None,
                         "long_epochs": 50},
}


def make_spec(dataset: str, **overrides: Any) -> ReproSpec:
    info = dataset_info(dataset)
    arch = ARCHS[info.default_arch]
    paper = {"arch": info.default_arch.value, "lr": arch.paper_lr, "pretrain_epochs": arch.pretrain_epochs,
             "patch_size": info.default_patch_size}
    values = {**paper, **BUDGETS[info.name], **{k: v for k, v in overrides.items() if v is not None}}
    return ReproSpec(dataset=info.name.value, **values)


def _base_path(storage: Path, spec: ReproSpec, seed: int) -> Path:
    fields = {"arch": spec.arch, "dataset": spec.dataset, "epochs": spec.pretrain_epochs, "seed": seed}
    # each limit is absent when None, so bases cached before the option keep their key
    for name, value in (("limit_train", spec.pretrain_limit_train), ("limit_eval", spec.pretrain_limit_eval)):
        if value is not None:
            fields[name] = value
    key = json.dumps(fields)
    return storage / "_bases" / f"repro-{spec.dataset}-{spec.arch}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt"


def reproduce(spec: ReproSpec, storage: Path, *, name: str | None = None, address: str | None = None,
              data_root: str | None = None) -> Path:
    import ray
    from ray import tune

    from trainables.cell import ReproSetup
    from trainables.trainable import reproduce_trial

    storage = storage.expanduser().resolve()
    name = name or f"reproduce-{spec.dataset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out = storage / name
    if out.exists():
        raise ConfigError(f"output directory {out} already exists; choose another --name")
    dataset = Dataset(spec.dataset)
    data_cfg = DataCfg(dataset=dataset, root=data_root, limit_train=spec.limit_train, limit_test=spec.limit_test,
                       limit_val=spec.limit_val)
    data = load_data(data_cfg)
    grid_cells = reproduction_grid(tuple(Method(m) for m in spec.robust_methods),
                                   tuple(Optimizer(o) for o in spec.optimizers), GridPart(spec.grid),
                                   warmup=spec.eps_warmup)
    power = power_statement(spec.seeds, len(data.test))
    print(power, flush=True)
    started = time.perf_counter()
    with ray_session(address, dashboard=False):
        seeds = list(range(spec.seeds))
        missing = [s for s in seeds if not _base_path(storage, spec, s).is_file()]
        if missing:
            print(f"pretraining {len(missing)} base model(s) ({spec.arch}, {spec.pretrain_epochs} epochs, Adam) as Ray tasks",
                  flush=True)
            # Seeds pretrain in parallel, each a task (on a GPU worker when the cluster has GPUs).
            task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=gpus_for_task())(pretrain_base)
            full = dataclasses.replace(data_cfg, limit_train=None, limit_val=None, limit_test=None)
            refs = {s: task.remote(spec.arch, full, {"epochs": spec.pretrain_epochs, "seed": s,
                                                     "limit_train": spec.pretrain_limit_train,
                                                     "limit_eval": spec.pretrain_limit_eval}) for s in missing}
            for s, ref in refs.items():
                state, meta = ray.get(ref)
                model = _build(spec.arch, data)
                model.load_state_dict(state)
                save_checkpoint(_base_path(storage, spec, s), model, meta)
        bases = {s: load_checkpoint(_base_path(storage, spec, s), arch=spec.arch, dataset=dataset).state_dict for s in seeds}
        setup = ReproSetup(arch=spec.arch, info=data.info, train=data.train, val=data.val, test=data.test, bases=bases,
                           lr=spec.lr, epochs=spec.epochs, batch_size=128, aug=AugCfg(patch_size=spec.patch_size),
                           attacks=paper_attacks(dataset, ["fgsm", "ifgsm", "pgd"]), eot_draws=spec.eot_draws,
                           long_epochs=spec.long_epochs,
                           at_from_scratch_epochs=spec.pretrain_epochs if spec.at_from_scratch else None,
                           strong=AttackCfg(AttackName.PGD, eps=paper_eps(dataset), steps=spec.strong_steps,
                                            alpha=min(1.0, 2.5 * paper_eps(dataset) / spec.strong_steps),
                                            restarts=spec.strong_restarts),
                           eps=paper_eps(dataset), cells={c.method: c.recipe() for c in grid_cells})
        trainable = tune.with_resources(tune.with_parameters(reproduce_trial, setup=setup),
                                        {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            # the method names the cell (Tune's status table shows it); the trainable finds its recipe in the setup
            param_space={"seed": tune.grid_search(seeds), "method": tune.grid_search([c.method for c in grid_cells])},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
        grid = tuner.fit()
    cells = {cell.method: cell for cell in grid_cells}
    rows = []
    for index in range(len(grid)):
        result = grid[index]
        config = result.config or {}
        if result.error or not result.metrics:
            first = str(result.error).splitlines()[0] if result.error else "no result"
            raise StudyError(f"reproduction cell {config} failed ({first}); trial logs in {out}")
        cell = cells[config["method"]]
        rows.append({"seed": config["seed"], **cell.columns(), "strong_steps": spec.strong_steps,
                     "strong_restarts": spec.strong_restarts,
                     **{k: v for k, v in result.metrics.items() if "/" in k or k in ("clean", "train_s", "eval_s", "per_image")
                        or k.startswith("cost_")}})
    results = pd.DataFrame(rows).sort_values(["method", "seed"]).reset_index(drop=True)
    with atomic_open(out / "results.parquet", "wb") as f:
        results.to_parquet(f, index=False)
    elapsed = time.perf_counter() - started
    atomic_write_text(out / "reproduction.json", json.dumps(
        {**dataclasses.asdict(spec), "train_images": len(data.train), "test_images": len(data.test),
         "seconds": round(elapsed, 1)}, indent=2))
    robust = ("none" if not spec.robust_methods else "none (--grid paper)" if spec.grid == GridPart.PAPER.value
              else f"{', '.join(spec.robust_methods)} x {', '.join(spec.optimizers)} at eps {paper_eps(dataset):g}"
              + (f", {warmup_text(spec.eps_warmup)}" if spec.eps_warmup else ""))
    header = (f"# Reproduction: {spec.dataset}, {spec.arch}\n\n{len(data.train)} fine-tuning images, {len(data.test)} test "
              f"images, {spec.epochs} fine-tuning epochs ({spec.long_epochs} for the long cells), lr {spec.lr:g}, patch "
              f"{spec.patch_size} px (all five ops), adversarial training "
              f"{'from scratch' if spec.at_from_scratch else 'from the base'}; robust fine-tuning {robust}; "
              f"wall time {elapsed / 60:.1f} min.\n\n{power}\n")
    text = render(results, spec.dataset, header)
    atomic_write_text(out / "tables.md", text)
    print(text)
    print(f"results: {out}/results.parquet, {out}/tables.md")
    return out


def _build(arch: str, data: Any) -> Any:
    from trainables.models import build_model
    from trainables.pipeline import input_spec

    return build_model(arch, input_spec(data))

