"""Every speed switch in one place, with why it is on. The CPU path runs the same code with the GPU parts off.

    bf16 autocast     matmuls/convs in bf16 on tensor cores; bf16 has fp32's exponent range, so unlike fp16
                      no GradScaler is needed and attack gradients do not underflow. Losses are taken in fp32.
    TF32              whatever stays fp32 (e.g. outside autocast) still uses tensor cores, ~1e-3 relative error,
                      far inside training and attack noise.
    cudnn.benchmark   shapes are fixed within a run (batch size, image size), so the autotuner's one-off cost
                      buys the fastest conv algorithm for every later step.
    channels_last     NHWC is the tensor-core-native conv layout: VGG-16's convs skip two transposes per layer.
                      On CPU too: oneDNN's NHWC max-pooling is ~5x faster than torch's NCHW kernel, so a
                      cnn3 forward+backward runs ~1.5x faster at one thread (VGG-16: unchanged, 1.01x).
    fused optimizers  Adam/AdamW/SGD step as one kernel over all parameters instead of one per tensor; RMSprop
                      has no fused kernel in torch and uses foreach (one kernel per op over all tensors), as
                      does everything on CPU.
    resident data     the whole uint8 data set lives on the trial's GPU (F-MNIST 47 MB, CIFAR-10 150 MB,
                      Imagenette-160 ~730 MB): a batch is one gather, with no loader workers and no host copy;
                      when it does not fit in `resident_fraction` of free memory, pinned host memory instead,
                      so the per-batch copy is asynchronous.
    torch.compile     optional (`PATCHTUNE_COMPILE=1`, or a mode such as `reduce-overhead`, which also replays
                      the step as CUDA graphs): on an H200, cnn3 fine-tuning ran 1.16x faster with
                      `reduce-overhead` and 0.83x with the default mode; the compile time (5-15 s there)
                      only pays off on long runs.
    eval batch        on GPU, evaluation attacks take as many images per batch as ~8 M input values allow
                      (F-MNIST 10000, CIFAR-10 2604, Imagenette-160 128): at batch 2000 cnn3's PGD is bound
                      by the host dispatching kernels, not by the card, so bigger batches buy throughput
                      (H200, undefended cnn3: 1.88x at batch 5000 over batch 2000; benchmarks/README.md).
    CUDA graphs       opt-in (`PATCHTUNE_GRAPHS=1`): evaluation attacks on full batches replay as one captured
                      graph (trainables/graphs.py). A graph cannot drop the samples it has already fooled, so
                      it always does every step's arithmetic and tops out near 75k cnn3 img/s on an H200; the
                      eager loop, which stops spending compute on fooled samples, is faster from batch 5000 on
                      an undefended model (graphs 1.15x and 1.21x at batch 2000 and 5000, eager 1.88x at 5000).
    compact_every     PGD drops samples it has already fooled from the batch; finding them needs one
                      device->host sync, so on GPU that happens after steps 1 and 2 (where most samples
                      fall) and then every 4 steps, instead of every step.

`PATCHTUNE_PERF=off` turns the switches off (for A/B timings and for debugging numerical differences).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from trainables.vocab import ConfigError

Autocast = Callable[[], AbstractContextManager[object]]
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


@dataclasses.dataclass(frozen=True)
class PerfCfg:
    bf16: bool = True
    tf32: bool = True
    cudnn_benchmark: bool = True
    channels_last: bool = True
    fused_optimizers: bool = True
    resident_data: bool = True
    resident_fraction: float = 0.5  # at most this share of the device's free memory goes to the data set
    compile: str = ""  # a torch.compile mode ("default", "reduce-overhead", ...); "" = eager
    cuda_graphs: bool = False
    eval_values: int = 8_000_000  # input values per evaluation batch on GPU
    compact_every_gpu: int = 4

    @classmethod
    def from_env(cls) -> PerfCfg:
        if os.environ.get("PATCHTUNE_PERF", "").lower() == "off":
            return cls(bf16=False, tf32=False, cudnn_benchmark=False, channels_last=False, fused_optimizers=False,
                       resident_data=False, compile="", cuda_graphs=False, compact_every_gpu=1)
        raw = os.environ.get("PATCHTUNE_COMPILE", "")
        mode = {"1": "default", "0": ""}.get(raw, raw)
        if mode not in COMPILE_MODES:
            raise ConfigError(f"PATCHTUNE_COMPILE={raw!r} is not one of 0, 1, " + ", ".join(m for m in COMPILE_MODES if m))
        return cls(compile=mode,
                   cuda_graphs=os.environ.get("PATCHTUNE_GRAPHS", "") == "1")


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def configure(device: torch.device, perf: PerfCfg | None = None) -> Autocast:
    """Set the global backend switches for `device`; returns the autocast factory the loops use."""
    perf = perf or PerfCfg.from_env()
    if not is_cuda(device):
        return nullcontext  # CPU: fp32. bf16 autocast on CPU is slower than fp32 for these small convs.
    torch.backends.cudnn.benchmark = perf.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = perf.tf32
    torch.backends.cudnn.allow_tf32 = perf.tf32
    if not perf.bf16:
        return nullcontext
    # No weight-cast cache: it only lives for one autocast region (one forward) anyway, and a CUDA graph
    # capture must not keep cached casts across its boundary.
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)


def _nhwc(device: torch.device, perf: PerfCfg) -> bool:
    return perf.channels_last and device.type in ("cuda", "cpu")


def prepare_model(model: nn.Module, device: torch.device, perf: PerfCfg | None = None) -> nn.Module:
    """Move to `device` (in place, like `.to`), channels_last on CUDA and CPU. Returns the same module."""
    perf = perf or PerfCfg.from_env()
    model.to(device)
    if _nhwc(device, perf):
        model.to(memory_format=torch.channels_last)
    return model


def input_layout(device: torch.device, perf: PerfCfg | None = None) -> torch.memory_format:
    """The memory format batches take on `device`: the one `prepare_model` gives the models."""
    perf = perf or PerfCfg.from_env()
    return torch.channels_last if _nhwc(device, perf) else torch.contiguous_format


def maybe_compile(model: nn.Module, device: torch.device, perf: PerfCfg | None = None) -> nn.Module:
    """The module the training step calls: compiled when asked (it shares the parameters, so checkpoints
    keep saving the plain module). Attacks keep the plain module: their shrinking batches would recompile."""
    perf = perf or PerfCfg.from_env()
    if is_cuda(device) and perf.compile:
        return torch.compile(model, mode=perf.compile)  # type: ignore[return-value]
    return model


def use_graphs(device: torch.device, perf: PerfCfg | None = None) -> bool:
    perf = perf or PerfCfg.from_env()
    return is_cuda(device) and perf.cuda_graphs


def eval_batch(device: torch.device, image_values: int, perf: PerfCfg | None = None) -> int:
    """Images per evaluation-attack batch: 500 on CPU; on GPU as many as `eval_values` input values allow,
    between 128 and 10000."""
    perf = perf or PerfCfg.from_env()
    if not is_cuda(device):
        return 500
    return max(128, min(10000, perf.eval_values // max(image_values, 1)))


def optimizer_kwargs(device: torch.device, perf: PerfCfg | None = None) -> dict[str, bool]:
    perf = perf or PerfCfg.from_env()
    if is_cuda(device) and perf.fused_optimizers:
        return {"fused": True}
    return {"foreach": True}


def compact_every(device: torch.device, perf: PerfCfg | None = None) -> int:
    perf = perf or PerfCfg.from_env()
    return perf.compact_every_gpu if is_cuda(device) else 1


def fits_on(device: torch.device, nbytes: int, perf: PerfCfg | None = None) -> bool:
    """Whether `nbytes` of data may live on `device` (always true for the CPU)."""
    perf = perf or PerfCfg.from_env()
    if not is_cuda(device):
        return True
    if not perf.resident_data:
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= perf.resident_fraction * free


# ------------------------------------------------------------------------------------------- device set-up


def pick_device(name: str | None = None) -> torch.device:
    """`auto`/None -> the first CUDA device when present, else CPU. `$TORCH_DEVICE` overrides `auto`."""
    name = name or os.environ.get("TORCH_DEVICE") or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def configure_backends(device: torch.device, *, exact: bool = False) -> Autocast:
    """All global speed switches for `device` (the `PATCHTUNE_PERF` environment); returns the autocast factory.

    `exact`: fp32 throughout (no bf16 autocast, no TF32), for the numbers a report quotes (the test split, the
    audit). bf16 input gradients move attacks' per-sample outcomes: PGD-100 at eps 0.3 on 1000 F-MNIST test
    images of an eps-0.3 PGD-AT cnn3, with CPU bf16 autocast, left 19 samples robust that fp32 broke and broke 7
    that fp32 left (66.4 vs 65.2 %; 8 and 13 on another). A search can afford that noise; a final number need
    not carry it."""
    cfg = PerfCfg.from_env()
    if exact:
        cfg = dataclasses.replace(cfg, bf16=False, tf32=False)
    return configure(device, cfg)

