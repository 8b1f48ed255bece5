"""Core benchmarks, each a ratio against a peer measured in the same run on the same model and data.

    make bench                      # or: .venv/bin/python -m benchmarks.bench_core [--base CKPT] [--n 1000]

Rows:
  1. Robust-accuracy evaluation throughput, PGD-10 at the paper's F-MNIST parameters (eps 0.3, alpha 0.01):
     ours (`trainables.evaluation.evaluate`: attack only clean-correct samples, stop per sample once fooled)
     vs the textbook loop every attack library runs (every sample, every step, from a uniform start; the loop
     of torchattacks' PGD, the peer of the rows before 2026-12-06) + a forward pass for accuracy. Undefended
     cnn3 and a patch-fine-tuned cnn3. Target >= 3x on the undefended model at robust accuracy <= the peer's.
  2. Patch-augmentation throughput: ours (batched, `trainables.augment.patch_augment`) vs the same five ops
     done per sample with torchvision.transforms.v2.functional. Target >= 20x.
  3. The paper's cost claim: a patch fine-tuning epoch vs a PGD-10 adversarial-training epoch on the same
     model and data. Target <= 0.25x the time.
  4. Tune overhead: `patchtune run` vs the same trials in a bare process pool (benchmarks/bench_tune.py).
     Target <= 1.10x the time. Skipped with --no-tune.
  5. The quick study phase by phase (benchmarks/bench_study.py): where `make run`'s minutes go, the scoring
     share of trial time (target <= 20 %) and the trial phase against the trials' own time (<= 1.10x).
     Skipped with --no-tune.
  6. On a GPU only (benchmarks/bench_gpu.py): PGD-10 eval and fine-tuning img/s as a fraction of the limit
     measured on the same card, CUDA graphs and eval batch size, FLOPs against the card's bf16 rate, the
     speed switches on vs off, torch.compile modes, and trial packing (k trials per GPU).

Timings are medians of interleaved repeats after a warm-up. Results are printed and appended, with the
machine, to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.bench_common import README, machine, render
from trainables.attacks import eval_mode
from trainables.augment import make_generator, patch_augment
from trainables.checkpoint import load_checkpoint
from trainables.config import AttackCfg, AugCfg, DataCfg, PatchOp, TrainCfg
from trainables.data import DataBundle, iterate_batches, load_data, place
from trainables.evaluation import evaluate
from trainables.methods import Adversary
from trainables.models import InputSpec, build_model
from trainables.perf import configure_backends, pick_device, prepare_model
from trainables.training import fit, make_optimizer, train_one_epoch


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, alternating them so machine noise hits both alike."""
    for fn in fns.values():  # warm-up (oneDNN primitive caches, allocator)
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


# ------------------------------------------------------------------------------------------------ models


def get_models(data: DataBundle, device: torch.device, base: str | None) -> dict[str, torch.nn.Module]:
    spec = InputSpec.of(data.info)
    if base:
        undefended = prepare_model(load_checkpoint(base, dataset="fmnist").build(), device)
    else:
        torch.manual_seed(0)
        undefended = prepare_model(build_model("cnn3", spec), device)
        print("training an undefended cnn3 (3 epochs on 54k F-MNIST images)...", flush=True)
        fit(undefended, data.train, data.val, TrainCfg(epochs=3, lr=1e-3), device=device, schedule=True, progress=False)
    defended = prepare_model(build_model("cnn3", spec), device)
    defended.load_state_dict(undefended.state_dict())
    print("patch-fine-tuning a copy (1 epoch, Adam 1e-3, all five ops, w=8)...", flush=True)
    fit(defended, data.train, data.val, TrainCfg(epochs=1, lr=1e-3), device=device, augment=AugCfg(patch_size=8),
        progress=False)
    return {"undefended": undefended.eval(), "patch-fine-tuned": defended.eval()}


# ------------------------------------------------------------------------------------------------ rows


