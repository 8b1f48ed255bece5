"""The one training loop (trainables/training.py): optimizers by name, learning, the plateau schedule, divergence."""

from __future__ import annotations

import pytest
import torch

from conftest import spec_of
from trainables.config import AugCfg, Optimizer, TrainCfg
from trainables.evaluation import evaluate
from trainables.models import build_model
from trainables.training import DivergedError, Stream, epoch_generator, fit, make_optimizer


@pytest.mark.parametrize("name", list(Optimizer))
def test_optimizers_by_name(name: Optimizer) -> None:
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(p, TrainCfg(optimizer=name, lr=0.1))
    expected = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD", "adamw": "AdamW"}[name.value]
    assert type(opt).__name__ == expected and opt.param_groups[0]["lr"] == 0.1


def test_fit_learns_and_schedule_reduces_lr(fmnist_small, device) -> None:
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(fmnist_small)).to(device)
    cfg = TrainCfg(epochs=3, lr=1e-3, batch_size=64, plateau_patience=1)
    hist = fit(model, fmnist_small.train.take(slice(0, 1500)), fmnist_small.val, cfg, device=device, schedule=True,
               progress=False)
    assert len(hist) == 3 and hist[-1].train_loss < hist[0].train_loss
    assert hist[-1].val_acc > 0.6


def test_finetune_with_augmentation_keeps_accuracy(trained_cnn3, fmnist_small, device) -> None:
    import copy

    model = copy.deepcopy(trained_cnn3)
    base = evaluate(model, fmnist_small.test, [], device=device)["clean"]
    fit(model, fmnist_small.train.take(slice(0, 2000)), fmnist_small.val, TrainCfg(epochs=1, lr=1e-3, batch_size=64),
        device=device, augment=AugCfg(patch_size=8), progress=False)
    after = evaluate(model, fmnist_small.test, [], device=device)["clean"]
    assert after > base - 0.05


def test_absurd_lr_diverges_loudly(fmnist_small, device) -> None:
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(fmnist_small)).to(device)
    with pytest.raises(DivergedError, match="non-finite|nan|inf"):
        fit(model, fmnist_small.train.take(slice(0, 640)), fmnist_small.val, TrainCfg(epochs=2, lr=10.0, optimizer="sgd",
            batch_size=64), device=device, progress=False)


def test_epoch_streams_are_independent_and_reproducible() -> None:
    def draw(seed: int, epoch: int, stream: Stream) -> torch.Tensor:
        return torch.rand(8, generator=epoch_generator(seed, epoch, stream))

    assert torch.equal(draw(0, 1, Stream.AUGMENT), draw(0, 1, Stream.AUGMENT))
    samples = [draw(s, e, k) for s in (0, 1) for e in (0, 1) for k in Stream]
    # No two (seed, epoch, stream) share a stream: the old `seed * 1000 + epoch` scheme made epoch e's augmentation
    # stream equal epoch e+1's batch order.
    assert len({tuple(x.tolist()) for x in samples}) == len(samples)
