"""The paper's patch augmentation (Agarwal, Vatsa & Singh, AAAI 2021, Fig. 1), batched and generator-seeded.

For each image draw lambda ~ U{1..K} and apply op q_lambda from the pool to its w x w patch(es) around the
centre; fine-tune on clean (+) modified with labels duplicated.

    x' = x  outside the patches,   x'[patch] = q_lambda(x[patch])

Ops (all on [0, 1] pixels, per patch):
    rotate     rotation by U(-d, d) degrees about the patch centre (border pixels replicated)
    translate  shift by U(-f, f) * w pixels per axis (border pixels replicated)
    flip       left-right mirror
    noise      + N(0, sigma^2), clamped to [0, 1]
    occlude    every pixel set to a constant (pixel masking)

Contract: `x` float [B, C, H, W] in [0, 1] on any device; returns a new tensor of the same shape, dtype and
device (the input is not modified). All randomness comes from `generator` (on x's device), so the same
generator state gives the same output on the same device. No per-image Python loop, and no host sync on a
GPU (see `_apply_ops`).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x2 = patch_augment(x, AugCfg(pool=("rotate", "noise"), patch_size=8), g)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainables.config import AugCfg, ConfigError, PatchOp

_AFFINE_OPS = (PatchOp.ROTATE, PatchOp.TRANSLATE, PatchOp.FLIP)
_OP_CODE = {op: i for i, op in enumerate(PatchOp)}


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def patch_positions(
    batch: int, height: int, width: int, cfg: AugCfg, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners [B, P] of each image's patches: the centre, jittered by up to `cfg.jitter` px."""
    w, p = cfg.size, cfg.num_patches
    top = torch.full((batch, p), (height - w) // 2, device=device)
    left = torch.full((batch, p), (width - w) // 2, device=device)
    if cfg.jitter:
        j = cfg.jitter
        top = top + torch.randint(-j, j + 1, (batch, p), generator=generator, device=device)
        left = left + torch.randint(-j, j + 1, (batch, p), generator=generator, device=device)
    return top.clamp(0, height - w), left.clamp(0, width - w)


def _affine_thetas(op: torch.Tensor, cfg: AugCfg, generator: torch.Generator) -> torch.Tensor:
    """One 2x3 affine matrix per patch: rotation, translation or mirror by op, identity otherwise."""
    n, device = op.shape[0], op.device
    u = torch.rand((n, 3), generator=generator, device=device) * 2 - 1  # U(-1, 1): angle, dx, dy
    angle = u[:, 0] * math.radians(cfg.rotate_degrees)
    # affine_grid works in [-1, 1] patch coordinates, so a shift of f * w pixels is 2 f.
    shift = u[:, 1:] * 2 * cfg.translate_fraction
    theta = torch.zeros((n, 2, 3), device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    is_rot = op == _OP_CODE[PatchOp.ROTATE]
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0] = torch.where(is_rot, cos, theta[:, 0, 0])
    theta[:, 0, 1] = torch.where(is_rot, -sin, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(is_rot, sin, theta[:, 1, 0])
    theta[:, 1, 1] = torch.where(is_rot, cos, theta[:, 1, 1])
    is_shift = (op == _OP_CODE[PatchOp.TRANSLATE]).unsqueeze(1)
    theta[:, :, 2] = torch.where(is_shift, shift, theta[:, :, 2])
    theta[:, 0, 0] = torch.where(op == _OP_CODE[PatchOp.FLIP], -1.0, theta[:, 0, 0])
    return theta


def patch_augment(x: torch.Tensor, cfg: AugCfg, generator: torch.Generator) -> torch.Tensor:
    """Apply one randomly drawn pool op to the central patch(es) of every image (see module docstring)."""
    b, c, h, w_img = x.shape
    device, w, p = x.device, cfg.size, cfg.num_patches
    if w > min(h, w_img):
        raise ConfigError(f"patch_size {w} is larger than the {h}x{w_img} image")

    pool_codes = torch.tensor([_OP_CODE[op] for op in cfg.pool], device=device)
    lam = torch.randint(len(cfg.pool), (b,), generator=generator, device=device)
    modify = torch.rand((b,), generator=generator, device=device) < cfg.prob
    result = x.clone()

    if cfg.jitter == 0:
        # Every patch sits exactly at the centre: a plain slice, no gather/scatter.
        top, left = (h - w) // 2, (w_img - w) // 2
        window = result[:, :, top : top + w, left : left + w]
        window.copy_(_apply_ops(window.contiguous(), pool_codes[lam], ~modify, cfg, generator))
        return result

    top_left = patch_positions(b, h, w_img, cfg, generator, device)
    # Gather all patches at once: advanced indices [B,P,w,w] around the channel slice give [B,P,w,w,C].
    ar = torch.arange(w, device=device)
    rows = (top_left[0].unsqueeze(-1) + ar)[:, :, :, None]
    cols = (top_left[1].unsqueeze(-1) + ar)[:, :, None, :]
    bi = torch.arange(b, device=device)[:, None, None, None]
    patches = x[bi, :, rows, cols].permute(0, 1, 4, 2, 3).reshape(b * p, c, w, w)
    # every patch of an image gets that image's op
    out = _apply_ops(patches, pool_codes[lam].repeat_interleave(p), ~modify.repeat_interleave(p), cfg, generator)
    result[bi, :, rows, cols] = out.reshape(b, p, c, w, w).permute(0, 1, 3, 4, 2)
    return result


def _apply_ops(
    patches: torch.Tensor, op: torch.Tensor, keep: torch.Tensor, cfg: AugCfg, generator: torch.Generator
) -> torch.Tensor:
    """Each patch [N, C, w, w] transformed by its op code; `keep` marks patches left unchanged.

    On a GPU every op is computed for all patches and picked with `torch.where`: no host sync, and patches
    are small. On the CPU, where a sync costs nothing and arithmetic dominates, each op runs only on its
    own patches (about N / K of them).
    """
    op = torch.where(keep, -1, op)
    if patches.device.type == "cpu":
        return _apply_ops_by_subset(patches, op, cfg, generator)
    return _apply_ops_by_where(patches, op, cfg, generator)


def _affine(patches: torch.Tensor, op: torch.Tensor, cfg: AugCfg, generator: torch.Generator) -> torch.Tensor:
    theta = _affine_thetas(op, cfg, generator).to(patches.dtype)
    grid = F.affine_grid(theta, list(patches.shape), align_corners=False)
    return F.grid_sample(patches, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _noisy(patches: torch.Tensor, cfg: AugCfg, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(patches.shape, generator=generator, device=patches.device, dtype=patches.dtype)
    return (patches + cfg.noise_std * noise).clamp_(0, 1)


def _apply_ops_by_where(
    patches: torch.Tensor, op: torch.Tensor, cfg: AugCfg, generator: torch.Generator
) -> torch.Tensor:
    def chosen(*codes: PatchOp) -> torch.Tensor:
        mask = torch.zeros_like(op, dtype=torch.bool)
        for code in codes:
            mask |= op == _OP_CODE[code]
        return mask.view(-1, 1, 1, 1)

    out = patches
    if any(o in cfg.pool for o in _AFFINE_OPS):
        out = torch.where(chosen(*_AFFINE_OPS), _affine(patches, op, cfg, generator), out)
    if PatchOp.NOISE in cfg.pool:
        out = torch.where(chosen(PatchOp.NOISE), _noisy(patches, cfg, generator), out)
    if PatchOp.OCCLUDE in cfg.pool:
        out = torch.where(chosen(PatchOp.OCCLUDE), torch.tensor(cfg.occlude_value, dtype=patches.dtype, device=patches.device), out)
    return out


def _apply_ops_by_subset(
    patches: torch.Tensor, op: torch.Tensor, cfg: AugCfg, generator: torch.Generator
) -> torch.Tensor:
    out = patches.clone()
    affine_codes = torch.tensor([_OP_CODE[o] for o in _AFFINE_OPS])
    idx = torch.isin(op, affine_codes).nonzero().squeeze(1)
    if idx.numel():
        out[idx] = _affine(patches[idx], op[idx], cfg, generator)
    idx = (op == _OP_CODE[PatchOp.NOISE]).nonzero().squeeze(1)
    if idx.numel():
        out[idx] = _noisy(patches[idx], cfg, generator)
    idx = (op == _OP_CODE[PatchOp.OCCLUDE]).nonzero().squeeze(1)
    if idx.numel():
        out[idx] = cfg.occlude_value
    return out


def clean_plus_modified(
    x: torch.Tensor, y: torch.Tensor, cfg: AugCfg, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fine-tuning batch: clean images concatenated with their patch-modified copies, labels duplicated."""
    return torch.cat([x, patch_augment(x, cfg, generator)]), torch.cat([y, y])
