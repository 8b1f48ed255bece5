from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainables.attacks import eval_mode, pgd, project, random_start, run_attack
from trainables.augment import make_generator
from trainables.config import AttackCfg, AttackName, ConfigError


@pytest.fixture(scope="module")
def cpu_cnn3(trained_cnn3) -> nn.Module:
    """A CPU copy: ART runs on the CPU."""
    return copy.deepcopy(trained_cnn3).cpu().eval()


def _xy(data, n: int = 200, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return data.test.x[:n].float().div(255).to(device), data.test.y[:n].to(device)


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd"])
@pytest.mark.parametrize("last_iterate", [False, True])
def test_attack_properties(cnn3_in_train_mode, fmnist_small, device, name: str, last_iterate: bool) -> None:
    x, y = _xy(fmnist_small, 128, device)
    model = cnn3_in_train_mode  # the attack must switch to eval and back
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    cfg = AttackCfg(name=name, eps=0.1, alpha=0.02, steps=5, last_iterate=last_iterate)
    out = run_attack(model, x, y, cfg, generator=make_generator(0, device))
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert out.x_adv.shape == x.shape and out.x_adv.dtype == x.dtype and out.x_adv.device == x.device
    assert (out.x_adv - x).abs().max() <= 0.1 + 1e-6
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    # the fooled flags are true statements about the returned examples when counting the last iterate
    with torch.no_grad(), eval_mode(model):
        pred = model(out.x_adv).argmax(1)
    assert torch.equal(pred != y, out.fooled) if last_iterate else bool((pred[out.fooled] != y[out.fooled]).all())


def test_mode_restored_per_submodule(cnn3_in_train_mode, device) -> None:
    model = cnn3_in_train_mode
    model[1][0].eval()  # a mixed state must come back exactly
    states = [m.training for m in model.modules()]
    x = torch.rand(4, 1, 28, 28, device=device)
    pgd(model, x, torch.zeros(4, dtype=torch.long, device=device), eps=0.1, alpha=0.01, steps=2,
        generator=make_generator(0, device))
    assert [m.training for m in model.modules()] == states


def _art(model: nn.Module, x: torch.Tensor) -> object:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
                             clip_values=(0.0, 1.0))


def test_same_examples_as_the_adversarial_robustness_toolbox(cpu_cnn3, fmnist_small) -> None:
    """IFGSM and FGSM against ART's (IBM's maintained library) own implementations: the same examples."""
    pytest.importorskip("art", reason="the dev extra's adversarial-robustness-toolbox")  # absent on a bare GPU box
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch

    x, y = _xy(fmnist_small, 64)
    eps, alpha, steps = 0.1, 0.01, 10
    art = _art(cpu_cnn3, x)
    bim = ProjectedGradientDescentPyTorch(art, norm="inf", eps=eps, eps_step=alpha, max_iter=steps, num_random_init=0,
                                          batch_size=64, verbose=False)
    ours = pgd(cpu_cnn3, x, y, eps=eps, alpha=alpha, steps=steps, random_init=False, last_iterate=True)
    torch.testing.assert_close(ours.x_adv, torch.from_numpy(bim.generate(x.numpy(), y=y.numpy())), atol=1e-5, rtol=0)
    fgm = FastGradientMethod(art, norm="inf", eps=eps, num_random_init=0, batch_size=64)
    ours = run_attack(cpu_cnn3, x, y, AttackCfg(name="fgsm", eps=eps, last_iterate=True))
    torch.testing.assert_close(ours.x_adv, torch.from_numpy(fgm.generate(x.numpy(), y=y.numpy())), atol=1e-5, rtol=0)


def test_pgd_is_the_textbook_loop_from_the_same_start(cpu_cnn3, fmnist_small) -> None:
    """PGD's start is x + U(-eps, eps) from the generator, clipped to [0, 1]; from there it takes IFGSM's steps,
    projected onto the ball around x: the same iterates as the textbook loop that `make bench` times ours
    against (benchmarks/bench_core.py)."""
    from benchmarks.bench_core import textbook_pgd

    x, y = _xy(fmnist_small, 64)
    eps, alpha, steps = 0.1, 0.02, 5
    textbook = textbook_pgd(cpu_cnn3, x, y, eps, alpha, steps, make_generator(123))
    ours = pgd(cpu_cnn3, x, y, eps=eps, alpha=alpha, steps=steps, last_iterate=True, generator=make_generator(123))
    torch.testing.assert_close(ours.x_adv, textbook, atol=1e-5, rtol=0)


