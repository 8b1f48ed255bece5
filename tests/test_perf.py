"""Speed switches (trainables.perf): one place, the same code path on CPU with the GPU parts off."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from trainables import perf
from trainables.config import Optimizer, TrainCfg
from trainables.data import Split, iterate_batches, place
from trainables.models import InputSpec, build_model
from trainables.training import make_optimizer
from trainables.vocab import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SPEC = InputSpec(3, 32, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _split(n: int = 64) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_cpu_path_has_the_gpu_parts_off() -> None:
    cpu = torch.device("cpu")
    assert perf.configure(cpu) is nullcontext and perf.compact_every(cpu) == 1  # fp32 on CPU
    assert perf.optimizer_kwargs(cpu) == {"foreach": True} and perf.fits_on(cpu, 10**15)
    split = _split()
    assert place(split, cpu) is split  # no copy when the data already lives there
    model = perf.prepare_model(build_model("vgg16", SPEC), cpu)
    assert model is perf.maybe_compile(model, cpu)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # NHWC on CPU too (oneDNN max-pooling)
    assert perf.input_layout(cpu) is torch.channels_last
    for name in Optimizer:
        opt = make_optimizer(model.parameters(), TrainCfg(optimizer=name, lr=1e-3), cpu)
        assert not opt.defaults.get("fused")


def test_final_numbers_are_fp32_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports (test split, audit) run without bf16 autocast or TF32; the search keeps them. Only the switches
    are read, so no GPU is needed."""
    from trainables.perf import configure_backends

    monkeypatch.delenv("PATCHTUNE_PERF", raising=False)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark  # global switches: restored below
    try:
        gpu = torch.device("cuda")
        fast = configure_backends(gpu)
        assert fast is not nullcontext and cudnn.allow_tf32 and matmul.allow_tf32  # the bf16 autocast factory
        assert configure_backends(gpu, exact=True) is nullcontext
        assert not cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = saved


def test_perf_off_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHTUNE_PERF", "off")
    cfg = perf.PerfCfg.from_env()
    assert not (cfg.bf16 or cfg.channels_last or cfg.fused_optimizers or cfg.resident_data or cfg.compile)
    assert cfg.compact_every_gpu == 1
    conv = perf.prepare_model(build_model("cnn3", SPEC), torch.device("cpu")).get_submodule("1.0")
    assert conv.weight.is_contiguous() and perf.input_layout(torch.device("cpu")) is torch.contiguous_format
    monkeypatch.setenv("PATCHTUNE_PERF", "")
    monkeypatch.setenv("PATCHTUNE_COMPILE", "1")
    assert perf.PerfCfg.from_env().compile == "default" and perf.PerfCfg.from_env().bf16
    monkeypatch.setenv("PATCHTUNE_COMPILE", "reduce-overhead")
    assert perf.PerfCfg.from_env().compile == "reduce-overhead"
    monkeypatch.setenv("PATCHTUNE_COMPILE", "fast")
    with pytest.raises(ConfigError, match="PATCHTUNE_COMPILE='fast'"):
        perf.PerfCfg.from_env()
    monkeypatch.setenv("PATCHTUNE_COMPILE", "")
    assert not perf.PerfCfg.from_env().cuda_graphs  # opt-in
    monkeypatch.setenv("PATCHTUNE_GRAPHS", "1")
    assert perf.use_graphs(torch.device("cuda")) and not perf.use_graphs(torch.device("cpu"))


def test_evaluation_batches_grow_on_gpu_with_the_image_size_bounded() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert perf.eval_batch(cpu, 28 * 28) == 500
    assert perf.eval_batch(cuda, 28 * 28) == 10000  # F-MNIST: capped
    assert perf.eval_batch(cuda, 3 * 32 * 32) == 8_000_000 // 3072  # CIFAR-10
    assert perf.eval_batch(cuda, 3 * 160 * 160) == 128  # Imagenette-160: floored


@cuda
def test_gpu_switches_and_resident_data() -> None:
    dev = torch.device("cuda")
    autocast = perf.configure(dev)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    model = perf.prepare_model(build_model("vgg16", SPEC), dev)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    split = place(_split(), dev)
    assert split.x.is_cuda and split.x.dtype == torch.uint8  # resident, still uint8 (4x smaller than float)
    x, y = next(iterate_batches(split, 32, dev, shuffle=True, generator=torch.Generator().manual_seed(0)))
    with autocast():
        out = model(x)
    assert out.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), TrainCfg(optimizer=Optimizer.ADAM, lr=1e-3), dev)
    assert opt.defaults.get("fused") is True


@cuda
def test_pinned_fallback_when_the_data_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = torch.device("cuda")
    monkeypatch.setattr(perf, "fits_on", lambda device, nbytes, cfg=None: False)
    split = place(_split(), dev)
    assert not split.x.is_cuda and split.x.is_pinned()
    x, _ = next(iterate_batches(split, 16, dev))
    assert x.is_cuda
