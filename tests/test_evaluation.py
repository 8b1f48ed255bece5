"""The one per-sample robust-mask loop (trainables/evaluation.py): robust <= clean, reproducible, the nested eps
curve, and probes (examples crafted on another model, judged by the deployed one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.config import AttackCfg, AttackName, paper_attacks
from trainables.evaluation import Linf, Probe, accuracies, evaluate, robust_masks


def test_evaluate_robust_at_most_clean_and_reproducible(trained_cnn3, fmnist_small, device) -> None:
    attacks = paper_attacks(fmnist_small.info.name) + [AttackCfg(name="pgd", eps=0.03, alpha=0.01, steps=5)]
    test = fmnist_small.test.take(slice(0, 120))
    a = evaluate(trained_cnn3, test, attacks, device=device, batch_size=64, seed=1)
    b = evaluate(trained_cnn3, test, attacks, device=device, batch_size=100, seed=1)
    assert set(a) == {"clean", "fgsm", "ifgsm10", "pgd10", "pgd5"}
    assert all(0 <= v <= a["clean"] for v in a.values())
    assert a["clean"] > 0.7 and a["pgd10"] < a["clean"] - 0.3 and a["pgd5"] < a["clean"]
    assert a["clean"] == b["clean"] and a["fgsm"] == b["fgsm"] and a["ifgsm10"] == b["ifgsm10"]


def _counting(model: nn.Module) -> tuple[nn.Module, list[int]]:
    """`model` behind a counter of the images each forward pass sees."""
    seen: list[int] = []

    class Counted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return self.inner(x)

    return Counted(), seen


def test_nested_eps_curve_attacks_only_survivors_and_is_never_weaker(trained_cnn3, fmnist_small, device) -> None:
    """The eps grid in one pass: samples broken at a smaller eps are not attacked again at a larger one. The
    curve is the worst case over the chain, so it is never above per-eps PGD beyond sampling noise, is
    non-increasing in eps, and costs fewer forward passes."""
    val = fmnist_small.val.take(slice(0, 150))
    attacks = {f"eps{e:g}": AttackCfg(name="pgd", eps=e, alpha=2.5 * e / 5, steps=5) for e in (0.1, 0.02, 0.05)}
    runs = {}
    for nested in ((), tuple(attacks)):
        counted, seen = _counting(trained_cnn3)
        runs[bool(nested)] = accuracies(robust_masks(counted, val, attacks, device=device, seed=2, nested=nested)), sum(seen)
    (fast, fast_passes), (slow, slow_passes) = runs[True], runs[False]
    assert fast["eps0.02"] >= fast["eps0.05"] >= fast["eps0.1"]
    for key in attacks:
        assert fast[key] <= slow[key] + 0.04, (key, fast, slow)  # 150 images: a few flips of random starts
    assert slow["eps0.05"] > 0 and fast_passes < slow_passes, (fast_passes, slow_passes)
    with pytest.raises(ValueError, match="eps9"):
        robust_masks(trained_cnn3, val, attacks, device=device, nested=("eps9",))


def test_probes_craft_on_one_model_and_judge_on_another(trained_cnn3, fmnist_small, device) -> None:
    """A probe crafted on the model itself equals the white-box attack counted at its last iterate; crafted on a
    different model it transfers; judged by another model, that model's clean mistakes are never robust; a
    CLEAN probe is the judge's clean accuracy. `linf` measures the returned examples."""
    import copy

    val = fmnist_small.val.take(slice(0, 100))
    attack = AttackCfg(name="pgd", eps=0.1, alpha=0.025, steps=10, last_iterate=True)
    other = copy.deepcopy(trained_cnn3)
    noise = torch.Generator().manual_seed(0)  # the global RNG's state depends on which tests ran before
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=noise).to(p))
    sizes: dict[str, Linf] = {}
    masks = robust_masks(trained_cnn3, val, {"white": attack, "self": Probe(attack, crafter=trained_cnn3),
                                             "transfer": Probe(attack, crafter=other),
                                             "judged": Probe(attack, judge=other),
                                             "other_clean": Probe(AttackCfg(name=AttackName.CLEAN, eps=1.0), judge=other)},
                         device=device, seed=5, linf=sizes)
    acc = accuracies(masks)
    assert acc["white"] < acc["transfer"] <= acc["clean"]  # transferred examples are weaker
    other_right = masks["other_clean"]
    assert not (masks["judged"] & ~other_right).any() and acc["other_clean"] > 0.4  # a classifier, not chance
    assert 0.09 < sizes["white"].max_linf <= 0.1 + 1e-6 and sizes["transfer"].max_linf <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="white-box attacks only"):
        robust_masks(trained_cnn3, val, {"t": Probe(attack, crafter=other)}, device=device, nested=("t",))