def test_worst_case_accuracy_at_most_the_last_iterate(cpu_cnn3, fmnist_small) -> None:
    x, y = _xy(fmnist_small, 150)
    for eps in (0.02, 0.05):
        last = pgd(cpu_cnn3, x, y, eps=eps, alpha=eps / 4, steps=10, last_iterate=True, generator=make_generator(5))
        with torch.no_grad():
            last_acc = (cpu_cnn3(last.x_adv).argmax(1) == y).float().mean().item()
        ours = pgd(cpu_cnn3, x, y, eps=eps, alpha=eps / 4, steps=10, generator=make_generator(5))
        our_acc = (~ours.fooled).float().mean().item()
        assert our_acc <= last_acc + 1e-9
        assert 0.0 < last_acc < 1.0  # the comparison means something at these budgets


def test_robust_accuracy_ordering_on_a_trained_model(trained_cnn3, fmnist_small, device) -> None:
    x, y = _xy(fmnist_small, 150, device)
    with torch.no_grad():
        clean = (trained_cnn3(x).argmax(1) == y).float().mean().item()
    accs = {}
    for steps in (1, 10, 40):
        out = pgd(trained_cnn3, x, y, eps=0.05, alpha=2.5 * 0.05 / steps, steps=steps, generator=make_generator(0, device))
        accs[steps] = (~out.fooled).float().mean().item()
    assert accs[40] <= accs[10] + 0.02 <= accs[1] + 0.04
    assert accs[10] < clean
    # at the paper's F-MNIST budget an undefended model is broken almost everywhere
    strong = pgd(trained_cnn3, x, y, eps=0.3, alpha=0.075, steps=10, generator=make_generator(0, device))
    assert (~strong.fooled).float().mean().item() < 0.05


def test_fgsm_exact_values_on_a_linear_model() -> None:
    # logits = W x with W = [[1, -1], [-1, 1]] on 2 pixels: for y=0 the loss gradient sign is (-1, +1).
    class Lin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w.T

    x = torch.tensor([[[[0.6, 0.4]]]])
    out = run_attack(Lin(), x, torch.tensor([0]), AttackCfg(name="fgsm", eps=0.25, last_iterate=True))
    torch.testing.assert_close(out.x_adv, torch.tensor([[[[0.35, 0.65]]]]))
    assert out.fooled.tolist() == [True]


def test_projection_keeps_budget_and_range() -> None:
    x = torch.tensor([0.0, 0.5, 0.99])
    adv = torch.tensor([-1.0, 0.9, 2.0])
    torch.testing.assert_close(project(x, adv, 0.1), torch.tensor([0.0, 0.6, 1.0]))


def test_ifgsm_cannot_move_further_than_alpha_times_steps(trained_cnn3, fmnist_small, device) -> None:
    # The paper's IFGSM (alpha 0.01, 10 steps) never reaches eps 0.3: the reason the audit warns about it.
    x, y = _xy(fmnist_small, 64, device)
    out = pgd(trained_cnn3, x, y, eps=0.3, alpha=0.01, steps=10, random_init=False, last_iterate=True)
    assert (out.x_adv - x).abs().max() <= 0.1 + 1e-6


