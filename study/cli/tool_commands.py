"""`patchtune show-augment` (what the patch augmentation does to real images) and `patchtune schema` (the study
spec's JSON Schema, for editors)."""

from __future__ import annotations

import argparse
from typing import Any

from study.cli.common import aug_cfg, aug_flags, data_cfg, data_flags
from study.cli.flags import Flags, UsageError, say, writable_target
from study.options import SchemaOptions, ShowAugmentOptions


def add(sub: Any) -> None:
    p = sub.add_parser("show-augment", help="write a PNG grid of patch-augmentation examples, one row per op")
    flags = Flags(p, "show-augment")
    data_flags(flags, limits=False)
    aug_flags(flags)
    for name in ("n", "seed", "out"):
        flags.add(ShowAugmentOptions, name)
    p.set_defaults(run=lambda args: show_augment(flags, args))

    p = sub.add_parser("schema", help="print the study spec's JSON Schema (for an editor to complete and check a spec)")
    schema_flags = Flags(p, "schema")
    schema_flags.add(SchemaOptions, "out", metavar="FILE")
    p.set_defaults(run=lambda args: schema(schema_flags, args))


def show_augment(flags: Flags, args: argparse.Namespace) -> int:
    data = data_cfg(flags, args)
    opts = flags.build(args, ShowAugmentOptions)
    aug = aug_cfg(flags, args, data.info)
    out = writable_target(opts.out, "--out")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {opts.out!r} must end in .png")
    from trainables.data import load_data  # after the checks: they need neither torch nor the data
    from trainables.visualize import augment_grid

    loaded = load_data(data.replace(limit_test=opts.n))
    augment_grid(loaded.test.x[: opts.n], aug, seed=opts.seed, path=out,
                 title=f"{data.dataset.value}: patch augmentation, w={aug.patch_size}")
    say(f"wrote {out}")
    return 0


def schema(flags: Flags, args: argparse.Namespace) -> int:
    from study.spec import json_schema

    opts = flags.build(args, SchemaOptions)
    text = json_schema()
    if opts.out is None:
        print(text)
        return 0
    from trainables.atomic import atomic_write_text

    atomic_write_text(writable_target(opts.out, "--out"), text + "\n")
    say(f"wrote {opts.out}")
    return 0
