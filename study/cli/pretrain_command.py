"""`patchtune pretrain`: train a base (undefended) model from scratch."""

from __future__ import annotations

import argparse
from typing import Any

from study.cli.common import data_cfg, data_flags, output, output_flags, train_flags
from study.cli.flags import Flags, say, writable_target
from study.options import PretrainOptions
from study.settings import BaseCfg
from trainables.config import DataCfg, ModelCfg, TrainCfg


def add(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="train a base (undefended) model: from scratch, or from a library's "
                                        "pretrained weights (--weights)")
    flags = Flags(p, "pretrain")
    data_flags(flags)
    flags.add(DataCfg, "val_fraction")
    flags.add(ModelCfg, "arch")
    flags.add(BaseCfg, "weights", metavar="WEIGHTS")
    train_flags(flags)
    flags.add(PretrainOptions, "out", metavar="CKPT")
    output_flags(flags)
    p.set_defaults(run=lambda args: run(flags, args))


def run(flags: Flags, args: argparse.Namespace) -> int:
    data = data_cfg(flags, args)
    model = flags.build(args, ModelCfg).resolved(data.dataset)
    arch = model.arch
    assert arch is not None
    weights = flags.build(args, BaseCfg).weights
    cfg = flags.build(args, TrainCfg).resolved(arch, finetune=False)
    opts = flags.build(args, PretrainOptions)
    out = writable_target(opts.out or f"runs/pretrain-{data.dataset.value}-{arch.replace('/', '-')}-s{cfg.seed}.pt",
                          "--out")
    shown, dev = output(flags, args)
    from trainables.checkpoint import save_checkpoint
    from trainables.data import load_data
    from trainables.pipeline import accuracy_line, pretrain
    from trainables.zoo import check_inputs, fetch_weights

    check_inputs(arch, data.info)  # the arch's name too
    if weights is not None:
        fetch_weights(arch, weights)
    loaded = load_data(data)
    start = f"from {weights} weights" if weights else "from scratch"
    say(f"pretraining {arch} {start} on {data.dataset.value} ({len(loaded.train)} train / {len(loaded.val)} val "
        f"images, {loaded.info.num_classes} classes, from {loaded.source}) with {cfg.optimizer.value} lr {cfg.lr:g} "
        f"for {cfg.epochs} epochs on {dev}")
    trained, meta = pretrain(arch, loaded, data, cfg, device=dev, weights=weights, progress=not shown.quiet, log=say)
    meta["seed"] = cfg.seed
    save_checkpoint(out, trained, meta)
    say(f"{accuracy_line(meta)} -> {out}")
    return 0
