"""The one training loop: `patchtune finetune` (`pipeline.finetune`) and a study trial (`trial.run_trial`, in-process,
no Ray) train the same weights, and a resumed trial replays its epochs exactly."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from conftest import spec_of
from trainables.config import AugCfg, MethodCfg, ObjectiveCfg, TrainCfg
from trainables.data import DataBundle
from trainables.models import build_model
from trainables.pipeline import finetune
from trainables.trial import TrialSetup, TrialState, run_trial

CONFIG = {"optimizer": "rmsprop", "lr": 1e-3, "batch_size": 64, "epochs": 2, "seed": 3, "pool": "rotate,noise,occlude",
          "patch_size": 6, "num_patches": 1}


def _small(data: DataBundle) -> DataBundle:
    return DataBundle(data.info, data.train.take(slice(0, 320)), data.val.take(slice(0, 40)), data.test, data.source)


# The paper's patch fine-tuning, and FGSM-RS on clean (+) patch-modified images (an adversarial method; the
# cheapest: the loop is the same for all of them, and test_methods.py checks each method's loss).
METHODS = {"patch": {}, "fgsm_rs+patch": {"method": "fgsm_rs", "augment": True, "train_eps": 0.1}}


def _trial(setup: TrialSetup, config: dict[str, Any],
           resume: TrialState | None = None) -> list[tuple[dict[str, Any], TrialState | None]]:
    reports: list[tuple[dict[str, Any], TrialState | None]] = []
    run_trial(config, setup, report=lambda m, s: reports.append((m, copy.deepcopy(s))), resume=resume,
              device=torch.device("cpu"))
    return reports


@pytest.mark.parametrize("method", list(METHODS))
def test_cli_finetune_and_a_study_trial_train_identical_weights(method: str, trained_cnn3: torch.nn.Module,
                                                                fmnist_small: DataBundle) -> None:
    config = {**CONFIG, **METHODS[method]}
    data = _small(fmnist_small)
    base_state = {k: v.detach().cpu().clone() for k, v in trained_cnn3.state_dict().items()}
    cfg = TrainCfg(optimizer="rmsprop", lr=1e-3, batch_size=64, epochs=2, seed=3)
    aug = AugCfg(pool=("rotate", "noise", "occlude"), patch_size=6)
    base = copy.deepcopy(trained_cnn3).cpu()
    cli_model, _ = finetune(base, {"arch": "cnn3", "dataset": "fmnist", "image_size": None, "data": {}}, data, cfg,
                            MethodCfg(**METHODS[method]), aug, default_eps=0.3, device=torch.device("cpu"),
                            progress=False)

    setup = TrialSetup(arch="cnn3", info=data.info, train=data.train, val=data.val, base_state=base_state,
                       objective=ObjectiveCfg(metric="robust_auc", eps_grid=(0.05,), steps=2).resolved(data.info.name))
    reports = _trial(setup, config)
    assert [m["epoch"] for m, _ in reports] == [1, 2] and all(m["error"] == "" for m, _ in reports)
    # training compute: 320 images and their patch-modified copies per epoch; FGSM-RS: one attack step (a forward
    # and an input-backward pass) before the training step's forward and backward
    fwd, bwd = (1, 1) if method == "patch" else (2, 2)
    assert [(m["cost_fwd_passes"], m["cost_bwd_passes"]) for m, _ in reports] == [(e * 640 * fwd, e * 640 * bwd)
                                                                                  for e in (1, 2)]
    assert 0 < reports[0][0]["cost_device_s"] < reports[1][0]["cost_device_s"]
    assert reports[0][0]["method"] == (config.get("method") or "patch")
    final = reports[-1][1]
    assert final is not None
    for name, weight in cli_model.state_dict().items():
        assert torch.equal(weight, final["model"][name]), f"{name} differs between finetune and the trial"
    moved = any(not torch.equal(base_state[k], v) for k, v in final["model"].items())
    assert moved, "fine-tuning changed the weights"

    # A trial resumed after epoch 1 (node loss, driver crash) replays epoch 2 exactly.
    resumed = _trial(setup, config, resume=reports[0][1])
    assert [m["epoch"] for m, _ in resumed] == [2]
    again = resumed[-1][1]
    assert again is not None
    assert all(torch.equal(v, again["model"][k]) for k, v in final["model"].items())
    assert resumed[-1][0]["objective"] == reports[-1][0]["objective"]
    assert resumed[-1][0]["cost_fwd_passes"] == reports[-1][0]["cost_fwd_passes"]
    assert resumed[-1][0]["cost_device_s"] > reports[0][0]["cost_device_s"]  # counted from the checkpoint on


@pytest.mark.parametrize("from_scratch", [False, True])
def test_finetune_starts_from_the_base_or_from_a_seeded_fresh_init(from_scratch: bool, trained_cnn3: torch.nn.Module,
                                                                  fmnist_small: DataBundle) -> None:
    """`patchtune finetune --from-scratch`: the base's architecture, re-initialised from the run's seed (so the
    same as building it afresh under that seed), not its weights; a tiny lr keeps the weights where they started."""
    from trainables.models import build_model

    data = DataBundle(fmnist_small.info, fmnist_small.train.take(slice(0, 64)), fmnist_small.val.take(slice(0, 20)),
                      fmnist_small.test.take(slice(0, 20)), fmnist_small.source)
    cfg = TrainCfg(lr=1e-12, batch_size=64, epochs=1, seed=5)
    base_state = {k: v.detach().cpu().clone() for k, v in trained_cnn3.state_dict().items()}
    model, meta = finetune(copy.deepcopy(trained_cnn3).cpu(), {"arch": "cnn3", "dataset": "fmnist", "image_size": None,
                                                               "data": {}}, data, cfg, MethodCfg(method="pgd_at"), None,
                           default_eps=0.01, device=torch.device("cpu"), progress=False, from_scratch=from_scratch)
    torch.manual_seed(5)
    fresh = build_model("cnn3", spec_of(data)).state_dict()
    expected = fresh if from_scratch else base_state
    other = base_state if from_scratch else fresh
    got = {k: v.cpu() for k, v in model.state_dict().items()}
    assert all(torch.allclose(got[k], v, atol=1e-6) for k, v in expected.items())
    assert not any(torch.allclose(got[k], v, atol=1e-3) for k, v in other.items() if k.endswith("weight"))
    assert meta["init"] == ("scratch" if from_scratch else "base")


def test_a_trial_that_diverges_reports_the_epoch_it_diverged_in(fmnist_small: DataBundle) -> None:
    """SGD at lr 2 survives its first epoch here and diverges later: the failure is reported as that epoch, so
    results, Tune and the trainable's done.json (keyed by epoch) never overwrite an epoch that finished."""
    data = _small(fmnist_small)
    torch.manual_seed(0)
    model = build_model("cnn3", spec_of(data))
    setup = TrialSetup(arch="cnn3", info=data.info, train=data.train, val=data.val,
                       base_state={k: v.clone() for k, v in model.state_dict().items()},
                       objective=ObjectiveCfg(metric="robust_auc", eps_grid=(0.05,), steps=2).resolved(data.info.name))
    config = {"optimizer": "sgd", "lr": 2.0, "batch_size": 64, "epochs": 4, "seed": 0, "patch_size": 6, "pool": "noise"}
    reports = _trial(setup, config)
    assert reports[-1][0]["error"].startswith("training loss became"), [m["error"] for m, _ in reports]
    assert len(reports) >= 2, "diverged in the first epoch: this config no longer tests a later one"
    assert [m["epoch"] for m, _ in reports] == list(range(1, len(reports) + 1))
    assert reports[-1][1] is None and all(state is not None for _, state in reports[:-1])