def textbook_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Madry et al.'s PGD as attack libraries write it: the whole batch through every step, the last iterate."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps, generator=generator)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = (x + (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


def bench_pgd(models: dict[str, torch.nn.Module], data: DataBundle, device: torch.device, n: int, repeats: int) -> list[dict[str, Any]]:
    test = data.test.take(slice(0, n))
    attack = AttackCfg(name="pgd", eps=0.3, alpha=0.01, steps=10)
    batch = 2000 if device.type == "cuda" else 250  # the same for both; small batches leave a GPU idle
    rows = []
    autocast = configure_backends(device)
    for name, model in models.items():
        result: dict[str, float] = {}

        def ours() -> None:
            result["ours"] = evaluate(model, test, [attack], device=device, batch_size=batch, seed=0,
                                      autocast=autocast)["pgd10"]

        def peer() -> None:
            correct, gen = 0, make_generator(0, device)
            for x, y in iterate_batches(test, batch, device):
                with eval_mode(model):
                    adv = textbook_pgd(model, x, y, 0.3, 0.01, 10, gen)
                with torch.no_grad():
                    correct += int((model(adv).argmax(1) == y).sum())
            result["peer"] = correct / len(test)

        t = interleaved({"ours": ours, "peer": peer}, repeats)
        rows.append({
            "row": f"PGD-10 eval, {name} cnn3 ({n} F-MNIST test images, eps 0.3, batch {batch})",
            "ours": f"{n / t['ours']:.0f} img/s, robust acc {100 * result['ours']:.2f}%",
            "peer": f"{n / t['peer']:.0f} img/s, robust acc {100 * result['peer']:.2f}% (textbook PGD loop)",
            "ratio": t["peer"] / t["ours"],
            "measure": "speed-up (peer time / ours)",
            "target": ">= 3x" if name == "undefended" else ">= 1.0x",
            "ok": t["peer"] / t["ours"] >= (3.0 if name == "undefended" else 1.0) and result["ours"] <= result["peer"],
            "note": "" if result["ours"] <= result["peer"] else "robust acc above peer!",
        })
    return rows


def per_sample_augment(x: torch.Tensor, cfg: AugCfg, gen: torch.Generator) -> torch.Tensor:
    """The peer: the same ops, one image at a time, with torchvision.transforms.v2.functional."""
    from torchvision.transforms.v2 import functional as TF

    out = x.clone()
    _, _, h, w_img = x.shape
    w = cfg.patch_size
    assert w is not None
    top, left = (h - w) // 2, (w_img - w) // 2
    for i in range(x.shape[0]):
        op = cfg.pool[int(torch.randint(len(cfg.pool), (1,), generator=gen))]
        patch = out[i, :, top : top + w, left : left + w]
        if op is PatchOp.ROTATE:
            angle = float(torch.empty(1).uniform_(-cfg.rotate_degrees, cfg.rotate_degrees, generator=gen))
            patch = TF.rotate(patch, angle, interpolation=TF.InterpolationMode.BILINEAR)
        elif op is PatchOp.TRANSLATE:
            shift = (torch.empty(2).uniform_(-1, 1, generator=gen) * cfg.translate_fraction * w).tolist()
            patch = TF.affine(patch, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])
        elif op is PatchOp.FLIP:
            patch = TF.horizontal_flip(patch)
        elif op is PatchOp.NOISE:
            patch = (patch + cfg.noise_std * torch.randn(patch.shape, generator=gen)).clamp(0, 1)
        else:
            patch = torch.full_like(patch, cfg.occlude_value)
        out[i, :, top : top + w, left : left + w] = patch
    return out