def test_restarts_never_raise_accuracy(trained_cnn3, fmnist_small, device) -> None:
    x, y = _xy(fmnist_small, 200, device)
    one = run_attack(trained_cnn3, x, y, AttackCfg(eps=0.03, alpha=0.01, steps=5), generator=make_generator(0, device))
    three = run_attack(trained_cnn3, x, y, AttackCfg(eps=0.03, alpha=0.01, steps=5, restarts=3), generator=make_generator(0, device))
    assert three.fooled.sum() >= one.fooled.sum()
    assert (three.fooled | ~one.fooled).all()  # the first restart is the same draw


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 0.0}, r"^eps: must be > 0, got 0.0$"), ({"eps": 1.5}, r"^eps: must be <= 1, got 1.5$"),
    ({"steps": 0}, r"^steps: must be >= 1, got 0$"), ({"alpha": -0.1}, r"^alpha: must be > 0, got -0.1$"),
    ({"name": "cw"}, r"^name: must be one of clean, fgsm, ifgsm, pgd, got 'cw'$"),
    ({"steps": "3"}, r"^steps: must be an integer, got '3'$"), ({"eps": float("nan")}, r"^eps: must be finite"),
    ({"eps": True}, r"^eps: must be a number, got True$"),
])
def test_bad_attack_configs(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AttackCfg(**{"eps": 0.3, **kwargs})


def test_labels() -> None:
    assert AttackCfg(name=AttackName.PGD, eps=0.3, steps=10).label == "pgd10"
    assert AttackCfg(name="pgd", eps=0.3, steps=50, restarts=10).label == "pgd50x10"
    assert AttackCfg(name="fgsm", eps=0.3).label == "fgsm"


@pytest.mark.parametrize("name", ["ifgsm", "pgd"])
def test_compaction_interval_does_not_change_the_result(trained_cnn3, fmnist_small, device, name: str) -> None:
    """GPU runs compact every 4 steps to save host syncs, and CUDA graphs never (0); the examples and verdicts
    must be the same."""
    x, y = _xy(fmnist_small, 64, device)
    cfg = AttackCfg(name=name, eps=0.1, alpha=0.01, steps=12)
    outs = [pgd(trained_cnn3, x, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, random_init=name == "pgd",
                generator=make_generator(3, device), compact_every=k) for k in (1, 4, 5, 1000, 0)]
    assert 0 < int(outs[0].fooled.sum()) < 64
    for out in outs[1:]:
        assert torch.equal(out.fooled, outs[0].fooled)
        differ = ~torch.isclose(out.x_adv, outs[0].x_adv, atol=1e-6)
        if device.type == "cpu":
            assert not differ.any()
        else:  # cuDNN picks other kernels for other batch sizes: a near-zero gradient can change sign
            assert differ.float().mean() < 0.01


def _tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    return model, torch.rand(12, 2, 4, 4), torch.randint(0, 3, (12,))


def test_on_step_trace_matches_a_straightforward_pgd_loop() -> None:
    """steps + 1 per-sample losses: at the random start and after each step, every sample, with last_iterate."""
    model, x, y = _tiny()
    eps, alpha, steps = 0.2, 0.05, 6
    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    out = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, last_iterate=True, generator=make_generator(11),
              on_step=lambda step, loss, idx: calls.append((step, loss.clone(), idx.clone())))
    assert [c[0] for c in calls] == list(range(steps + 1))
    assert all(torch.equal(c[2], torch.arange(12)) for c in calls)
    # the same thing written out: uniform start, then signed-gradient steps projected on the ball and [0, 1]
    xa = (x + torch.empty_like(x).uniform_(-eps, eps, generator=make_generator(11))).clamp(0, 1)
    expected = []
    for step in range(steps + 1):
        xa = xa.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), y, reduction="none")
        expected.append(loss.detach())
        if step < steps:
            (g,) = torch.autograd.grad(loss.sum(), xa)
            xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    for (_, got, _), want in zip(calls, expected, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out.x_adv, xa.detach())
    assert expected[-1].mean() > expected[0].mean()


