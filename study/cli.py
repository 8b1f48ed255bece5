"""The `patchtune` command.

Every user mistake ends as one line `patchtune <command>: error: ...` naming the bad value, exit status 2,
before any data is loaded or file written. Heavy imports (torch, Ray) happen inside the commands so that
`--help` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study import grid
from study.cli_args import (
    ARCHS,
    ATTACKS,
    DATASETS,
    DEFENSES,
    EXIT_USAGE,
    METHODS,
    OPS,
    OPTIMIZERS,
    SPLITS,
    Parser,
    UsageError,
    any_int,
    choice_list,
    data_root,
    join_negative_values,
    nonneg_int,
    number,
    open_unit_float,
    positive_float,
    positive_int,
    unit_float,
    warmup_float,
    writable_target,
)
from trainables.vocab import (
    Component,
    Dataset,
    UserError,
    dataset_info,
    paper_eps,
    values,
    warmup_text,
)

ROBUST_METHODS = [m.value for m in grid.ROBUST_METHODS]  # `reproduce`'s robust fine-tuning cells by default
GRID_OPTIMIZERS = [o.value for o in grid.OPTIMIZERS]

# ------------------------------------------------------------------------------------------- parser


def _add_data_args(p: argparse.ArgumentParser, *, dataset: bool = True) -> None:
    if dataset:
        p.add_argument("--dataset", type=str.lower, choices=DATASETS, default="fmnist", help="data set (default fmnist)")
    p.add_argument("--data-root", help="directory searched first for the data set files")
    p.add_argument("--limit-train", type=positive_int, help="use only the first N training images (quick runs)")
    p.add_argument("--limit-val", type=positive_int, help="use only the first N validation images")
    p.add_argument("--limit-test", type=positive_int, help="use only the first N test images")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optimizer", type=str.lower, choices=OPTIMIZERS, help="optimizer (default adam)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the paper's, 1e-3 cnn3 / 1e-4 vgg16)")
    p.add_argument("--batch-size", type=positive_int, help="images per step (default 128)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: 10 pretrain cnn3, 200 vgg16; 2 fine-tune)")
    p.add_argument("--seed", type=any_int, default=0, help="seed for initialisation, batch order and augmentation")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="patchtune", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("pretrain", help="train a base (undefended) model from scratch")
    _add_data_args(p)
    p.add_argument("--arch", type=str.lower, choices=ARCHS, help="architecture (default cnn3 for fmnist, else vgg16)")
    p.add_argument("--val-fraction", type=open_unit_float, default=0.1, help="share of training data held out (default 0.1)")
    _add_train_args(p)
    p.add_argument("--out", help="checkpoint path (default runs/pretrain-DATASET-ARCH-sSEED.pt)")
    p.set_defaults(run=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a base model: the paper's patch defense or adversarial fine-tuning")
    p.add_argument("--base", required=True, help="base checkpoint from `patchtune pretrain`")
    _add_data_args(p, dataset=False)
    _add_train_args(p)
    _add_aug_args(p)
    p.add_argument("--method", type=str.lower, choices=METHODS, default="patch",
                   help="patch (the paper's defense, default), fgsm_rs (FGSM with random start, alpha 1.25 eps), "
                        "pgd_at (PGD-k, alpha 2.5 eps / k) or trades (CE + beta KL)")
    p.add_argument("--patch", action=argparse.BooleanOptionalAction, default=None,
                   help="with an adversarial --method: attack clean + patch-modified images (default: clean only)")
    p.add_argument("--train-eps", type=unit_float,
                   help="adversarial fine-tuning budget (default: the paper's eps for the data set)")
    p.add_argument("--beta", type=positive_float, help="trades: weight of the KL term (default 6)")
    p.add_argument("--eps-warmup", type=warmup_float,
                   help="adversarial --method: share of the training steps over which eps grows linearly to "
                        "--train-eps (default 0; 0.3 keeps eps-0.3 F-MNIST fine-tuning from collapsing)")
    p.add_argument("--defense", choices=DEFENSES, default="patch",
                   help="one of the paper's adversarial-training baselines (at --at-alpha, default 0.01) instead")
    p.add_argument("--at-alpha", type=unit_float, help="--defense: attack step size (default 0.01, the paper's)")
    p.add_argument("--at-steps", type=positive_int,
                   help="attack iterations: --defense ifgsm-at/pgd-at (default 10), --method pgd_at/trades (default 5)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train a fresh initialisation (from --seed) of the base's architecture, not its weights, as "
                        "from-scratch robust-training recipes do (raise --epochs); the base stays the comparison")
    p.add_argument("--out", help="checkpoint path (default runs/finetune-OPTIMIZER-sSEED.pt)")
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser("eval", help="clean and white-box robust accuracy of one or more checkpoints")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    p.add_argument("--attacks", type=choice_list(ATTACKS, "attack"), default=list(ATTACKS),
                   help="comma-separated subset of clean,fgsm,ifgsm,pgd (default all)")
    p.add_argument("--eps", type=unit_float, help="L-inf budget in [0,1] pixels (default: paper's, 0.3 fmnist / 0.03 others)")
    p.add_argument("--alpha", type=unit_float, default=0.01, help="step size for ifgsm/pgd (default 0.01)")
    p.add_argument("--steps", type=positive_int, default=10, help="iterations for ifgsm/pgd (default 10)")
    p.add_argument("--restarts", type=positive_int, default=1, help="PGD random restarts (default 1)")
    p.add_argument("--last-iterate", action="store_true", help="count only the final iterate (classic number)")
    p.add_argument("--split", choices=SPLITS, default="test", help="split to evaluate (default test)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images of the split")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per attack batch (default 500 on CPU; on GPU up to 10000, by image size)")
    p.add_argument("--seed", type=any_int, default=0, help="seed of the PGD random starts")
    p.add_argument("--data-root", help="directory searched first for the data set files")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("audit", help="strong attacks (PGD-100, AutoAttack) and gradient-masking checks for a checkpoint")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--eps", type=unit_float, nargs="+", help="L-inf budget(s) in [0,1] pixels (default: the paper's for the data set)")
    p.add_argument("--limit", type=positive_int, default=500, help="audit the first N images of the split (default 500)")
    p.add_argument("--split", choices=SPLITS, default="test", help="split to audit (default test)")
    p.add_argument("--base", metavar="CKPT", help="undefended base checkpoint: enables the transfer check")
    p.add_argument("--steps", type=positive_int, default=100, help="strong PGD iterations (default 100; alpha = 2.5 eps / steps)")
    p.add_argument("--restarts", type=positive_int, default=5, help="strong PGD random restarts (default 5)")
    p.add_argument("--no-autoattack", action="store_true", help="skip AutoAttack (and with it the Square and DLR checks)")
    p.add_argument("--components", type=choice_list(values(Component), "component"),
                   default=list(values(Component)),
                   help="AutoAttack components, comma-separated (default all four, the standard version)")
    p.add_argument("--check-limit", type=positive_int, default=200, help="images for the costlier checks (default 200)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per attack batch (default 250)")
    p.add_argument("--seed", type=any_int, default=0, help="seed of every random start and of the AutoAttack components")
    p.add_argument("--data-root", help="directory searched first for the data set files")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--out", help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.set_defaults(run=cmd_audit)

    p = sub.add_parser("run", help="run a hyperparameter study (Ray Tune + Optuna) from a preset or spec file")
    p.add_argument("spec", metavar="PRESET_OR_FILE", help="a preset (quick, fmnist-paper, cifar10-paper, imagenette-paper) or a YAML file")
    p.add_argument("--name", help="study name (study directory = STORAGE/NAME)")
    p.add_argument("--storage", help="directory holding study directories (shared FS or cloud URI on a cluster)")
    p.add_argument("--num-samples", type=positive_int, help="trials")
    p.add_argument("--max-concurrent", type=positive_int, help="trials running at once")
    p.add_argument("--epochs", type=positive_int, help="fine-tuning epochs per trial")
    p.add_argument("--seed", type=any_int, help="study seed (sampler and trials)")
    p.add_argument("--cpus-per-trial", type=positive_float, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=number(float, lambda v: v >= 0, "a number >= 0"), help="GPUs per trial (fractions pack trials)")
    p.add_argument("--optuna-storage", help="SQLAlchemy URL or journal:PATH (default: sqlite in the study directory)")
    p.add_argument("--mlflow", metavar="URI", help="also log every trial to MLflow at this tracking URI "
                   "(sqlite:///mlflow.db, file:///abs/dir, http://host:5000; needs MLflow's client: pip install mlflow-skinny)")
    p.add_argument("--address", help="Ray cluster address (`auto` = the running cluster; default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 and print its URL")
    p.add_argument("--dashboard-host", default="127.0.0.1",
                   help="interface for --dashboard (default 127.0.0.1). Anything else exposes Ray's dashboard and Jobs "
                        "API, which run code for whoever reaches them (CVE-2023-48022): only behind token auth "
                        "(RAY_AUTH_MODE=token) on a trusted network")
    p.add_argument("--dry-run", action="store_true", help="validate spec, data, base checkpoint and storage; print the resolved spec")
    p.set_defaults(run=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted study")
    p.add_argument("study_dir", metavar="DIR")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1")
    p.set_defaults(run=cmd_resume)

    p = sub.add_parser("status", help="summarise a study's trials")
    p.add_argument("study_dir", metavar="DIR")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("reproduce", help="the paper's Table 1 / Table 2 over seeds, with CIs and findings")
    p.add_argument("dataset", type=str.lower, choices=DATASETS)
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds (default 3)")
    p.add_argument("--storage", default="runs/reproductions", help="output parent directory (default runs/reproductions)")
    p.add_argument("--name", help="output directory name (default reproduce-DATASET-TIMESTAMP)")
    p.add_argument("--limit-train", type=positive_int, help="fine-tuning images (default: 10000 fmnist, all otherwise)")
    p.add_argument("--limit-test", type=positive_int, help="test images scored (default: 500 fmnist, all otherwise)")
    p.add_argument("--pretrain-epochs", type=positive_int, help="base model epochs (default: 10 cnn3, 200/100 vgg16)")
    p.add_argument("--pretrain-limit-train", type=positive_int,
                   help="pretrain the base models on the first N training images only (default: all)")
    p.add_argument("--pretrain-limit-eval", type=positive_int,
                   help="validate and test the base models on the first N images of each split (default: all)")
    p.add_argument("--epochs", type=positive_int, help="fine-tuning and adversarial-training epochs (default 2 / 10)")
    p.add_argument("--eot-draws", type=positive_int, default=4, help="transform draws per EOT step (default 4)")
    p.add_argument("--long-epochs", type=positive_int, help="epochs of the long fine-tune cells (default 10 / 50)")
    p.add_argument("--at-from-scratch", action="store_true",
                   help="adversarial training from a fresh init for --pretrain-epochs instead of from the base")
    robust = [m for m in METHODS if m != "patch"]
    p.add_argument("--robust-methods", type=choice_list([*robust, "none"], "robust method"),
                   default=list(ROBUST_METHODS),
                   help=f"robust fine-tuning methods, each x --optimizers at the paper's eps ({', '.join(robust)}, or "
                        f"none; default {','.join(ROBUST_METHODS)})")
    p.add_argument("--optimizers", type=choice_list(OPTIMIZERS, "optimizer"), default=list(GRID_OPTIMIZERS),
                   help=f"optimizers of the robust fine-tuning cells (default {','.join(GRID_OPTIMIZERS)})")
    p.add_argument("--eps-warmup", type=warmup_float,
                   help="robust cells: share of the training steps over which eps grows linearly to the paper's "
                        "(default 0; 0.3 keeps F-MNIST's eps-0.3 PGD-AT from collapsing)")
    p.add_argument("--grid", type=str.lower, choices=values(grid.GridPart), default=grid.GridPart.ALL.value,
                   help="all (default); paper: the paper's cells only; robust: the robust fine-tuning cells beside the "
                        "undefended model and the paper's two patch fine-tunes")
    p.add_argument("--cpus-per-trial", type=positive_float, default=1.0)
    p.add_argument("--gpus-per-trial", type=number(float, lambda v: v >= 0, "a number >= 0"), default=0.0)
    p.add_argument("--data-root", help="directory searched first for the data set files")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(run=cmd_reproduce)

    p = sub.add_parser("report", help="write every plot (PNG + SVG), report.md and report.html into DIR/report/")
    p.add_argument("study_dir", metavar="DIR")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("show-augment", help="write a PNG grid of patch-augmentation examples, one row per op")
    p.add_argument("--dataset", type=str.lower, choices=DATASETS, default="fmnist")
    p.add_argument("--data-root", help="directory searched first for the data set files")
    _add_aug_args(p)
    p.add_argument("--n", type=positive_int, default=8, help="example images per row (default 8)")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--out", default="augment.png", help="PNG path (default augment.png)")
    p.set_defaults(run=cmd_show_augment)
    return parser


def _add_aug_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", type=choice_list(OPS, "op"), default=list(OPS),
                   help="comma-separated ops drawn uniformly per image (default all five)")
    p.add_argument("--patch-size", type=positive_int, help="patch side w in pixels (default ~0.3 x image side)")
    p.add_argument("--num-patches", type=positive_int, default=1, help="patches per image (default 1)")
    p.add_argument("--jitter", type=nonneg_int, default=0, help="max patch offset from the centre in pixels (default 0)")


# ------------------------------------------------------------------------------------------- commands


def _device(name: str) -> Any:
    from trainables.engine import pick_device

    try:
        return pick_device(name)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"--device {name!r}: {exc}") from None


def _require_files(*paths: str | None) -> None:
    """Refuses a missing checkpoint before the handler imports torch: a typo is answered at once, not in seconds."""
    for path in paths:
        if path is not None and not Path(path).is_file():
            raise UsageError(f"checkpoint not found: {path}")


def _aug_cfg(args: argparse.Namespace, dataset: Any, image_size: int | None) -> Any:
    from trainables.config import AugCfg
    from trainables.vocab import ConfigError

    info = dataset_info(dataset, image_size)
    aug = AugCfg(pool=tuple(args.pool), patch_size=args.patch_size or info.default_patch_size,
                 num_patches=args.num_patches, jitter=args.jitter)
    try:
        aug.check_fits(info.height, info.width)
    except ConfigError:
        raise UsageError(f"--patch-size {aug.patch_size} is larger than the {info.height}x{info.width} "
                         f"{info.name.value} images") from None
    return aug


def cmd_pretrain(args: argparse.Namespace) -> int:
    from trainables.checkpoint import save_checkpoint
    from trainables.config import DataCfg
    from trainables.data import load_data
    from trainables.pipeline import accuracy_line, default_train_cfg, pretrain

    dataset = Dataset(args.dataset)
    arch = args.arch or dataset_info(dataset).default_arch.value
    cfg = default_train_cfg(arch, finetune=False, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                            epochs=args.epochs, seed=args.seed)
    data_cfg = DataCfg(dataset=dataset, root=data_root(args.data_root), val_fraction=args.val_fraction,
                       limit_train=args.limit_train, limit_val=args.limit_val, limit_test=args.limit_test)
    out = writable_target(args.out or f"runs/pretrain-{dataset.value}-{arch}-s{args.seed}.pt", "--out")
    device = _device(args.device)
    data = load_data(data_cfg)
    _say(f"pretraining {arch} on {dataset.value} ({len(data.train)} train / {len(data.val)} val images from "
         f"{data.source}) with {cfg.optimizer.value} lr {cfg.lr:g} for {cfg.epochs} epochs on {device}")
    model, meta = pretrain(arch, data, data_cfg, cfg, device=device, progress=not args.quiet)
    meta["seed"] = cfg.seed
    save_checkpoint(out, model, meta)
    _say(f"{accuracy_line(meta)} -> {out}")
    return 0


def _finetune_method(args: argparse.Namespace, aug: Any, eps: float) -> tuple[Any, Any, str]:
    """(patch augmentation or None, adversary or None, the method's name) of `patchtune finetune`'s flags."""
    from trainables.config import AttackCfg, MethodCfg
    from trainables.methods import Adversary, adversary_of

    if args.defense != "patch":
        if (args.method != "patch" or args.train_eps is not None or args.beta is not None or args.patch is not None
                or args.eps_warmup is not None):
            raise UsageError(f"--defense {args.defense} is the paper's baseline at its own parameters; it takes no "
                             "--method, --train-eps, --beta, --eps-warmup or --patch")
        steps = args.at_steps if args.at_steps is not None else 10
        attack = AttackCfg(name=args.defense.removesuffix("-at"), eps=eps,
                           alpha=args.at_alpha if args.at_alpha is not None else 0.01, steps=steps)
        return None, Adversary(attack), args.defense.replace("-", "_")
    if args.at_alpha is not None:
        raise UsageError("--at-alpha belongs to --defense; an adversarial --method sets alpha from eps and steps")
    method = MethodCfg(args.method, augment=args.patch, eps=args.train_eps, steps=args.at_steps, beta=args.beta,
                       warmup=args.eps_warmup)
    return (aug if method.augment else None), adversary_of(method, eps), method.method.value


def cmd_finetune(args: argparse.Namespace) -> int:
    _require_files(args.base)
    from trainables.checkpoint import load_checkpoint, save_checkpoint
    from trainables.config import DataCfg
    from trainables.data import load_data
    from trainables.pipeline import accuracy_line, default_train_cfg, finetune

    ckpt = load_checkpoint(args.base)
    dataset, arch = ckpt.dataset, ckpt.arch
    split_meta = ckpt.meta.get("data") or {}
    image_size = ckpt.meta.get("image_size")
    aug = _aug_cfg(args, dataset, image_size)
    cfg = default_train_cfg(arch, finetune=True, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                            epochs=args.epochs, seed=args.seed)
    data_cfg = DataCfg(dataset=dataset, root=data_root(args.data_root),
                       val_fraction=split_meta.get("val_fraction", 0.1), split_seed=split_meta.get("split_seed", 0),
                       image_size=image_size, limit_train=args.limit_train, limit_val=args.limit_val,
                       limit_test=args.limit_test)
    aug_or_none, adversary, defense = _finetune_method(args, aug, paper_eps(dataset))
    stem = "" if defense == "patch" else f"{defense.replace('_', '-')}-"
    out = writable_target(args.out or f"runs/finetune-{stem}{cfg.optimizer.value}-s{args.seed}.pt", "--out")
    device = _device(args.device)
    base = ckpt.build()
    data = load_data(data_cfg)
    patch = f"clean + patch-modified ({','.join(o.value for o in aug.pool)}, w={aug.patch_size})"
    if adversary is None:
        what = patch
    else:
        a = adversary.attack
        what = (f"{defense.replace('_', '-')} examples (eps {a.eps:g}, alpha {a.alpha:g}, {a.steps} steps"
                + (f", beta {adversary.trades_beta:g}" if adversary.trades_beta is not None else "")
                + (f", {warmup_text(adversary.warmup)}" if adversary.warmup else "")
                + ") of "
                + (patch if aug_or_none is not None else "clean") + " images")
    start = f"a fresh {arch} (seed {cfg.seed}; {args.base} is its comparison)" if args.from_scratch else \
        f"{arch} ({args.base})"
    _say(f"{'training' if args.from_scratch else 'fine-tuning'} {start} on {dataset.value} {what} with "
         f"{cfg.optimizer.value} lr {cfg.lr:g} for {cfg.epochs} epochs on {device}")
    model, meta = finetune(base, ckpt.meta, data, cfg, aug_or_none, device=device, progress=not args.quiet,
                           adversary=adversary, defense=defense, from_scratch=args.from_scratch)
    meta["seed"] = cfg.seed
    meta["base_path"] = str(args.base)
    save_checkpoint(out, model, meta)
    _say(f"{accuracy_line(meta)} -> {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _require_files(*args.checkpoints)
    from analysis.tables import eval_table
    from study import api
    from trainables.checkpoint import load_checkpoint
    from trainables.config import AttackCfg
    from trainables.data import load_data
    from trainables.pipeline import evaluate_model

    ckpts = [load_checkpoint(p) for p in args.checkpoints]
    first = ckpts[0]
    for path, ck in zip(args.checkpoints[1:], ckpts[1:], strict=True):
        if ck.dataset is not first.dataset or ck.meta.get("image_size") != first.meta.get("image_size"):
            raise UsageError(f"{path} is for {ck.dataset.value}, but {args.checkpoints[0]} is for {first.dataset.value}")
    eps = args.eps if args.eps is not None else paper_eps(first.dataset)
    attacks = [AttackCfg(name=a, eps=eps, alpha=args.alpha, steps=args.steps, restarts=args.restarts,
                         last_iterate=args.last_iterate) for a in args.attacks]
    data_cfg = api.checkpoint_data_cfg(first, args.split, args.limit, data_root(args.data_root))
    device = _device(args.device)
    models = [ck.build() for ck in ckpts]
    data = load_data(data_cfg)
    split = data.split(args.split)
    results = []
    for path, ck, model in zip(args.checkpoints, ckpts, models, strict=True):
        if not args.json:
            _say(f"evaluating {path} on {len(split)} {args.split} images on {device}")
        acc = evaluate_model(model, data, args.split, attacks, device=device, batch_size=args.batch_size,
                             seed=args.seed, progress=not (args.quiet or args.json))
        results.append({
            "checkpoint": str(path),
            "arch": ck.arch,
            "kind": ck.meta.get("kind"),
            "optimizer": (ck.meta.get("train") or {}).get("optimizer"),
            "defense": ck.meta.get("defense", "patch" if ck.meta.get("kind") == "finetune" else None),
            "accuracy": {a.name.value: acc[a.label] for a in attacks},
        })
    info = {
        "dataset": first.dataset.value,
        "split": args.split,
        "n": len(split),
        "seed": args.seed,
        "attacks": {a.name.value: a.describe() for a in attacks},
    }
    if args.json:
        payload = {**results[0], **info} if len(results) == 1 else {**info, "models": results}
        print(json.dumps(payload, indent=None))
        return 0
    print(eval_table(results, info))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    _require_files(args.checkpoint, args.base)
    out = writable_target(args.out, "--out") if args.out else None
    from analysis.audit import render_text
    from study import api
    from trainables.atomic import atomic_write_text

    result = api.audit(args.checkpoint, eps=args.eps, base=args.base, split=args.split, limit=args.limit,
                       steps=args.steps, restarts=args.restarts, autoattack=not args.no_autoattack,
                       components=args.components, check_limit=args.check_limit, batch_size=args.batch_size,
                       seed=args.seed, data_root=data_root(args.data_root), device=args.device,
                       progress=not (args.quiet or args.json), log=None if args.json else _say)
    payload = result.as_dict()
    if out is not None:
        atomic_write_text(out, json.dumps(payload, indent=2))
    if args.json:
        print(json.dumps(payload))
    else:
        for rep in result.reports:
            print(render_text(rep, title=f"{args.checkpoint} ({result.dataset}, {result.arch}), {args.split} split"))
            print()
    return 0


def cmd_show_augment(args: argparse.Namespace) -> int:
    dataset = Dataset(args.dataset)
    aug = _aug_cfg(args, dataset, None)
    out = writable_target(args.out, "--out")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {args.out!r} must end in .png")
    from trainables.config import DataCfg  # after the checks: they need neither torch nor the data
    from trainables.data import load_data
    from trainables.visualize import augment_grid

    data = load_data(DataCfg(dataset=dataset, root=data_root(args.data_root), limit_test=args.n))
    augment_grid(data.test.x[: args.n], aug, seed=args.seed, path=out, title=f"{dataset.value}: patch augmentation, w={aug.patch_size}")
    _say(f"wrote {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from study import api
    from study.runner import preflight

    spec = api.load_spec(args.spec, **{k: getattr(args, k) for k in api.OVERRIDES})
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if args.dry_run:
        prep = preflight(spec)
        print(spec.resolved().to_yaml(), end="")
        base = f"checkpoint {prep.base_path}" if prep.base_path else (
            f"pretrain first (cached: {prep.base_cache})" if not prep.base_cache.is_file() else f"cached {prep.base_cache}")
        _say(f"dry run OK: {len(prep.data.train)} train / {len(prep.data.val)} val images ({prep.data.source}); "
             f"base: {base}; study directory {spec.study_dir()} (not created)")
        return 0
    if args.dashboard_host != "127.0.0.1":
        _say(f"warning: the Ray dashboard will listen on {args.dashboard_host}: anyone who reaches it can run code "
             "on this machine unless RAY_AUTH_MODE=token is set")
    study = api.run(spec, address=address, dashboard=args.dashboard, dashboard_host=args.dashboard_host)
    print(_summary(study.path))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from study import api

    address = args.address or os.environ.get("RAY_ADDRESS") or None
    print(_summary(api.resume(args.study_dir, address=address, dashboard=args.dashboard).path))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from study import api

    print(api.status(args.study_dir).text)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from study.reproduce import make_spec, reproduce

    if "none" in args.robust_methods and len(args.robust_methods) > 1:
        raise UsageError(f"--robust-methods {','.join(args.robust_methods)}: 'none' stands alone")
    if args.grid == grid.GridPart.ROBUST.value and args.robust_methods == ["none"]:
        raise UsageError("--grid robust with --robust-methods none: no robust fine-tuning cells to train")
    if args.eps_warmup and (args.robust_methods == ["none"] or args.grid == grid.GridPart.PAPER.value):
        raise UsageError(f"--eps-warmup {args.eps_warmup:g} warms up the robust fine-tuning cells; this grid has none")
    spec = make_spec(args.dataset, seeds=args.seeds, limit_train=args.limit_train, limit_test=args.limit_test,
                     pretrain_epochs=args.pretrain_epochs, pretrain_limit_train=args.pretrain_limit_train,
                     pretrain_limit_eval=args.pretrain_limit_eval,
                     epochs=args.epochs, eot_draws=args.eot_draws,
                     long_epochs=args.long_epochs, at_from_scratch=args.at_from_scratch or None,
                     cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                     robust_methods=() if "none" in args.robust_methods else tuple(args.robust_methods),
                     optimizers=tuple(args.optimizers), grid=args.grid, eps_warmup=args.eps_warmup)
    storage = Path(args.storage)
    writable_target(str(storage / (args.name or "x") / "results.parquet"), "--storage")
    if args.name and (storage / args.name).exists():
        raise UsageError(f"--name {args.name!r}: {storage / args.name} already exists")
    reproduce(spec, storage, name=args.name, address=args.address or os.environ.get("RAY_ADDRESS") or None,
              data_root=data_root(args.data_root))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from study import api

    report = api.report(args.study_dir)
    print(f"wrote {report.markdown}, {report.html} (one page, figures embedded) and {len(report.figures)} figures")
    return 0


def _summary(study_dir: Path) -> str:
    from study.runner import status_table

    written = [p for p in (study_dir / "results.parquet", study_dir / "best.json") if p.is_file()]
    return status_table(study_dir) + (f"\nresults: {', '.join(map(str, written))}" if written else "")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args))
    except UserError as exc:  # every kind a user can fix (they all derive from it), caught without importing torch
        print(f"patchtune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"patchtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
