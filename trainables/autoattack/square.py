"""Square Attack, L-inf (Andriushchenko et al. 2020, arXiv:1912.00049): random search on the margin loss
z_y - max_{j != y} z_j, from vertical stripes of +-eps, with no gradient at all, so gradient masking does not
hide a model's weakness from it.

Each query changes one square window, of side s = sqrt(p c h w / c) (the same window in every image of the
batch), to +-2 eps per channel, projected back onto S = {x' : ||x' - x||_inf <= eps} and [0, 1]^d; the change
is kept where the margin fell. p starts at `p_init` and halves at queries 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000, as the reference schedule does (without rescaling it to the query budget). A sample stops
being attacked once the model misclassifies it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(query: int, p_init: float) -> float:
    """The fraction of pixels the query's square covers."""
    return p_init / float(2 ** sum(query > q for q in _P_HALVINGS))


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    u = torch.arange(x.shape[0], device=x.device)
    correct = logits[u, y].clone()
    logits[u, y] = -float("inf")
    margin: torch.Tensor = correct - logits.max(dim=-1)[0]
    return margin


def _signs(shape: list[int], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.sign(2 * torch.rand(shape, generator=gen) - 1).to(device)


def _offset(high: int, gen: torch.Generator) -> int:
    return int(high * torch.rand([1], generator=gen))


@torch.no_grad()
def _single_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int, p_init: float,
                gen: torch.Generator) -> torch.Tensor:
    c, h, w = x.shape[1:]
    view = (-1, *([1] * (x.dim() - 1)))
    x_best = torch.clamp(x + eps * _signs([x.shape[0], c, 1, w], gen, x.device), 0.0, 1.0)
    margin_min = _margin(model, x_best, y)
    for query in range(queries):
        idx = (margin_min > 0.0).nonzero().flatten()
        if idx.numel() == 0:
            break
        x_curr, x_best_curr, margin_curr = x[idx], x_best[idx], margin_min[idx]
        s = max(int(round(math.sqrt(p_schedule(query, p_init) * (c * h * w) / c))), 1)  # as the reference rounds
        vh, vw = _offset(h - s, gen), _offset(w - s, gen)
        delta = torch.zeros([c, h, w], device=x.device)
        delta[:, vh:vh + s, vw:vw + s] = 2.0 * eps * _signs([c, 1, 1], gen, x.device)
        x_new = torch.min(torch.max(x_best_curr + delta, x_curr - eps), x_curr + eps).clamp(0.0, 1.0)
        margin = _margin(model, x_new, y[idx])
        keep = (margin < margin_curr) | (margin <= 0.0)
        margin_min[idx] = torch.where(keep, margin, margin_curr)
        x_best[idx] = torch.where(keep.view(view), x_new, x_best_curr)
        if bool((margin_min <= 0.0).all()):
            break
    return x_best


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, queries: int = 5000,
           p_init: float = 0.8, seed: int = 0) -> torch.Tensor:
    """Square, untargeted, one run. x float [B, C, H, W] in [0, 1], y int64 [B]; returns x_adv like x: the
    fooling example where one was found, else x."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        idx = (model(x).argmax(1) == y).nonzero().flatten()
    adv = x.clone()
    if idx.numel():
        x_adv = _single_run(model, x[idx], y[idx], eps, queries, p_init, gen)
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y[idx]
        adv[idx[fooled]] = x_adv[fooled]
    return adv
