"""Fine-tuning methods: their configuration, the examples they train on, their losses, their cost."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks import pgd
from trainables.augment import make_generator
from trainables.config import AttackCfg, AttackName, ConfigError, Method, MethodCfg, TrainCfg
from trainables.evaluation import evaluate
from trainables.methods import Adversary, Passes, adversary_of, batch_loss, passes_per_image
from trainables.training import fit
from trainables.vocab import decode_outcomes


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "madry"}, "method: must be one of patch, fgsm_rs, pgd_at, trades, paper_fgsm_at, paper_ifgsm_at, "
                          "paper_pgd_at, got 'madry'"),
    ({"method": "trades", "beta": 0.0}, "beta: must be > 0, got 0.0"),
    ({"method": "trades", "beta": float("nan")}, "beta: must be finite, got nan"),
    ({"method": "pgd_at", "at_steps": 0}, "at_steps: must be >= 1, got 0"),
    ({"method": "pgd_at", "at_steps": 2.5}, "at_steps: must be an integer, got 2.5"),
    ({"method": "pgd_at", "train_eps": 0.0}, "train_eps: must be > 0, got 0.0"),
    ({"method": "fgsm_rs", "train_eps": 1.5}, "train_eps: must be <= 1, got 1.5"),
    ({"method": "fgsm_rs", "at_steps": 3},
     "at_steps is not a parameter of method fgsm_rs (it takes train_eps, eps_warmup); got at_steps 3"),
    ({"method": "pgd_at", "beta": 6.0},
     "beta is not a parameter of method pgd_at (it takes train_eps, at_steps, eps_warmup); got beta 6.0"),
    ({"method": "patch", "train_eps": 0.1}, "train_eps is not a parameter of method patch (it takes none); got train_eps 0.1"),
    ({"method": "patch", "augment": False}, "method patch is the patch augmentation itself: augment must be true"),
    ({"method": "pgd_at", "eps_warmup": 1.0}, "eps_warmup: must be < 1, got 1.0"),
    ({"method": "trades", "eps_warmup": -0.5}, "eps_warmup: must be >= 0, got -0.5"),
    ({"method": "patch", "eps_warmup": 0.3},
     "eps_warmup is not a parameter of method patch (it takes none); got eps_warmup 0.3"),
    ({"method": "paper_pgd_at", "eps_warmup": 0.3}, "eps_warmup is not a parameter of method paper_pgd_at "
                                                    "(it takes train_eps, at_steps, at_alpha); got eps_warmup 0.3"),
])
def test_bad_method_configs_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        MethodCfg(**kwargs)
    assert str(err.value) == message


def test_defaults_and_step_sizes_reach_twice_eps() -> None:
    assert MethodCfg().attack() is None and adversary_of(MethodCfg(), 0.3) is None
    pgd_at = MethodCfg(method="pgd_at").resolved(0.1)
    assert (pgd_at.train_eps, pgd_at.at_steps) == (0.1, 5)
    attack = pgd_at.attack()
    assert attack is not None and attack.alpha * attack.steps == pytest.approx(2.5 * 0.1) and attack.last_iterate
    fgsm = MethodCfg(method="fgsm_rs", train_eps=0.2).resolved(0.3).attack()
    assert fgsm is not None and (fgsm.name, fgsm.eps, fgsm.steps) == (AttackName.PGD, 0.2, 1)
    assert fgsm.alpha == pytest.approx(1.25 * 0.2)  # Wong et al.: random start, then one step of 1.25 eps
    trades = adversary_of(MethodCfg(method="trades", at_steps=10), 0.3)
    assert trades is not None and trades.beta == 6.0 and trades.attack.steps == 10
    assert MethodCfg(method="trades").describe() == {"method": "trades", "augment": False, "train_eps": None,
                                                     "at_steps": None, "beta": 6.0, "eps_warmup": 0.0}
    assert MethodCfg().augmented is True and MethodCfg(method="pgd_at", augment=True).augmented is True
    # the paper's baselines: its alpha 0.01 and 10 steps (which cannot reach eps 0.3), FGSM one step of eps
    paper = MethodCfg(method="paper_pgd_at").resolved(0.3).attack()
    assert paper is not None and (paper.name, paper.alpha, paper.steps) == (AttackName.PGD, 0.01, 10)
    assert not paper.reaches_eps
    ifgsm = MethodCfg(method="paper_ifgsm_at", at_steps=4, at_alpha=0.05).resolved(0.1).attack()
    assert ifgsm is not None and (ifgsm.name, ifgsm.alpha, ifgsm.steps) == (AttackName.IFGSM, 0.05, 4)
    fgsm_at = adversary_of(MethodCfg(method="paper_fgsm_at"), 0.3)
    assert fgsm_at is not None and fgsm_at.attack.name is AttackName.FGSM and fgsm_at.eps_warmup == 0.0


def test_eps_warmup_grows_eps_and_alpha_linearly_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """With warmup w, the step ending a share p < w of the run attacks at eps * p / w (alpha with it), then at
    eps: over the run's global steps, so a trial resumed at epoch 2 continues the ramp where it was."""
    adversary = adversary_of(MethodCfg(method="pgd_at", at_steps=4, eps_warmup=0.5), 0.3)
    assert adversary is not None and adversary.describe()["eps_warmup"] == 0.5
    assert adversary.at(0.25).attack.eps == pytest.approx(0.15) and adversary.at(0.25).attack.alpha == pytest.approx(0.09375)
    assert adversary.at(0.5) is adversary and adversary.at(1.0) is adversary
    assert adversary_of(MethodCfg(method="pgd_at"), 0.3).at(0.01) == adversary_of(MethodCfg(method="pgd_at"), 0.3)  # type: ignore[union-attr]

    import trainables.methods as methods
    seen: list[float] = []
    real = methods.run_attack

    def spy(model, x, y, attack, **kw):  # type: ignore[no-untyped-def]
        seen.append(attack.eps)
        return real(model, x, y, attack, **kw)

    monkeypatch.setattr(methods, "run_attack", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    from trainables.data import Split
    train = Split((torch.rand(64, 1, 4, 4) * 255).to(torch.uint8), torch.arange(64) % 3)
    cfg = TrainCfg(lr=1e-3, batch_size=16, epochs=2, plateau_patience=0)
    fit(model, train, train, cfg, device=torch.device("cpu"), progress=False, adversarial=adversary)
    assert seen == pytest.approx([0.3 * min(1.0, k / 4) for k in range(1, 9)])  # 8 steps, warm-up over the first 4
    seen.clear()
    fit(model, train, train, cfg, device=torch.device("cpu"), progress=False, adversarial=adversary, start_epoch=1)
    assert seen == pytest.approx([0.3] * 4)  # the second epoch alone: past the ramp


def test_passes_per_image() -> None:
    assert passes_per_image(None) == Passes(1, 1)
    assert passes_per_image(adversary_of(MethodCfg(method="fgsm_rs"), 0.1)) == Passes(2, 2)
    assert passes_per_image(adversary_of(MethodCfg(method="pgd_at", at_steps=7), 0.1)) == Passes(8, 8)
    assert passes_per_image(adversary_of(MethodCfg(method="trades", at_steps=5), 0.1)) == Passes(8, 7)
    assert passes_per_image(Adversary(AttackCfg(name="fgsm", eps=0.3))) == Passes(2, 2)


def _tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    return model, torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])


