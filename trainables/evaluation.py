"""Evaluation (no Ray): clean accuracy, and the one per-sample robust-mask loop every robustness number comes from.

`robust_masks` scores a model on a split under named attacks: per sample, correct on the clean image and not
fooled by any counted iterate. Attacks run only on the samples the model gets right, so robust <= clean sample
by sample. A `Probe` scores an attack another way: examples crafted on another model (transfer from a base, a
softmax-output or train-mode view of the model, a random test-time transform) and judged by the deployed model.
Study trials (trainables/scoring.py), `patchtune eval`, the audit's rows and checks (trainables/audit) and the
reproduction's evaluation settings (trainables/variants.py) all run through it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trainables import perf
from trainables.attacks import eval_mode, run_attack
from trainables.augment import make_generator
from trainables.config import AttackCfg, AttackName
from trainables.data import Split, iterate_batches, place
from trainables.graphs import graphed
from trainables.perf import Autocast

__all__ = ["Linf", "Probe", "accuracies", "evaluate", "evaluate_clean", "robust_accuracy", "robust_masks"]


@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
    """An attack scored another way than white-box on the model itself: its examples are crafted on `crafter`
    (their last iterate) and judged by `judge`, the deployed model (default: the evaluated model). A sample
    counts as robust when `judge` gets its clean image and the example right. A CLEAN probe is the judge's
    clean accuracy."""

    attack: AttackCfg
    crafter: nn.Module | None = None
    judge: nn.Module | None = None


@dataclasses.dataclass
class Linf:
    """The size of the examples an attack returned: the largest |x_adv - x| over all of them (inf if any was
    not finite) and over those the model survived (None when none did)."""

    max_linf: float = 0.0
    survivor_max_linf: float | None = None

    def add(self, x: torch.Tensor, x_adv: torch.Tensor, survived: torch.Tensor) -> None:
        if not x.shape[0]:
            return
        delta = (x_adv - x).flatten(1).abs().amax(1)
        self.max_linf = max(self.max_linf, float(delta.max()) if bool(torch.isfinite(x_adv).all()) else math.inf)
        if bool(survived.any()):
            self.survivor_max_linf = max(self.survivor_max_linf or 0.0, float(delta[survived].max()))


Images = Split | tuple[torch.Tensor, torch.Tensor]  # uint8 images, or float batches already on the device


def _batches(data: Images, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, Split):
        yield from iterate_batches(data, batch_size, device)
        return
    x, y = data
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def robust_masks(
    model: nn.Module,
    data: Images,
    attacks: Mapping[str, AttackCfg | Probe],
    *,
    device: torch.device,
    batch_size: int | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    autocast: Autocast = nullcontext,
    progress: bool = False,
    nested: Collection[str] = (),
    linf: dict[str, Linf] | None = None,
) -> dict[str, torch.Tensor]:
    """Per sample (bool [N], on the CPU): `clean` correct, and robust under each named attack or probe.

    `data`: a Split, or float images and labels already on the device. The random starts come from `generator`
    (default: a new one seeded `seed`), drawn in a fixed order, so the result is reproducible. `batch_size`
    defaults to `perf.eval_batch` (500 on CPU, thousands on GPU). With CUDA graphs on, full batches of white-box
    attacks are attacked whole by a replayed graph (trainables/graphs.py) and the result ANDed with clean
    correctness. `linf`, when given, gains each key's `Linf`.

    `nested`: keys of white-box L-inf attacks that form one accuracy-vs-eps curve. They run in ascending eps, and a
    sample broken at a smaller eps counts as broken at every larger one without being attacked again (its
    adversarial example lies in every larger ball): only the survivors are attacked. Each such mask is then
    the worst case over its own attack and every smaller-eps one, never weaker than the attack alone.
    """
    generator = generator or make_generator(seed, device)
    graphs = perf.use_graphs(device)
    if isinstance(data, Split):
        data = place(data, device)
        shape = data.x.shape[1:]
    else:
        shape = data[0].shape[1:]
    batch_size = batch_size or perf.eval_batch(device, math.prod(shape))
    probes = {k: a if isinstance(a, Probe) else Probe(a) for k, a in attacks.items()}
    unknown = set(nested) - set(probes)
    if unknown:
        raise ValueError(f"nested keys {sorted(unknown)} are not among the attacks {list(probes)}")
    if any(probes[k].crafter is not None or probes[k].judge is not None for k in nested):
        raise ValueError("a nested eps curve takes white-box attacks only")
    # The chain first, smallest eps first; the order also fixes which random starts each attack draws.
    order = sorted((k for k in probes if k in nested), key=lambda k: probes[k].attack.eps)
    order += [k for k in probes if k not in nested]
    judges = {id(p.judge): p.judge for p in probes.values() if p.judge is not None}
    masks: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", *probes)}
    with eval_mode(model):
        total = math.ceil((len(data) if isinstance(data, Split) else data[0].shape[0]) / batch_size)
        for x, y in tqdm(_batches(data, batch_size, device), total=total, desc="eval", unit="batch", leave=False,
                         disable=not progress):
            with torch.no_grad(), autocast():
                ok = model(x).argmax(1) == y
                judged_ok = {j: judge(x).argmax(1) == y for j, judge in judges.items()}
            masks["clean"].append(ok)
            broken = ~ok  # along the chain: clean-wrong, or broken at a smaller eps
            for key in order:
                probe = probes[key]
                right = ok if probe.judge is None else judged_ok[id(probe.judge)]
                alive = right & ~broken if key in nested else right
                robust = _robust(model, probe, x, y, alive, generator, autocast, graphs, batch_size,
                                 linf.setdefault(key, Linf()) if linf is not None else None)
                if key in nested:
                    broken |= alive & ~robust
                masks[key].append(robust)
    empty = torch.zeros(0, dtype=torch.bool)
    return {k: torch.cat(v).cpu() if v else empty for k, v in masks.items()}  # one sync, at the end


def _robust(model: nn.Module, probe: Probe, x: torch.Tensor, y: torch.Tensor, alive: torch.Tensor,
            generator: torch.Generator, autocast: Autocast, graphs: bool, batch_size: int,
            linf: Linf | None) -> torch.Tensor:
    """One batch of one attack or probe: robust per sample among the `alive` ones."""
    attack = probe.attack
    if attack.name is AttackName.CLEAN:
        return alive.clone()
    whitebox = probe.crafter is None and probe.judge is None
    if whitebox and graphs and linf is None and x.shape[0] == batch_size:
        return alive & ~graphed(model, attack, x, autocast)(x, y, generator)
    robust = torch.zeros_like(alive)
    rows = alive.nonzero().squeeze(1)
    if not rows.numel():
        return robust
    xs, ys = x[rows], y[rows]
    if whitebox:
        out = run_attack(model, xs, ys, attack, generator=generator, autocast=autocast)
        x_adv, survived = out.x_adv, ~out.fooled
    else:
        crafter = probe.crafter or model
        x_adv = run_attack(crafter, xs, ys, attack.replace(last_iterate=True), generator=generator,
                           autocast=autocast).x_adv
        judge = probe.judge or model
        with torch.no_grad(), eval_mode(judge), autocast():
            survived = judge(x_adv).argmax(1) == ys
    if linf is not None:
        linf.add(xs, x_adv, survived)
    robust[rows] = survived
    return robust


def accuracies(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per key, the fraction of samples whose mask is True (0.0 on an empty split)."""
    return {k: int(m.sum()) / max(m.numel(), 1) for k, m in masks.items()}


