"""`patchtune reproduce DATASET`: the paper's fixed settings x seeds as a Ray Tune grid (not Optuna), through the
study's machinery: its base cache (`study.bases`), its Tuner construction (`study.tuner.make_tuner`) and its
evaluator (`trainables.pipeline.evaluate_model`, inside each cell).

Per seed: a base model pretrained with Adam (cached like a study's base); then one model per cell of
`trainables.cells.reproduction_grid` (undefended, patch fine-tuning with Adam and with RMSProp, short and long, the
paper's FGSM-, IFGSM- and PGD-AT baselines with the same epoch budget, and robust fine-tuning methods (FGSM-RS,
PGD-AT reaching eps, TRADES) x optimizers at the paper's eps), every model scored on the test split under every
evaluation setting (trainables/variants.py) and a strong PGD, with its training compute. Writes results.parquet
(one row per seed x cell, with the cell's description), reproduction.json (the resolved settings) and tables.md
into the output directory.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.reproduction import power_statement, render
from study.bases import ensure_bases
from study.cluster import ray_session
from study.errors import StudyError
from study.settings import RayOptions, ReproCfg
from study.tuner import make_tuner
from trainables.atomic import atomic_open, atomic_write_text
from trainables.cells import reproduction_grid
from trainables.checkpoint import load_checkpoint
from trainables.config import AttackName, ConfigError, paper_attacks, strong_pgd
from trainables.data import load_data
from trainables.vocab import GridPart, warmup_text


def output_dir(cfg: ReproCfg) -> Path:
    name = cfg.name or f"reproduce-{cfg.data.dataset.value}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.storage).expanduser().resolve() / name


def reproduce(cfg: ReproCfg, ray: RayOptions | None = None) -> Path:
    """Run the grid of `cfg` (resolved) and write its results; returns the output directory."""
    from ray import tune

    from trainables.reproduce_cell import ReproSetup
    from trainables.trainable import reproduce_trial

    ray = ray or RayOptions()
    out = output_dir(cfg)
    if out.exists():
        raise ConfigError(f"output directory {out} already exists; choose another --name")
    assert cfg.model.arch is not None and cfg.lr is not None
    data = load_data(cfg.data)
    cells = reproduction_grid(cfg.robust_methods, cfg.optimizers, cfg.grid, eps_warmup=cfg.eps_warmup)
    by_key = {c.cell: c for c in cells}
    power = power_statement(cfg.seeds, len(data.test))
    print(power, flush=True)
    started = time.perf_counter()
    seeds = list(range(cfg.seeds))
    with ray_session(ray.address, dashboard=False):
        bases = ensure_bases(cfg.storage, cfg.model.arch, cfg.data, [cfg.pretrain.replace(seed=s) for s in seeds],
                             cpus=cfg.resources.cpus_per_trial)
        setup = ReproSetup(
            arch=cfg.model.arch, info=data.info, train=data.train, val=data.val, test=data.test,
            bases={s: load_checkpoint(p, arch=cfg.model.arch, dataset=cfg.data.dataset).state_dict
                   for s, p in zip(seeds, bases, strict=True)},
            lr=cfg.lr, epochs=cfg.epochs, batch_size=128, aug=cfg.aug,
            attacks=paper_attacks(cfg.data.dataset, (AttackName.FGSM, AttackName.IFGSM, AttackName.PGD)),
            eps=cfg.eps, strong=strong_pgd(cfg.eps, cfg.strong_steps, cfg.strong_restarts), eot_draws=cfg.eot_draws,
            long_epochs=cfg.long_epochs, at_from_scratch_epochs=cfg.pretrain.epochs if cfg.at_from_scratch else None,
            cells=by_key)
        # the cell's key names the trial (Tune's status table shows it); the trainable finds the cell in the setup
        tuner = make_tuner(tune.with_parameters(reproduce_trial, setup=setup), cfg.resources, name=out.name,
                           storage_path=out.parent, max_failures=1,
                           param_space={"seed": tune.grid_search(seeds),
                                        "cell": tune.grid_search([c.cell for c in cells])})
        grid = tuner.fit()
    rows = []
    for index in range(len(grid)):
        result = grid[index]
        config = result.config or {}
        if result.error or not result.metrics:
            first = str(result.error).splitlines()[0] if result.error else "no result"
            raise StudyError(f"reproduction cell {config} failed ({first}); trial logs in {out}")
        rows.append({"seed": config["seed"], **by_key[config["cell"]].columns(), "strong_steps": cfg.strong_steps,
                     "strong_restarts": cfg.strong_restarts, **_scores(result.metrics)})
    results = pd.DataFrame(rows).sort_values(["cell", "seed"]).reset_index(drop=True)
    with atomic_open(out / "results.parquet", "wb") as f:
        results.to_parquet(f, index=False)
    elapsed = time.perf_counter() - started
    atomic_write_text(out / "reproduction.json", json.dumps(
        {**cfg.to_json(), "train_images": len(data.train), "test_images": len(data.test),
         "seconds": round(elapsed, 1)}, indent=2))
    text = render(results, cfg.data.dataset.value, _header(cfg, len(data.train), len(data.test), elapsed, power))
    atomic_write_text(out / "tables.md", text)
    print(text)
    print(f"results: {out}/results.parquet, {out}/tables.md")
    return out


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items()
            if "/" in k or k in ("clean", "train_s", "eval_s", "per_image") or k.startswith("cost_")}


def _header(cfg: ReproCfg, train: int, test: int, seconds: float, power: str) -> str:
    robust = ("none" if not cfg.robust_methods else "none (--grid paper)" if cfg.grid is GridPart.PAPER
              else f"{', '.join(m.value for m in cfg.robust_methods)} x {', '.join(o.value for o in cfg.optimizers)} at "
                   f"eps {cfg.eps:g}" + (f", {warmup_text(cfg.eps_warmup)}" if cfg.eps_warmup else ""))
    assert cfg.model.arch is not None and cfg.lr is not None
    return (f"# Reproduction: {cfg.data.dataset.value}, {cfg.model.arch}\n\n{train} fine-tuning images, {test} "
            f"test images, {cfg.epochs} fine-tuning epochs ({cfg.long_epochs} for the long cells), lr {cfg.lr:g}, "
            f"patch {cfg.aug.patch_size} px (all five ops), adversarial training "
            f"{'from scratch' if cfg.at_from_scratch else 'from the base'}; robust fine-tuning {robust}; "
            f"wall time {seconds / 60:.1f} min.\n\n{power}\n")
