"""`patchtune eval`: clean and white-box robust accuracy of one or more checkpoints."""

from __future__ import annotations

import argparse
import json
from typing import Any

from study.cli.common import data_flags, model_file, output, output_flags
from study.cli.flags import Flags, UsageError, require_files, say
from study.options import EvalOptions
from trainables.config import AttackCfg


def add(sub: Any) -> None:
    p = sub.add_parser("eval", help="clean and white-box robust accuracy of one or more checkpoints")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    flags = Flags(p, "eval")
    flags.add(EvalOptions, "attacks")
    flags.add(AttackCfg, "eps", default="the paper's eps for the data set, 0.3 fmnist / 0.03 others / 8/255 "
                                        "imagefolder")
    for name in ("alpha", "steps", "restarts", "last_iterate"):
        flags.add(AttackCfg, name)
    for name in ("split", "limit", "batch_size", "seed"):
        flags.add(EvalOptions, name)
    data_flags(flags, limits=False, of_file=True)
    output_flags(flags, json=True)
    p.set_defaults(run=lambda args: run(flags, args))


def run(flags: Flags, args: argparse.Namespace) -> int:
    opts = flags.build(args, EvalOptions)
    require_files(*args.checkpoints)
    from analysis.tables import eval_table
    from trainables.data import load_data
    from trainables.evaluation import accuracies
    from trainables.pipeline import evaluate_model

    opened = [model_file(flags, args, p) for p in args.checkpoints]
    ckpts = [ck for ck, _ in opened]
    first = ckpts[0]
    for path, (ck, cfg) in zip(args.checkpoints[1:], opened[1:], strict=True):
        if ck.dataset is not first.dataset or cfg.info.side != opened[0][1].info.side:
            raise UsageError(f"{path} is for {ck.dataset.value}, but {args.checkpoints[0]} is for {first.dataset.value}")
    data_cfg = opened[0][1].replace(**{f"limit_{opts.split.value}": opts.limit})
    given = flags.given(args, AttackCfg)
    attacks = [AttackCfg.parse({"eps": data_cfg.info.default_eps, **given, "name": a}) for a in opts.attacks]
    shown, dev = output(flags, args)
    data = load_data(data_cfg)
    split = data.split(opts.split.value)
    results = []
    for path, ck in zip(args.checkpoints, ckpts, strict=True):
        if not shown.json:
            say(f"evaluating {path} on {len(split)} {opts.split.value} images on {dev}")
        acc = accuracies(evaluate_model(ck.build(data.info), split, attacks, device=dev, batch_size=opts.batch_size,
                                        seed=opts.seed, progress=not (shown.quiet or shown.json)))
        results.append({
            "checkpoint": str(path),
            "arch": ck.arch,
            "kind": ck.meta.get("kind"),
            "optimizer": (ck.meta.get("train") or {}).get("optimizer"),
            "method": (ck.meta.get("method") or {}).get("method"),
            "accuracy": {a.name.value: acc.get(a.label, acc["clean"]) for a in attacks},
        })
    info = {"dataset": first.dataset.value, "split": opts.split.value, "n": len(split), "seed": opts.seed,
            "attacks": {a.name.value: a.describe() for a in attacks}}
    if shown.json:
        payload = {**results[0], **info} if len(results) == 1 else {**info, "models": results}
        print(json.dumps(payload, indent=None))
        return 0
    print(eval_table(results, info))
    return 0
