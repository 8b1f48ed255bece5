"""Evaluation settings that might explain the paper's numbers, each scored as its own column.

The paper's Table 1 reports F-MNIST PGD-10 accuracy of 53.7 % after a few epochs of patch fine-tuning; an
honest white-box PGD gives ~0 %. These settings are the usual ways an evaluation goes soft, so the
reproduction reports each beside the white-box number:

    whitebox   the attack on the model itself (the honest number)
    transfer   adversarial examples crafted on the undefended base model, scored on the fine-tuned model
    softmax    the attack's cross-entropy taken on softmax outputs (a double softmax: vanishing gradients)
    trainmode  the attack run with the model in train mode (BatchNorm batch statistics, dropout on)
    normeps    eps read in normalised units, i.e. eps * std in pixels (0.3 -> ~0.11 on F-MNIST)
    ttt        the patch transform also applied at test time; the attack differentiates through one draw
    ttt_eot    the same, attacked with Expectation over Transformation (gradients averaged over draws)

Every setting crafts examples with its own view of the model, then scores the *deployed* model on them:
the plain model in eval mode, or for ttt/ttt_eot the model behind a fresh random transform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.augment import make_generator, patch_augment
from trainables.config import AttackCfg, AttackName, AugCfg
from trainables.evaluation import Probe
from trainables.vocab import Setting, values

VARIANTS = values(Setting)


class SoftmaxOutput(nn.Module):
    """Returns probabilities instead of logits, so an attack's cross-entropy becomes a double softmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x)
        return F.softmax(logits, dim=1)


class AlwaysTrainMode(nn.Module):
    """Ignores `.eval()`: the wrapped model stays in train mode even inside the attack's eval context."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model.train(True)
        return self.model(x)  # type: ignore[no-any-return]


class RandomPatchModel(nn.Module):
    """The model behind the paper's patch transform at test time; `draws` > 1 averages logits (EOT)."""

    def __init__(self, model: nn.Module, aug: AugCfg, generator: torch.Generator, draws: int = 1) -> None:
        super().__init__()
        self.model, self.aug, self.generator, self.draws = model, aug, generator, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.repeat(self.draws, 1, 1, 1)
        logits: torch.Tensor = self.model(patch_augment(xs, self.aug, self.generator))
        return logits.view(self.draws, x.shape[0], -1).mean(0)


def variant_probes(model: nn.Module, base: nn.Module, attacks: list[AttackCfg], *, aug: AugCfg, pixel_std: float,
                   device: torch.device, seed: int, eot_draws: int = 8
                   ) -> tuple[dict[str, AttackCfg | Probe], torch.Generator]:
    """Every (setting, attack) as what the one evaluator scores (`pipeline.evaluate_model`, given the returned
    generator, which the test-time transforms draw from as well): `ttt/clean` (the deployed test-time transform's
    clean accuracy), then per attack the white-box attack and one probe per other setting.

    `whitebox` counts the worst case over iterates (as everywhere else); the other settings score the deployed
    model on the crafted examples' last iterate, and a sample counts as robust only if the deployed model also
    classifies its clean image correctly."""
    generator = make_generator(seed, device)
    deployed_ttt = RandomPatchModel(model, aug, make_generator(seed + 1, device), 1)
    probes: dict[str, AttackCfg | Probe] = {"ttt/clean": Probe(AttackCfg(name=AttackName.CLEAN, eps=1.0),
                                                               judge=deployed_ttt)}
    crafters = {
        "transfer": base,
        "softmax": SoftmaxOutput(model),
        "trainmode": AlwaysTrainMode(model),
        "normeps": model,
        "ttt": RandomPatchModel(model, aug, generator, 1),
        "ttt_eot": RandomPatchModel(model, aug, generator, eot_draws),
    }
    for attack in attacks:
        name = attack.name.value
        probes[f"whitebox/{name}"] = attack
        for variant, crafter in crafters.items():
            cfg = attack
            if variant == "normeps":
                cfg = attack.replace(eps=min(1.0, attack.eps * pixel_std), alpha=min(1.0, attack.alpha * pixel_std))
            probes[f"{variant}/{name}"] = Probe(cfg, crafter=crafter,
                                                judge=deployed_ttt if variant.startswith("ttt") else None)
    return probes, generator

