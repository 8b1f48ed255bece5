"""`patchtune audit`: strong attacks (PGD-100, AutoAttack) and gradient-masking checks for a checkpoint."""

from __future__ import annotations

import argparse
import json
from typing import Any

from study.cli.common import data_flags, output_flags
from study.cli.flags import Flags, readable_dir, require_files, say, writable_target
from study.options import AuditOptions, Output
from trainables.config import AuditCfg, DataCfg, ModelCfg


def add(sub: Any) -> None:
    p = sub.add_parser("audit", help="strong attacks (PGD-100, AutoAttack) and gradient-masking checks for a checkpoint")
    p.add_argument("checkpoint", metavar="CKPT")
    flags = Flags(p, "audit")
    flags.add(AuditCfg, "eps", default="the paper's for the data set")
    for name in ("limit", "split", "strong_steps", "strong_restarts", "autoattack", "components", "square_queries",
                 "reattack_queries", "reattack_restarts",
                 "check_limit", "batch_size", "seed"):
        flags.add(AuditCfg, name)
    flags.add(AuditOptions, "base", metavar="CKPT")
    flags.add(AuditOptions, "out", metavar="FILE")
    data_flags(flags, limits=False, of_file=True)
    output_flags(flags, json=True)
    p.set_defaults(run=lambda args: run(flags, args))


def run(flags: Flags, args: argparse.Namespace) -> int:
    cfg = flags.build(args, AuditCfg)
    opts = flags.build(args, AuditOptions)
    require_files(args.checkpoint, opts.base)
    readable_dir(args.data_root)
    out = writable_target(opts.out, "--out") if opts.out else None
    shown = flags.build(args, Output)
    from analysis.audit_tables import render_text
    from study import api
    from trainables.atomic import atomic_write_text

    result = api.audit_checkpoint(args.checkpoint, cfg, base=opts.base, data=flags.given(args, DataCfg),
                                  arch=flags.build(args, ModelCfg).arch, device=shown.device,
                                  progress=not (shown.quiet or shown.json), log=None if shown.json else say)
    payload = result.as_dict()
    if out is not None:
        atomic_write_text(out, json.dumps(payload, indent=2))
    if shown.json:
        print(json.dumps(payload))
    else:
        for rep in result.reports:
            print(render_text(rep, title=f"{args.checkpoint} ({result.dataset}, {result.arch}), {result.split} split"))
            print()
    return 0