def bench_augment(data: DataBundle, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for label, x, w in (
        ("F-MNIST 1x28x28", data.train.x[:1024].float() / 255, 8),
        ("CIFAR-size 3x32x32", torch.rand(1024, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 10),
    ):
        cfg = AugCfg(patch_size=w)
        g1, g2 = make_generator(0), torch.Generator().manual_seed(0)
        t = interleaved({"ours": lambda: patch_augment(x, cfg, g1), "peer": lambda: per_sample_augment(x, cfg, g2)},
                        repeats)
        n = x.shape[0]
        rows.append({
            "row": f"patch augmentation, {label}, batch {n}, five ops",
            "ours": f"{n / t['ours']:.0f} img/s",
            "peer": f"{n / t['peer']:.0f} img/s (per-sample torchvision v2)",
            "ratio": t["peer"] / t["ours"],
            "measure": "speed-up (peer time / ours)",
            "target": ">= 20x",
            "ok": t["peer"] / t["ours"] >= 20,
        })
    return rows


def bench_curve(models: dict[str, torch.nn.Module], data: DataBundle, device: torch.device, repeats: int,
                n: int = 300) -> list[dict[str, Any]]:
    """A trial's per-epoch scoring (the quick preset's objective attacks) with the eps curve as one nested pass
    vs each eps attacked on its own, at one thread as a 1-CPU Ray trial runs."""
    from study.spec import load_spec
    from trainables.evaluation import accuracies, robust_masks
    from trainables.scoring import objective_attacks, objective_curve

    objective = load_spec("quick").resolved().objective
    val = place(data.val.take(slice(0, n)), device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for name, model in models.items():
            acc: dict[str, dict[str, float]] = {}

            def score(nested: bool, model: torch.nn.Module = model) -> None:
                acc["nested" if nested else "per-eps"] = accuracies(robust_masks(
                    model, val, objective_attacks(objective), device=device, seed=0,
                    nested=objective_curve(objective) if nested else ()))

            times = interleaved({"per-eps": lambda: score(False), "nested": lambda: score(True)}, repeats)
            curve = ", ".join(f"{k} {100 * acc['nested'][k]:.1f} vs {100 * acc['per-eps'][k]:.1f} %"
                              for k in objective_curve(objective))
            ratio = times["per-eps"] / times["nested"]
            rows.append({"row": f"trial scoring (quick objective: PGD-10 at eps 0.1, grid 0.03/0.1/0.3, paper PGD-10), {name} cnn3, "
                                f"{n} val images, 1 thread: eps curve nested vs per-eps",
                         "ours": f"{times['nested']:.2f} s",
                         "peer": f"{times['per-eps']:.2f} s (accuracy nested vs per-eps: {curve})",
                         "ratio": ratio, "measure": "speed-up", "target": ">= 1x, accuracy <= per-eps + noise",
                         "ok": ratio >= 1.0})
    finally:
        torch.set_num_threads(threads)
    return rows


def bench_cost(model: torch.nn.Module, data: DataBundle, device: torch.device, n: int, repeats: int) -> list[dict[str, Any]]:
    """The paper's cost claim: one patch fine-tuning epoch vs one PGD-10 adversarial-training epoch, same
    model (a copy of the undefended cnn3), data, batch size and optimizer."""
    import copy

    train = place(data.train.take(slice(0, n)), device)
    autocast = configure_backends(device)
    at = Adversary(AttackCfg(name="pgd", eps=0.3, alpha=0.03, steps=10))  # Madry-style: alpha * steps >= 2 eps
    runs = {}
    kws: tuple[tuple[str, dict[str, Any]], ...] = (("ours", {"augment": AugCfg(patch_size=8)}), ("peer", {"adversarial": at}))
    for label, kw in kws:
        m = copy.deepcopy(model)
        opt = make_optimizer(m.parameters(), TrainCfg(lr=1e-4), device)

        def epoch(m: torch.nn.Module = m, opt: torch.optim.Optimizer = opt, kw: dict[str, Any] = kw) -> None:
            train_one_epoch(m, train, opt, batch_size=128, device=device, generator=torch.Generator().manual_seed(0),
                            aug_generator=make_generator(1, device), autocast=autocast, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()

        runs[label] = epoch
    t = interleaved(runs, repeats)
    return [{
        "row": f"fine-tune epoch (clean + patch-modified, w=8) vs PGD-10 adversarial-training epoch, cnn3, {n} F-MNIST images",
        "ours": f"{t['ours']:.2f} s/epoch ({n / t['ours']:.0f} img/s)",
        "peer": f"{t['peer']:.2f} s/epoch ({n / t['peer']:.0f} img/s, PGD-10 AT)",
        "ratio": t["ours"] / t["peer"],
        "measure": "time ours / peer",
        "target": "<= 0.25x",
        "ok": t["ours"] / t["peer"] <= 0.25,
    }]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="undefended F-MNIST cnn3 checkpoint (default: train one, ~1 min)")
    parser.add_argument("--n", type=int, default=0, help="test images for the PGD rows (default 1000 CPU, 10000 GPU)")
    parser.add_argument("--train-n", type=int, default=0, help="training images for the cost row (default 4000 CPU, all on GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", help="directory searched first for the F-MNIST files")
    parser.add_argument("--limit-train", type=int, help="training images loaded (default all 54k; the suite's smoke "
                                                        "run uses a few hundred)")
    parser.add_argument("--curve-n", type=int, default=300, help="validation images of the trial-scoring row")
    parser.add_argument("--no-tune", action="store_true",
                        help="skip the rows that need Ray: Tune overhead (~3 min) and the quick study (~7 min)")
    parser.add_argument("--no-before-after", action="store_true",
                        help="skip issue 14's trials through today's code and an earlier commit's (~6 min)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/README.md")
    parser.add_argument("--gpu-rows-on-cpu", action="store_true", help=argparse.SUPPRESS)  # smoke test, tiny sizes
    parser.add_argument("--gpu-only", metavar="SECTIONS",
                        help="only these GPU sections, comma-separated (fraction,graphs,vgg,switches,compile,packing)")
    args = parser.parse_args(argv)
    for name in ("n", "train_n", "repeats", "limit_train", "curve_n"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("n", "train_n") else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.base and not Path(args.base).is_file():
        parser.error(f"--base {args.base!r}: no such file")

    device = pick_device(os.environ.get("TORCH_DEVICE", "auto"))
    data = load_data(DataCfg(root=args.data_root, limit_train=args.limit_train))
    started = time.perf_counter()
    models = get_models(data, device, args.base)
    rows = []
    if not args.gpu_only:
        rows += bench_pgd(models, data, device, args.n or (10000 if device.type == "cuda" else 1000), args.repeats)
        rows += bench_augment(data, args.repeats)
        train_n = args.train_n or (len(data.train) if device.type == "cuda" else 4000)
        rows += bench_cost(models["undefended"], data, device, train_n, args.repeats)
        rows += bench_curve(models, data, device, args.repeats, n=args.curve_n)
    if device.type == "cuda" or args.gpu_rows_on_cpu:
        from benchmarks.bench_gpu import SECTIONS, gpu_rows

        sections = tuple(args.gpu_only.split(",")) if args.gpu_only else SECTIONS
        rows += gpu_rows(models, data, device, args.repeats, root=args.data_root, small=args.gpu_rows_on_cpu,
                         sections=sections)
    if not args.no_tune:
        from benchmarks.bench_study import measure as study_rows
        from benchmarks.bench_tune import measure

        tune = measure()
        rows += [tune, *tune.pop("breakdown")]
        rows += study_rows()
    if not args.no_before_after and device.type == "cpu":
        from benchmarks.bench_before_after import BEFORE, available
        from benchmarks.bench_before_after import measure as before_after

        if available(BEFORE):
            rows += before_after(BEFORE, Path(args.base) if args.base else None)
        else:
            print(f"skipping the before/after row: commit {BEFORE} is not in this clone", file=sys.stderr)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = f"### {stamp} — `make bench` on {device}\n\nMachine: {machine()}. Total {time.perf_counter() - started:.0f} s."
    text = render(rows, header)
    print(text)
    if not args.no_record:
        with README.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {README}")


if __name__ == "__main__":
    main()
