"""GPU rows of `make bench` (called by bench_core.py when CUDA is present; every figure names the card).

  - PGD-10 eval and fine-tuning throughput as a fraction of the limit measured on the same card: the limit
    is the bare model doing only the passes the work needs, timed with CUDA events on one resident batch:
    PGD-k = (k + 1) forward + k input-backward passes per image; fine-tuning = forward + backward + optimizer
    step on the clean (+) modified batch. Ours includes everything else (data, augmentation, projection,
    bookkeeping), so the fraction is what the rest costs. Early stopping can push eval above 1.
  - The speed switches of trainables/perf.py on vs off (PATCHTUNE_PERF=off: fp32, NCHW, foreach, no
    resident data) on VGG-16 at CIFAR size, and torch.compile on vs off on cnn3.
  - Trial packing: k fine-tuning processes sharing the card (what `resources.gpu: 1/k` does in a study),
    aggregate images/s vs one process alone.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from trainables.augment import make_generator
from trainables.config import AttackCfg, AugCfg, DataCfg, TrainCfg
from trainables.data import DataBundle, Split, load_data, place
from trainables.engine import configure_backends, evaluate, make_optimizer, train_one_epoch
from trainables.models import InputSpec, build_model
from trainables.perf import Autocast, input_layout, prepare_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_time(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of `fn`, with CUDA events on a GPU (host clock elsewhere)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pgd_limit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, autocast: Autocast) -> Callable[[], None]:
    """The bare passes of PGD-k on one batch: k (forward + input-backward), one last forward."""
    def run() -> None:
        xa = x.detach().requires_grad_(True)
        for _ in range(k):
            with autocast():
                logits = model(xa)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xa)
            xa = (xa.detach() + 0.01 * grad.sign()).requires_grad_(True)
        with torch.no_grad(), autocast():
            model(xa)
    return run


def finetune_limit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                   autocast: Autocast) -> Callable[[], None]:
    def run() -> None:
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def _card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _row(row: str, ours: str, peer: str, ratio: float, measure: str, target: str, ok: bool, note: str = "") -> dict[str, Any]:
    return {"row": row, "ours": ours, "peer": peer, "ratio": ratio, "measure": measure, "target": target, "ok": ok,
            "note": note}


def eval_fraction(models: dict[str, torch.nn.Module], data: DataBundle, device: torch.device, repeats: int,
                  n: int, batch: int) -> list[dict[str, Any]]:
    autocast = configure_backends(device)
    test = place(data.test.take(slice(0, n)), device)
    x = test.x[:batch].to(device).float().div(255).contiguous(memory_format=input_layout(device))
    y = test.y[:batch].to(device)
    attack = AttackCfg(name="pgd", eps=0.3, alpha=0.01, steps=10)
    rows = []
    for name, model in models.items():
        t_limit = device_time(pgd_limit(model, x, y, 10, autocast), device, repeats)
        acc: dict[str, float] = {}

        def ours(model: torch.nn.Module = model) -> None:
            acc.update(evaluate(model, test, [attack], device=device, batch_size=batch, seed=0, autocast=autocast))

        t_ours = device_time(ours, device, repeats, warmup=1)
        frac = (n / t_ours) / (batch / t_limit)
        rows.append(_row(f"PGD-10 eval img/s vs the card's limit, {name} cnn3, {n} F-MNIST test images, batch {batch} "
                         f"[{_card(device)}]",
                         f"{n / t_ours:.0f} img/s (robust acc {100 * acc['pgd10']:.2f} %)",
                         f"limit {batch / t_limit:.0f} img/s (11 fwd + 10 input-bwd, bare model)",
                         frac, "fraction of limit", ">= 0.5x", frac >= 0.5))
    return rows


def finetune_fraction(model: torch.nn.Module, train: Split, device: torch.device, repeats: int, batch: int,
                      label: str, aug: AugCfg) -> tuple[dict[str, Any], float]:
    autocast = configure_backends(device)
    train = place(train, device)
    m = prepare_model(copy.deepcopy(model), device)
    opt = make_optimizer(m.parameters(), TrainCfg(lr=1e-4), device)
    n = len(train)

    def epoch() -> None:
        train_one_epoch(m, train, opt, batch_size=batch, device=device, generator=torch.Generator().manual_seed(0),
                        augment=aug, aug_generator=make_generator(1, device), autocast=autocast)

    t_ours = device_time(epoch, device, repeats, warmup=1)
    x = train.x[: 2 * batch].to(device).float().div(255).contiguous(memory_format=input_layout(device))
    t_limit = device_time(finetune_limit(m, x, train.y[: 2 * batch].to(device), opt, autocast), device, repeats * 4)
    limit = batch / t_limit  # clean images per second (each step trains on batch clean + batch modified)
    frac = (n / t_ours) / limit
    row = _row(f"fine-tune img/s vs the card's limit, {label}, batch {batch}+{batch} [{_card(device)}]",
               f"{n / t_ours:.0f} clean img/s", f"limit {limit:.0f} img/s (fwd + bwd + step, bare model)",
               frac, "fraction of limit", ">= 0.5x", frac >= 0.5)
    return row, n / t_ours


def switches_on_off(device: torch.device, repeats: int, n: int = 10000) -> list[dict[str, Any]]:
    """VGG-16 fine-tuning at CIFAR size (3x32x32; random images: throughput does not depend on content)."""
    spec = InputSpec(3, 32, 32, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g))
    torch.manual_seed(0)
    vgg = build_model("vgg16", spec)
    rates = {}
    rows = []
    for mode in ("off", "on"):
        os.environ["PATCHTUNE_PERF"] = "" if mode == "on" else "off"
        row, rate = finetune_fraction(vgg, split, device, repeats, 128, "VGG-16 at 3x32x32", AugCfg(patch_size=10))
        row["row"] += f", switches {mode}"
        rows.append(row)
        rates[mode] = rate
    os.environ["PATCHTUNE_PERF"] = ""
    rows.append(_row(f"VGG-16 fine-tuning, trainables/perf.py switches on vs off (bf16, channels_last, fused Adam, "
                     f"resident data) [{_card(device)}]", f"{rates['on']:.0f} clean img/s",
                     f"{rates['off']:.0f} clean img/s (fp32, NCHW, foreach, host data)", rates["on"] / rates["off"],
                     "speed-up", ">= 1.5x", rates["on"] / rates["off"] >= 1.5))
    return rows


def compile_on_off(model: torch.nn.Module, train: Split, device: torch.device, repeats: int) -> dict[str, Any]:
    rates = {}
    t_compile = 0.0
    for mode in ("off", "on"):
        os.environ["PATCHTUNE_COMPILE"] = "1" if mode == "on" else ""
        autocast = configure_backends(device)
        m = prepare_model(copy.deepcopy(model), device)
        opt = make_optimizer(m.parameters(), TrainCfg(lr=1e-4), device)
        from trainables.perf import maybe_compile

        step = maybe_compile(m, device)
        data = place(train, device)

        def epoch(m: torch.nn.Module = m, opt: torch.optim.Optimizer = opt, step: torch.nn.Module = step) -> None:
            train_one_epoch(m, data, opt, batch_size=256, device=device, generator=torch.Generator().manual_seed(0),
                            augment=AugCfg(patch_size=8), aug_generator=make_generator(1, device), autocast=autocast,
                            step_model=step, drop_last=True)

        t0 = time.perf_counter()
        epoch()  # warm-up (compilation) outside the timing
        _sync(device)
        if mode == "on":
            t_compile = time.perf_counter() - t0
        rates[mode] = len(train) / device_time(epoch, device, repeats, warmup=0)
    os.environ["PATCHTUNE_COMPILE"] = ""
    ratio = rates["on"] / rates["off"]
    return _row(f"cnn3 fine-tuning, torch.compile on vs off, batch 256+256 [{_card(device)}]",
                f"{rates['on']:.0f} clean img/s (compile {t_compile:.0f} s, outside the timing)",
                f"{rates['off']:.0f} clean img/s (eager)", ratio, "speed-up", "> 1x to be worth turning on",
                ratio > 1.0)


def _packed_worker(args: tuple[int, Any, str | None, int, int, str]) -> float:
    rank, barrier, root, n, epochs, device_name = args
    torch.set_num_threads(1)
    device = torch.device(device_name)
    data = load_data(DataCfg(root=root, limit_train=n))
    spec = InputSpec(1, 28, 28, 10, (0.2860,), (0.3530,))
    torch.manual_seed(rank)
    model = prepare_model(build_model("cnn3", spec), device)
    opt = make_optimizer(model.parameters(), TrainCfg(lr=1e-3), device)
    autocast = configure_backends(device)
    train = place(data.train, device)

    def epoch(e: int) -> None:
        train_one_epoch(model, train, opt, batch_size=128, device=device, generator=torch.Generator().manual_seed(e),
                        augment=AugCfg(patch_size=8), aug_generator=make_generator(e, device), autocast=autocast)

    epoch(10**6)  # warm-up: CUDA context, cuDNN autotuning
    _sync(device)
    barrier.wait()
    t0 = time.perf_counter()
    for e in range(epochs):
        epoch(e)
    _sync(device)
    return time.perf_counter() - t0


def packing(device: torch.device, root: str | None, ks: tuple[int, ...] = (1, 2, 4, 8), n: int = 20000,
            epochs: int = 2) -> list[dict[str, Any]]:
    """k concurrent cnn3 fine-tuning processes on one card: aggregate clean images/s (wall, slowest process)."""
    ctx = mp.get_context("spawn")
    rates = {}
    for k in ks:
        with ctx.Manager() as manager:
            barrier = manager.Barrier(k)
            with ctx.Pool(k) as pool:
                secs = pool.map(_packed_worker, [(r, barrier, root, n, epochs, str(device)) for r in range(k)])
        rates[k] = k * n * epochs / max(secs)
    best = max(rates, key=lambda k: rates[k])
    table = ", ".join(f"k={k}: {rates[k]:.0f}" for k in ks)
    return [_row(f"trial packing: {k} cnn3 fine-tuning processes on one card (resources.gpu = {1 / k:g}), "
                 f"{n} F-MNIST images x {epochs} epochs each [{_card(device)}]",
                 f"{rates[k]:.0f} clean img/s aggregate", f"{rates[1]:.0f} img/s (one process alone)",
                 rates[k] / rates[1], "speed-up", ">= 1x (packing pays)", rates[k] >= rates[1],
                 note=("best k here" if k == best else "") + (f"; all: {table}" if k == ks[-1] else ""))
            for k in ks if k > 1]


def gpu_rows(models: dict[str, torch.nn.Module], data: DataBundle, device: torch.device, repeats: int,
             *, root: str | None = None, small: bool = False) -> list[dict[str, Any]]:
    """Every GPU row; `small` shrinks the sizes (a CPU smoke test of this code)."""
    n_eval, batch = (200, 100) if small else (10000, 2000)
    rows = eval_fraction(models, data, device, repeats, n_eval, batch)
    train = data.train.take(slice(0, 512 if small else len(data.train)))
    for b in ((64,) if small else (128, 512)):
        row, _ = finetune_fraction(models["undefended"], train, device, repeats, b,
                                   f"cnn3, {len(train)} F-MNIST images", AugCfg(patch_size=8))
        rows.append(row)
    rows += switches_on_off(device, repeats, n=256 if small else 10000)
    try:
        rows.append(compile_on_off(models["undefended"], train, device, repeats))
    except Exception as exc:  # compile is optional; record why it could not be measured
        rows.append(_row("cnn3 fine-tuning, torch.compile on vs off", "-", "-", float("nan"), "speed-up", "> 1x", False,
                         note=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
    if device.type == "cuda":
        rows += packing(device, root, n=2000 if small else 20000)
    return rows
