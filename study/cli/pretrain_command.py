"""`patchtune pretrain`: train a base (undefended) model from scratch."""

from __future__ import annotations

import argparse
from typing import Any

from study.cli.common import data_cfg, data_flags, output, output_flags, train_flags
from study.cli.flags import Flags, say, writable_target
from study.options import PretrainOptions
from trainables.config import DataCfg, ModelCfg, TrainCfg


def add(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="train a base (undefended) model from scratch")
    flags = Flags(p, "pretrain")
    data_flags(flags)
    flags.add(DataCfg, "val_fraction")
    flags.add(ModelCfg, "arch")
    train_flags(flags)
    flags.add(PretrainOptions, "out", metavar="CKPT")
    output_flags(flags)
    p.set_defaults(run=lambda args: run(flags, args))


def run(flags: Flags, args: argparse.Namespace) -> int:
    data = data_cfg(flags, args)
    model = flags.build(args, ModelCfg).resolved(data.dataset)
    assert model.arch is not None
    cfg = flags.build(args, TrainCfg).resolved(model.arch, finetune=False)
    opts = flags.build(args, PretrainOptions)
    out = writable_target(opts.out or f"runs/pretrain-{data.dataset.value}-{model.arch.value}-s{cfg.seed}.pt", "--out")
    shown, dev = output(flags, args)
    from trainables.checkpoint import save_checkpoint
    from trainables.data import load_data
    from trainables.pipeline import accuracy_line, pretrain

    loaded = load_data(data)
    say(f"pretraining {model.arch.value} on {data.dataset.value} ({len(loaded.train)} train / {len(loaded.val)} val "
        f"images from {loaded.source}) with {cfg.optimizer.value} lr {cfg.lr:g} for {cfg.epochs} epochs on {dev}")
    trained, meta = pretrain(model.arch.value, loaded, data, cfg, device=dev, progress=not shown.quiet)
    meta["seed"] = cfg.seed
    save_checkpoint(out, trained, meta)
    say(f"{accuracy_line(meta)} -> {out}")
    return 0
