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
  - CUDA graphs on vs off for PGD-10 evaluation (trainables/graphs.py) at two batch sizes, against today's
    eager loop at batch 2000; torch.compile modes for fine-tuning.
  - The limits as arithmetic: FLOPs per image (counted by torch's FlopCounterMode) times img/s, against the
    card's bf16 matrix rate measured in the same run, for cnn3 and VGG-16.
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
from trainables.evaluation import evaluate
from trainables.graphs import GraphedAttack
from trainables.models import InputSpec, build_model
from trainables.perf import Autocast, configure_backends, input_layout, prepare_model
from trainables.training import make_optimizer, train_one_epoch


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
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


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
        loss.backward()  # type: ignore[no-untyped-call]
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


def switches_on_off(device: torch.device, repeats: int, n: int = 10000, batch: int = 128) -> list[dict[str, Any]]:
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
        row, rate = finetune_fraction(vgg, split, device, repeats, batch, "VGG-16 at 3x32x32", AugCfg(patch_size=10))
        row["row"] += f", switches {mode}"
        rows.append(row)
        rates[mode] = rate
    os.environ["PATCHTUNE_PERF"] = ""
    rows.append(_row(f"VGG-16 fine-tuning, trainables/perf.py switches on vs off (bf16, channels_last, fused Adam, "
                     f"resident data) [{_card(device)}]", f"{rates['on']:.0f} clean img/s",
                     f"{rates['off']:.0f} clean img/s (fp32, NCHW, foreach, host data)", rates["on"] / rates["off"],
                     "speed-up", ">= 1.5x", rates["on"] / rates["off"] >= 1.5))
    return rows


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


def bf16_peak(device: torch.device) -> float:
    """The card's dense bf16 matrix rate in FLOP/s (an 8192^3 product on random data; 1024^3 off the GPU)."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / device_time(lambda: a @ b, device, repeats=10, warmup=3)


def flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """FLOPs per image of one forward pass and of PGD-10's passes (11 fwd + 10 input-bwd), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(4, *shape, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    forward = counter.get_total_flops() / 4
    # An attack's backward pass needs the input gradient only: freeze the weights and count one backward.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        xa = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xa).float(), torch.zeros(4, dtype=torch.long, device=device))
        with FlopCounterMode(display=False) as counter:
            loss.backward()  # type: ignore[no-untyped-call]
        input_backward = counter.get_total_flops() / 4
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {"forward": forward, "input_backward": input_backward, "pgd10": 11 * forward + 10 * input_backward}


def graphs_on_off(model: torch.nn.Module, data: DataBundle, device: torch.device, repeats: int, n: int,
                  batches: tuple[int, ...], peak: float) -> list[dict[str, Any]]:
    """cnn3 PGD-10 evaluation (the whole `evaluate`, clean pass included): CUDA graphs off/on per batch size,
    every rate against today's eager loop at the first batch size."""
    autocast = configure_backends(device)
    test = place(data.test.take(slice(0, n)), device)
    attack = AttackCfg(name="pgd", eps=0.3, alpha=0.01, steps=10)
    flops = flops_per_image(model, (1, 28, 28), device)["pgd10"]
    rates: dict[tuple[str, int], tuple[float, float]] = {}
    for batch in batches:
        for graphs in ("0", "1"):
            os.environ["PATCHTUNE_GRAPHS"] = graphs
            acc: dict[str, float] = {}

            def ours() -> None:
                acc.update(evaluate(model, test, [attack], device=device, batch_size=batch, seed=0, autocast=autocast))

            rates[(graphs, batch)] = (n / device_time(ours, device, repeats, warmup=1), acc["pgd10"])
    os.environ["PATCHTUNE_GRAPHS"] = ""
    today = rates[("0", batches[0])][0]
    rows = []
    for (graphs, batch), (rate, robust) in rates.items():
        if (graphs, batch) == ("0", batches[0]):
            continue
        label = "CUDA graphs" if graphs == "1" else "eager"
        rows.append(_row(f"cnn3 PGD-10 eval (eps 0.3, alpha 0.01), {label}, batch {batch}, vs today's eager loop at batch "
                         f"{batches[0]}, {n} F-MNIST test images [{_card(device)}]",
                         f"{rate:.0f} img/s (robust acc {100 * robust:.2f} %; {rate * flops / 1e12:.2f} TFLOP/s = "
                         f"{rate * flops / peak:.2%} of the card's bf16 rate)",
                         f"{today:.0f} img/s (robust acc {100 * rates[('0', batches[0])][1]:.2f} %)", rate / today,
                         "speed-up", ">= 2x", rate / today >= 2))
    return rows


def vgg_pgd(device: torch.device, repeats: int, peak: float, batch: int = 512) -> list[dict[str, Any]]:
    """VGG-16 PGD-10 at 3x32x32 (random weights and images: every sample is attacked for all 10 steps, the
    most work an evaluation can do), as a fraction of the card's bf16 matrix rate."""
    autocast = configure_backends(device)
    spec = InputSpec(3, 32, 32, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    torch.manual_seed(0)
    vgg = prepare_model(build_model("vgg16", spec), device).eval()
    flops = flops_per_image(vgg, (3, 32, 32), device)
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=input_layout(device))
    y = torch.randint(0, 10, (batch,), device=device)
    attack = AttackCfg(name="pgd", eps=8 / 255, alpha=2 / 255, steps=10, last_iterate=True)
    rows = []
    t_bare = device_time(pgd_limit(vgg, x, y, 10, autocast), device, repeats)
    arms = {"bare passes, eager": batch / t_bare}
    if device.type == "cuda":
        graph = GraphedAttack(vgg, attack, x, autocast)
        arms["whole attack as a CUDA graph"] = batch / device_time(lambda: graph(x, y), device, repeats)
    for label, rate in arms.items():
        frac = rate * flops["pgd10"] / peak
        rows.append(_row(f"VGG-16 PGD-10 at 3x32x32, batch {batch}, {label} [{_card(device)}]",
                         f"{rate:.0f} img/s x {flops['pgd10'] / 1e9:.1f} GFLOP/img (fwd {flops['forward'] / 1e9:.2f}) "
                         f"= {rate * flops['pgd10'] / 1e12:.0f} TFLOP/s",
                         f"card's bf16 matrix rate {peak / 1e12:.0f} TFLOP/s (8192^3 product, same run)", frac,
                         "fraction of the bf16 rate", "stated", True))
    return rows


def compile_modes(model: torch.nn.Module, train: Split, device: torch.device, repeats: int,
                  batch: int = 256) -> list[dict[str, Any]]:
    """cnn3 fine-tuning, batch 256+256, eager vs each torch.compile mode (compile time outside the timing)."""
    rates, notes = {}, {}
    for mode in ("", "default", "reduce-overhead"):
        os.environ["PATCHTUNE_COMPILE"] = mode or "0"
        try:
            autocast = configure_backends(device)
            m = prepare_model(copy.deepcopy(model), device)
            opt = make_optimizer(m.parameters(), TrainCfg(lr=1e-4), device)
            from trainables.perf import maybe_compile

            step = maybe_compile(m, device)
            data = place(train, device)

            def epoch(m: torch.nn.Module = m, opt: torch.optim.Optimizer = opt, step: torch.nn.Module = step) -> None:
                train_one_epoch(m, data, opt, batch_size=batch, device=device, generator=torch.Generator().manual_seed(0),
                                augment=AugCfg(patch_size=8), aug_generator=make_generator(1, device),
                                autocast=autocast, step_model=step, drop_last=True)

            t0 = time.perf_counter()
            epoch()  # warm-up (compilation) outside the timing
            _sync(device)
            notes[mode] = f"compile {time.perf_counter() - t0:.0f} s" if mode else ""
            rates[mode] = len(train) / device_time(epoch, device, repeats, warmup=0)
        except Exception as exc:  # a mode that fails here is recorded, not fatal
            notes[mode] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    os.environ["PATCHTUNE_COMPILE"] = ""
    eager = rates.get("", float("nan"))
    return [_row(f"cnn3 fine-tuning, torch.compile mode={mode} vs eager, batch {batch}+{batch} [{_card(device)}]",
                 f"{rates.get(mode, float('nan')):.0f} clean img/s ({notes[mode]}, outside the timing)",
                 f"{eager:.0f} clean img/s (eager)", rates.get(mode, float("nan")) / eager, "speed-up",
                 "> 1x to be worth turning on", rates.get(mode, 0.0) > eager) for mode in ("default", "reduce-overhead")]


SECTIONS = ("fraction", "graphs", "vgg", "switches", "compile", "packing")


def gpu_rows(models: dict[str, torch.nn.Module], data: DataBundle, device: torch.device, repeats: int,
             *, root: str | None = None, small: bool = False,
             sections: tuple[str, ...] = SECTIONS) -> list[dict[str, Any]]:
    """The GPU rows of `sections`; `small` shrinks the sizes (a CPU smoke test of this code). Each row is
    printed as it is measured, and a section that fails is recorded as a row, so a run cut short by a lease
    keeps what it measured."""
    n_eval, batch = (48, 16) if small else (10000, 2000)
    train = data.train.take(slice(0, 128 if small else len(data.train)))
    undefended = models["undefended"]
    peak = bf16_peak(device)
    print(f"bf16 matrix rate: {peak / 1e12:.1f} TFLOP/s [{_card(device)}]", flush=True)

    def fraction() -> list[dict[str, Any]]:
        rows = eval_fraction(models, data, device, repeats, n_eval, batch)
        for b in ((64,) if small else (128, 512)):
            rows.append(finetune_fraction(undefended, train, device, repeats, b, f"cnn3, {len(train)} F-MNIST images",
                                          AugCfg(patch_size=8))[0])
        return rows

    run: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "fraction": fraction,
        "graphs": lambda: graphs_on_off(undefended, data, device, repeats, n_eval, (batch, 5 * batch // 2, 5 * batch), peak),
        "vgg": lambda: vgg_pgd(device, repeats, peak, batch=2 if small else 512),
        "switches": lambda: switches_on_off(device, repeats, *((8, 4) if small else (10000, 128))),
        "compile": lambda: compile_modes(undefended, train, device, repeats, batch=32 if small else 256),
        "packing": lambda: packing(device, root, n=2000 if small else 20000) if device.type == "cuda" else [],
    }
    rows: list[dict[str, Any]] = []
    for name in sections:
        try:
            new = run[name]()
        except Exception as exc:  # record why a section could not be measured, and go on
            new = [_row(f"GPU section {name!r}", "-", "-", float("nan"), "-", "-", False,
                        note=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")]
        for r in new:
            print(f"ROW | {r['row']} | {r['ours']} | {r['peer']} | {r['ratio']:.2f}x {r['note']}", flush=True)
        rows += new
    return rows
