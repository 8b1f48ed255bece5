from __future__ import annotations

import pytest
import torch

import trainables.augment as augment_mod
from trainables.augment import clean_plus_modified, make_generator, patch_augment, patch_positions
from trainables.config import AugCfg, ConfigError, PatchOp
from trainables.vocab import dataset_info


@pytest.fixture(params=["subset", "where"], autouse=True)
def select_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test through both op-selection paths: per-op subsets (CPU) and torch.where (GPU)."""
    if request.param == "where":
        monkeypatch.setattr(augment_mod, "_apply_ops_by_subset", augment_mod._apply_ops_by_where)
    return str(request.param)


def _batch(b: int = 16, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, c, h, w), generator=torch.Generator().manual_seed(seed))


def _changed_mask(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x != y).any(dim=1)  # [B, H, W]


def test_prob_zero_is_identity() -> None:
    x = _batch()
    out = patch_augment(x, AugCfg(prob=0.0, patch_size=8), make_generator(0))
    assert torch.equal(out, x)


def test_input_not_modified_and_contract_kept() -> None:
    x = _batch(c=3, h=32, w=32)
    before = x.clone()
    out = patch_augment(x, AugCfg(patch_size=10), make_generator(1))
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("op", list(PatchOp))
def test_changes_stay_inside_the_central_patch(op: PatchOp) -> None:
    x = _batch(b=32)
    w = 10
    out = patch_augment(x, AugCfg(pool=(op,), patch_size=w), make_generator(2))
    changed = _changed_mask(x, out)
    top = (28 - w) // 2
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[top : top + w, top : top + w] = True
    assert not changed[:, ~inside].any(), f"{op} changed pixels outside the patch"
    # every op changes most images (random noise images are never symmetric or constant)
    assert changed.flatten(1).any(1).float().mean() > 0.9


def test_flip_mirrors_the_patch_exactly() -> None:
    x = _batch(b=4)
    w, top = 8, 10
    out = patch_augment(x, AugCfg(pool=("flip",), patch_size=w), make_generator(0))
    patch = x[:, :, top : top + w, top : top + w]
    torch.testing.assert_close(out[:, :, top : top + w, top : top + w], patch.flip(-1), atol=1e-5, rtol=0)


def test_occlude_writes_the_constant() -> None:
    x = _batch(b=4)
    out = patch_augment(x, AugCfg(pool=("occlude",), patch_size=6, occlude_value=0.25), make_generator(0))
    assert torch.all(out[:, :, 11:17, 11:17] == 0.25)


def test_noise_has_the_configured_scale() -> None:
    x = torch.full((64, 1, 28, 28), 0.5)
    out = patch_augment(x, AugCfg(pool=("noise",), patch_size=20, noise_std=0.1), make_generator(0))
    diff = (out - x)[:, :, 4:24, 4:24]
    assert abs(float(diff.std()) - 0.1) < 0.01
    assert abs(float(diff.mean())) < 0.01


def test_same_generator_same_output_different_generator_different() -> None:
    x = _batch()
    cfg = AugCfg(patch_size=12, num_patches=2, jitter=4)
    a = patch_augment(x, cfg, make_generator(7))
    b = patch_augment(x, cfg, make_generator(7))
    c = patch_augment(x, cfg, make_generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ops_drawn_uniformly_from_pool() -> None:
    # With occlude (value 1.0 on zero images) and identity-looking flip of a constant patch, count occlusions.
    x = torch.zeros((4000, 1, 28, 28))
    out = patch_augment(x, AugCfg(pool=("occlude", "flip"), patch_size=4, occlude_value=1.0), make_generator(0))
    share = (out.flatten(1).amax(1) == 1.0).float().mean().item()
    assert 0.46 < share < 0.54


def test_jittered_patches_stay_in_bounds_and_count() -> None:
    cfg = AugCfg(patch_size=9, num_patches=3, jitter=20)
    top, left = patch_positions(50, 28, 28, cfg, make_generator(0), torch.device("cpu"))
    assert top.shape == (50, 3)
    assert top.min() >= 0 and (top + 9).max() <= 28 and left.min() >= 0 and (left + 9).max() <= 28
    assert len(set(top.flatten().tolist())) > 5  # jitter moves patches around
    # changed area is bounded by num_patches * w^2 per image
    x = _batch(b=50)
    out = patch_augment(x, AugCfg(pool=("occlude",), patch_size=9, num_patches=3, jitter=20, occlude_value=0.0), make_generator(0))
    area = _changed_mask(x, out).flatten(1).sum(1)
    assert area.max() <= 3 * 81 and area.min() >= 81 - 5


def test_clean_plus_modified_duplicates_labels() -> None:
    x, y = _batch(b=6), torch.arange(6)
    xb, yb = clean_plus_modified(x, y, AugCfg(patch_size=5), make_generator(0))
    assert xb.shape == (12, 1, 28, 28)
    assert torch.equal(xb[:6], x)
    assert torch.equal(yb, torch.cat([y, y]))


def test_bad_configs_are_refused_with_the_value() -> None:
    with pytest.raises(ConfigError, match="empty pool"):
        AugCfg(pool=(), patch_size=8)
    with pytest.raises(ConfigError, match="'blur'"):
        AugCfg(pool=("rotate", "blur"), patch_size=8)
    with pytest.raises(ConfigError, match="patch_size 40 is larger than the 28x28"):
        patch_augment(_batch(), AugCfg(patch_size=40), make_generator(0))
    with pytest.raises(ConfigError, match=r"^prob: must be <= 1, got 1.5$"):
        AugCfg(prob=1.5, patch_size=8)
    with pytest.raises(ConfigError, match="patch_size 29 is larger than the 28x28 fmnist images"):
        AugCfg(patch_size=29).resolved(dataset_info("fmnist"))
    assert AugCfg().resolved(dataset_info("fmnist")).patch_size == 8  # ~0.3 x the side
