"""Image grids for people to look at: what each patch op does to real images."""

from __future__ import annotations

from pathlib import Path

import torch

from trainables.atomic import atomic_open
from trainables.augment import make_generator, patch_augment
from trainables.config import AugCfg


def augment_grid(images_u8: torch.Tensor, cfg: AugCfg, *, seed: int, path: str | Path, title: str = "") -> None:
    """PNG grid: the original row, then one row per op of `cfg.pool` applied to the same images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = images_u8.float() / 255.0
    rows = [("original", x)]
    for op in cfg.pool:
        single = cfg.replace(pool=(op,), prob=1.0)
        rows.append((op.value, patch_augment(x, single, make_generator(seed))))
    n = x.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.8, 1.3 * len(rows)), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = batch[c].permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