def robust_accuracy(model: nn.Module, data: Split, attacks: Mapping[str, AttackCfg | Probe], *, device: torch.device,
                    batch_size: int | None = None, seed: int = 0, autocast: Autocast = nullcontext,
                    progress: bool = False) -> dict[str, float]:
    """Accuracy in [0, 1] under each named attack, plus `clean` (the means of `robust_masks`)."""
    return accuracies(robust_masks(model, data, attacks, device=device, batch_size=batch_size, seed=seed,
                                   autocast=autocast, progress=progress))


def by_label(attacks: Sequence[AttackCfg]) -> dict[str, AttackCfg]:
    """Attacks keyed by their labels (`pgd10`, `fgsm`, ...), as every result names them; CLEAN is the `clean` mask
    the loop always scores."""
    return {a.label: a for a in attacks if a.name is not AttackName.CLEAN}


def evaluate(model: nn.Module, data: Split, attacks: Sequence[AttackCfg], *, device: torch.device,
             batch_size: int | None = None, seed: int = 0, autocast: Autocast = nullcontext,
             progress: bool = False) -> dict[str, float]:
    """Accuracy in [0, 1] per attack label (`pgd10`, `fgsm`, ...); `clean` always included."""
    return robust_accuracy(model, data, by_label(attacks), device=device, batch_size=batch_size, seed=seed, autocast=autocast,
                           progress=progress)


@torch.no_grad()
def evaluate_clean(
    model: nn.Module, data: Split, *, batch_size: int, device: torch.device, autocast: Autocast = nullcontext
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on `data`, in eval mode."""
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    data = place(data, device)
    with eval_mode(model):
        for x, y in iterate_batches(data, batch_size, device):
            with autocast():
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = max(len(data), 1)
    return float(loss_sum) / n, int(correct) / n