def test_fgsm_rs_examples_are_wong_et_al() -> None:
    model, x, y = _tiny()
    eps = 0.1
    adversary = adversary_of(MethodCfg(method="fgsm_rs"), eps)
    assert adversary is not None
    # by hand, from the same random start: delta ~ U(-eps, eps); one signed step of 1.25 eps; project
    delta = torch.empty_like(x).uniform_(-eps, eps, generator=make_generator(5))
    start = (x + delta).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y, reduction="sum"), start)
    expected = (x + (start.detach() + 1.25 * eps * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    loss, logits, labels = batch_loss(model, model, x, y, adversary, generator=make_generator(5))
    assert torch.allclose(logits, model(expected), atol=1e-6) and torch.equal(labels, y)
    assert loss.item() == pytest.approx(F.cross_entropy(model(expected), y).item(), abs=1e-6)


def test_trades_loss_is_ce_plus_beta_kl_of_examples_that_raise_the_kl() -> None:
    model, x, y = _tiny()
    adversary = adversary_of(MethodCfg(method="trades", train_eps=0.2, at_steps=5, beta=3.0), 0.3)
    assert adversary is not None
    loss, logits, labels = batch_loss(model, model, x, y, adversary, generator=make_generator(1))
    clean, adv = logits.split(x.shape[0])
    p = F.softmax(clean, 1)
    kl = (p * (F.log_softmax(clean, 1) - F.log_softmax(adv, 1))).sum(1).mean()
    assert loss.item() == pytest.approx((F.cross_entropy(clean, y) + 3.0 * kl).item(), rel=1e-5)
    assert torch.equal(labels, torch.cat([y, y])) and torch.allclose(clean, model(x), atol=1e-6)
    # the examples ascend the KL: more than at their random start, and within the budget
    start = pgd(model, x, y, eps=0.2, alpha=0.1, steps=1, last_iterate=True, generator=make_generator(1)).x_adv
    kl_start = (p * (F.log_softmax(clean, 1) - F.log_softmax(model(start), 1))).sum(1).mean()
    assert kl.item() > kl_start.item()


def test_pgd_with_cross_entropy_as_loss_fn_is_the_default(trained_cnn3, fmnist_small, device) -> None:
    x = fmnist_small.test.x[:64].to(device).float() / 255
    y = fmnist_small.test.y[:64].to(device)

    def ce(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y[idx], reduction="none")

    kw = {"eps": 0.1, "alpha": 0.025, "steps": 5}
    a = pgd(trained_cnn3, x, y, **kw, generator=make_generator(3, device))
    b = pgd(trained_cnn3, x, y, **kw, generator=make_generator(3, device), loss_fn=ce)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.fooled, b.fooled)


@pytest.mark.parametrize("method", [Method.FGSM_RS, Method.TRADES])  # PGD-AT: the audited control below
def test_each_adversarial_method_buys_robustness(method: Method, trained_cnn3, fmnist_small, device) -> None:
    """One epoch on 1000 real images at eps 0.1, scored by a PGD-20 that reaches 2.5 eps on 150 test images."""
    train, test = fmnist_small.train.take(slice(0, 1000)), fmnist_small.test.take(slice(0, 150))
    attack = AttackCfg(name="pgd", eps=0.1, alpha=0.0125, steps=20)
    before = evaluate(trained_cnn3, test, [attack], device=device)["pgd20"]
    model = copy.deepcopy(trained_cnn3)
    fit(model, train, fmnist_small.val.take(slice(0, 100)), TrainCfg(epochs=1, lr=1e-3, batch_size=64),
        device=device, adversarial=adversary_of(MethodCfg(method=method, augment=False), 0.1), progress=False)
    after = evaluate(model, test, [attack], device=device)
    assert after["pgd20"] > before + 0.15 and after["clean"] > 0.5, (before, after)


@pytest.fixture(scope="module")
def pgd_at_cnn3(trained_cnn3, fmnist_small, device) -> nn.Module:
    """The audit's positive control, small: PGD-3 adversarial fine-tuning at eps 0.1 (alpha x steps = 2.5 eps) of
    the base on all 4000 training images, two epochs."""
    model = copy.deepcopy(trained_cnn3)
    fit(model, fmnist_small.train, fmnist_small.val.take(slice(0, 100)), TrainCfg(epochs=2, lr=1e-3, batch_size=64),
        device=device, adversarial=adversary_of(MethodCfg(method=Method.PGD_AT, augment=False, at_steps=3), 0.1), progress=False)
    return model.eval()


def test_positive_control_pgd_at_passes_the_audit_far_above_its_base(pgd_at_cnn3, trained_cnn3, fmnist_small,
                                                                     device) -> None:
    """Audited at eps 0.1 on 100 test images (paper attacks, PGD-10 x2, APGD-CE and APGD-T of 10 steps, a
    100-query Square, every masking check on 16 images), the positive control's worst case is >= 30 points
    above the base's, every check passes, and the paired comparison calls it better than the base."""
    from analysis import versus_base
    from trainables.audit import CheckStatus, run_audit
    from trainables.config import AuditCfg
    from trainables.data import Split

    model = pgd_at_cnn3
    test = Split(fmnist_small.test.x[:100], fmnist_small.test.y[:100])
    cfg = AuditCfg(strong_steps=10, strong_restarts=2, components=("apgd-ce", "apgd-t", "square"), apgd_steps=10,
                   square_queries=100, reattack_queries=400, sweep_steps=10, noise_draws=10, check_limit=16,
                   batch_size=128)
    control = run_audit(model, test, cfg, 0.1, device=device, base=trained_cnn3, progress=False)
    base = run_audit(trained_cnn3, test, cfg, 0.1, device=device, checks=False, progress=False)
    failing = {c.name: c.detail for c in control.checks if c.status is not CheckStatus.PASS}
    assert control.verdict is CheckStatus.PASS, failing
    assert control.worst_case >= base.worst_case + 30, (control.worst_case, base.worst_case)  # 100 images: points
    strong = control.row("strong_pgd10x2").acc
    assert control.row("autoattack").acc <= strong + 0.02 and control.worst_case / 100 <= strong
    mask = {who: decode_outcomes(r.as_dict()["worst_case_mask"]) for who, r in (("c", control), ("b", base))}
    assert versus_base.compare(mask["c"], mask["b"], split="test", measure="at the worst case")["verdict"] == "better"


class _TrainInputs(nn.Module):
    """Records what the training step (train mode) feeds the model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.inner(x)


def test_adversarial_examples_are_built_from_clean_and_patch_modified_images(trained_cnn3, fmnist_small, device) -> None:
    """With the augmentation on, each step trains on adversarial examples of the clean images and of their
    patch-modified copies: twice the batch, the halves further apart than two eps-balls allow."""
    from trainables.config import AugCfg

    model = _TrainInputs(copy.deepcopy(trained_cnn3))
    eps = 0.05
    fit(model, fmnist_small.train.take(slice(0, 64)), fmnist_small.val.take(slice(0, 10)),
        TrainCfg(epochs=1, lr=1e-4, batch_size=32), device=device, augment=AugCfg(patch_size=10, pool=("occlude",)),
        adversarial=adversary_of(MethodCfg(method="pgd_at", at_steps=2), eps), progress=False)
    assert [x.shape[0] for x in model.seen] == [64, 64]
    for x in model.seen:
        clean, modified = x.split(32)
        assert (modified - clean).abs().amax() > 2 * eps + 0.1  # the occluded patches


def test_nested_eps_curve_is_never_weaker_on_an_adversarially_fine_tuned_model(pgd_at_cnn3, fmnist_small,
                                                                              device) -> None:
    """The one-pass eps curve (evaluation.robust_masks(nested=...)) against per-eps PGD on a model where many
    samples survive the small eps: never above it beyond sampling noise, and non-increasing in eps."""
    from trainables.evaluation import accuracies, robust_masks

    val = fmnist_small.val.take(slice(0, 200))
    attacks = {f"eps{e:g}": AttackCfg(name="pgd", eps=e, alpha=2.5 * e / 5, steps=5) for e in (0.05, 0.1, 0.2)}
    fast = accuracies(robust_masks(pgd_at_cnn3, val, attacks, device=device, seed=4, nested=tuple(attacks)))
    slow = accuracies(robust_masks(pgd_at_cnn3, val, attacks, device=device, seed=4))
    assert fast["eps0.05"] >= fast["eps0.1"] >= fast["eps0.2"] and slow["eps0.1"] > 0.3, (fast, slow)
    for key in attacks:
        assert fast[key] <= slow[key] + 0.03, (key, fast, slow)
