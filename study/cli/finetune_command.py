"""`patchtune finetune`: fine-tune a base model with one method (the paper's patch augmentation, robust fine-tuning,
or one of the paper's adversarial-training baselines)."""

from __future__ import annotations

import argparse
from typing import Any

from study.cli.common import aug_cfg, aug_flags, data_flags, model_file, output, output_flags, train_flags
from study.cli.flags import Flags, UsageError, require_files, say, writable_target
from study.options import FinetuneOptions
from trainables.config import AugCfg, MethodCfg, TrainCfg
from trainables.vocab import warmup_text


def add(sub: Any) -> None:
    p = sub.add_parser("finetune", help="fine-tune a base model: the paper's patch defense, robust fine-tuning, or "
                                        "the paper's adversarial-training baselines")
    flags = Flags(p, "finetune")
    flags.add(FinetuneOptions, "base", metavar="CKPT")
    data_flags(flags, of_file=True)
    train_flags(flags)
    for name in ("method", "augment", "train_eps", "at_steps", "at_alpha", "beta", "eps_warmup"):
        flags.add(MethodCfg, name)
    aug_flags(flags)
    flags.add(FinetuneOptions, "from_scratch")
    flags.add(FinetuneOptions, "out", metavar="CKPT")
    output_flags(flags)
    p.set_defaults(run=lambda args: run(flags, args))


def run(flags: Flags, args: argparse.Namespace) -> int:
    if args.base is None:
        raise UsageError("the following arguments are required: --base")
    method = flags.build(args, MethodCfg)  # checked before anything is loaded
    opts = flags.build(args, FinetuneOptions)
    require_files(opts.base)
    from trainables.checkpoint import save_checkpoint
    from trainables.data import load_data
    from trainables.pipeline import accuracy_line, finetune

    ckpt, data_cfg = model_file(flags, args, opts.base)
    info = data_cfg.info
    aug = aug_cfg(flags, args, info)
    cfg = flags.build(args, TrainCfg).resolved(ckpt.arch, finetune=True)
    method = method.resolved(info.default_eps)
    out = writable_target(opts.out or f"runs/finetune-{method.method.value.replace('_', '-')}-{cfg.optimizer.value}"
                                      f"-s{cfg.seed}.pt", "--out")
    shown, dev = output(flags, args)
    data = load_data(data_cfg)
    base = ckpt.build(data.info)
    say(f"{'training' if opts.from_scratch else 'fine-tuning'} "
        + (f"a fresh {ckpt.arch} (seed {cfg.seed}; {opts.base} is its comparison)" if opts.from_scratch
           else f"{ckpt.arch} ({opts.base})")
        + f" on {data_cfg.dataset.value} {_what(method, aug)} with {cfg.optimizer.value} lr {cfg.lr:g} for "
          f"{cfg.epochs} epochs on {dev}")
    model, meta = finetune(base, {"data": data_cfg.split_meta(), **ckpt.meta}, data, cfg, method, aug if method.augmented else None,
                           default_eps=info.default_eps, device=dev, progress=not shown.quiet,
                           from_scratch=opts.from_scratch)
    meta["seed"] = cfg.seed
    meta["base_path"] = str(opts.base)
    save_checkpoint(out, model, meta)
    say(f"{accuracy_line(meta)} -> {out}")
    return 0


def _what(method: MethodCfg, aug: AugCfg) -> str:
    """What the fine-tuning trains on, in words."""
    patch = f"clean + patch-modified ({aug.pool_text}, w={aug.patch_size})"
    attack = method.attack()
    if attack is None:
        return patch
    return (f"{method.method.value.replace('_', '-')} examples (eps {attack.eps:g}, alpha {attack.alpha:g}, "
            f"{attack.steps} steps"
            + (f", beta {method.beta:g}" if "beta" in method.describe() else "")
            + (f", {warmup_text(method.eps_warmup)}" if method.eps_warmup else "")
            + ") of " + (patch if method.augmented else "clean") + " images")