@pytest.mark.parametrize("last_iterate", [False, True])
@pytest.mark.parametrize("random_init", [False, True])
def test_on_step_does_not_change_the_result(trained_cnn3, fmnist_small, device, last_iterate: bool,
                                            random_init: bool) -> None:
    x, y = _xy(fmnist_small, 96, device)
    kw = {"eps": 0.1, "alpha": 0.02, "steps": 8, "random_init": random_init, "last_iterate": last_iterate,
          "compact_every": 3}
    plain = pgd(trained_cnn3, x, y, generator=make_generator(2, device), **kw)
    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    watched = pgd(trained_cnn3, x, y, generator=make_generator(2, device),
                  on_step=lambda step, loss, idx: calls.append((step, loss, idx)), **kw)
    assert torch.equal(plain.x_adv, watched.x_adv) and torch.equal(plain.fooled, watched.fooled)
    assert [c[0] for c in calls] == list(range(9))
    for step, loss, idx in calls:
        assert loss.shape == idx.shape and loss.dtype == torch.float32 and not loss.requires_grad
        if last_iterate or step == 0:
            assert torch.equal(idx, torch.arange(96, device=device))
    for (_, _, before), (_, _, after) in zip(calls, calls[1:], strict=False):
        assert set(after.tolist()) <= set(before.tolist())  # samples only ever leave
    # whoever survives was attacked to the end
    assert set((~plain.fooled).nonzero().squeeze(1).tolist()) <= set(calls[-1][2].tolist())
    # the loss at step 0 is that of the start
    with torch.no_grad():
        start = x if not random_init else (
            x + torch.empty_like(x).uniform_(-0.1, 0.1, generator=make_generator(2, device))).clamp(0, 1)
        torch.testing.assert_close(calls[0][1], nn.functional.cross_entropy(trained_cnn3(start), y, reduction="none"))


def test_run_attack_on_step_maps_restarts_back_to_rows_of_x() -> None:
    model, x, y = _tiny()
    cfg = AttackCfg(eps=0.1, alpha=0.05, steps=3, restarts=2, last_iterate=True)
    first = run_attack(model, x, y, cfg.replace(restarts=1), generator=make_generator(4))
    assert 0 < int(first.fooled.sum()) < 12
    starts: list[torch.Tensor] = []
    out = run_attack(model, x, y, cfg, generator=make_generator(4),
                     on_step=lambda step, _loss, idx: starts.append(idx) if step == 0 else None)
    assert len(starts) == 2
    assert torch.equal(starts[0], torch.arange(12))
    assert torch.equal(starts[1], (~first.fooled).nonzero().squeeze(1))
    assert (out.fooled | ~first.fooled).all()


def test_a_given_start_replaces_the_random_draw(trained_cnn3, fmnist_small, device) -> None:
    x, y = _xy(fmnist_small, 64, device)
    start = random_start(x, 0.1, make_generator(5, device))
    drawn = pgd(trained_cnn3, x, y, eps=0.1, alpha=0.02, steps=5, generator=make_generator(5, device))
    given = pgd(trained_cnn3, x, y, eps=0.1, alpha=0.02, steps=5, random_init=False, start=start)
    assert torch.equal(drawn.fooled, given.fooled) and torch.allclose(drawn.x_adv, given.x_adv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd"])
def test_graphed_evaluation_matches_the_eager_loop(trained_cnn3, fmnist_small, name: str, monkeypatch) -> None:
    """The replayed graph attacks full batches whole; its verdicts must be the eager loop's (up to bf16 kernels
    that differ with the batch size), and it must follow the model's weights as they change in place."""
    from trainables.evaluation import robust_masks
    from trainables.graphs import graphed
    from trainables.perf import configure_backends

    cuda = torch.device("cuda")
    model = copy.deepcopy(trained_cnn3).to(cuda)
    autocast = configure_backends(cuda)
    # A converging attack (alpha x steps = 2.5 eps), so verdicts hardly depend on the random start: the two
    # paths draw their starts for different rows (the eager loop attacks only clean-correct samples).
    attacks = {"a": AttackCfg(name=name, eps=0.05, alpha=0.0125, steps=10, restarts=2 if name == "pgd" else 1)}
    runs = {}
    for graphs in ("1", "0"):
        monkeypatch.setenv("PATCHTUNE_GRAPHS", graphs)
        runs[graphs] = robust_masks(model, fmnist_small.test, attacks, device=cuda, batch_size=100, autocast=autocast)
    assert torch.equal(runs["1"]["clean"], runs["0"]["clean"])
    assert 0.05 < runs["0"]["a"].float().mean() < runs["0"]["clean"].float().mean()
    assert (runs["1"]["a"] != runs["0"]["a"]).float().mean() <= 0.04
    x, y = _xy(fmnist_small, 100, cuda)
    graph = graphed(model, attacks["a"], x, autocast)
    before = graph(x, y, make_generator(0, cuda)).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)  # a constant model: every prediction the same class
    after = graph(x, y, make_generator(0, cuda))
    assert not torch.equal(before, after) and after.float().mean() > 0.8
