"""`patchtune reproduce`: the paper's Table 1 / Table 2 over seeds, with CIs and findings."""

from __future__ import annotations

import argparse
from typing import Any

from study.cli.flags import Flags, UsageError, readable_dir, writable_target
from study.cli.study_commands import ray_flags, ray_options
from study.settings import REPRODUCE_KEYWORDS, ReproCfg
from trainables.vocab import Dataset


def add(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="the paper's Table 1 / Table 2 over seeds, with CIs and findings")
    p.add_argument("dataset", type=str.lower, choices=[d.value for d in Dataset])
    flags = Flags(p, "reproduce")
    budgets = {"epochs": "2 fmnist / 10 others", "long_epochs": "10 fmnist / 50 others",
               "limit_train": "10000 fmnist, all otherwise", "limit_test": "500 fmnist, all otherwise",
               "pretrain_epochs": "the paper's: 10 cnn3 / 200 vgg16 (100 on imagenette)", "lr": "the paper's for the arch"}
    for keyword, path in REPRODUCE_KEYWORDS.items():
        flags.add(ReproCfg, path, "--" + keyword.replace("_", "-"), default=budgets.get(keyword),
                  empty="none" if keyword == "robust_methods" else None)
    ray_flags(flags)
    p.set_defaults(run=lambda args: run(flags, args))


def run(flags: Flags, args: argparse.Namespace) -> int:
    from study import api

    readable_dir(args.data_root)
    cfg = api.reproduction_cfg(args.dataset, **{k: getattr(args, k) for k in REPRODUCE_KEYWORDS})
    from study.reproduce import output_dir, reproduce  # imports torch: once the settings are known to be good

    out = output_dir(cfg)
    cfg = cfg.replace(name=out.name)  # the timestamped default once: the directory checked is the one written
    writable_target(str(out / "results.parquet"), "--storage")
    if out.exists():
        raise UsageError(f"--name {cfg.name!r}: {out} already exists")
    reproduce(cfg, ray_options(flags, args))
    return 0
