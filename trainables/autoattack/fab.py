"""FAB-T, L-inf (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", arXiv:1907.02044), as AutoAttack's standard version runs it: targeted at each of the `targets` most
likely wrong classes in turn, one run each from the clean image (no random start).

Each step linearises the margin to the target class, g(x') = z_t(x') - z_y(x'), at the current iterate x_k and
projects both x_k and the clean x onto {x' : g(x_k) + grad g . (x' - x_k) = 0} within [0, 1]^d (`project_linf`,
exact, by a sort and a bisection); it then moves to a convex combination of the two, overshooting by eta:

    x_{k+1} = clip_[0,1]( (1 - a) (x_k + eta d_k) + a (x + eta d_0) ),   a = min(|d_k| / (|d_k| + |d_0|), alpha_max)

and, once x_{k+1} fools the model, pulls it back towards x by beta. The smallest fooling perturbation found is
kept; it counts only if it lies within eps.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest-L-inf d with w . (t + d) = b and t + d in [0, 1]^d, per row (t, w [N, D], b [N]); where the
    hyperplane cannot be reached inside the box, the d that comes closest."""
    w, b = w.clone(), b.clone()
    sign = 2 * ((w * t).sum(1) - b >= 0) - 1
    w.mul_(sign.unsqueeze(1))
    b.mul_(sign)
    a = (w < 0).float()
    d = (a - t) * (w != 0).float()
    p = a - t * (2 * a - 1)
    indp = torch.argsort(p, dim=1)
    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)
    indp2 = indp.flip((1,))
    ws = w.gather(1, indp2)
    bs2 = -ws * d.gather(1, indp2)
    s = torch.cumsum(ws.abs(), dim=1)
    sb = torch.cumsum(bs2, dim=1) + b0.unsqueeze(1)
    b2 = sb[:, -1] - s[:, -1] * p.gather(1, indp[:, 0:1]).squeeze(1)
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (~c_l)
    lb = torch.zeros(int(c2.sum()), device=t.device)
    ub = torch.full_like(lb, w.shape[1] - 1)
    indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        mid = torch.floor((lb + ub) / 2)
        mid_i = mid.long().unsqueeze(1)
        indcurr = indp_.gather(1, indp_.size(1) - 1 - mid_i)
        b2 = (sb_.gather(1, mid_i) - s_.gather(1, mid_i) * p_.gather(1, indcurr)).squeeze(1)
        c = b_ - b2 > 0
        lb = torch.where(c, mid, lb)
        ub = torch.where(c, ub, mid)
    lb_i = lb.long()
    if c_l.any():
        lmbd = torch.clamp_min((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), min=0).unsqueeze(-1)
        d[c_l] = (2 * a[c_l] - 1) * lmbd
    lmbd = torch.clamp_min((b[c2] - sb[c2, lb_i]) / (-s[c2, lb_i]), min=0).unsqueeze(-1)
    d[c2] = torch.min(lmbd, d[c2]) * a[c2] + torch.max(-lmbd, d[c2]) * (1 - a[c2])
    return d * (w != 0).float()


def _margin_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     y_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t - z_y at x, and its gradient."""
    u = torch.arange(x.shape[0], device=x.device)
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        logits = model(x)
        diff = -(logits[u, y] - logits[u, y_target])
        grad = torch.autograd.grad(diff.sum(), [x])[0]
    return diff.detach(), grad.detach()


def _single_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int, steps: int, alpha_max: float,
                eta: float, beta: float) -> torch.Tensor:
    """One run towards the `target`-th most likely class; the smallest fooling example per sample, else x."""
    with torch.no_grad():
        logits = model(x)
    correct = (logits.argmax(1) == y).nonzero().flatten()
    adv_all = x.clone()
    if correct.numel() == 0:
        return adv_all
    x0 = x[correct]
    y0, y_target = y[correct], logits.sort(dim=-1)[1][:, -target][correct]
    bs, view = x0.shape[0], (-1, *([1] * (x.dim() - 1)))
    adv = x0.clone()
    best = torch.full((bs,), 1e10, device=x.device)
    x1 = x0.clone()
    x0_flat = x0.reshape(bs, -1)
    for _ in range(steps):
        with torch.no_grad():
            df, dg = _margin_and_grad(model, x1, y0, y_target)
            b = -df + (dg * x1).view(bs, -1).sum(dim=-1)
            w = dg.reshape(bs, -1)
            d3 = project_linf(torch.cat((x1.reshape(bs, -1), x0_flat), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
            d1, d2 = d3[:bs].reshape(x1.shape), d3[-bs:].reshape(x1.shape)
            a0 = d3.abs().max(dim=1, keepdim=True)[0].view(view)
            a0 = torch.max(a0, 1e-8 * torch.ones(a0.shape, device=x.device))
            a1, a2 = a0[:bs], a0[-bs:]
            alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros(a1.shape, device=x.device)),
                              alpha_max * torch.ones(a1.shape, device=x.device))
            x1 = ((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha).clamp(0.0, 1.0)
            fooled = (model(x1).argmax(1) != y0).nonzero().flatten()
            if fooled.numel():
                dist = (x1[fooled] - x0[fooled]).reshape(fooled.numel(), -1).abs().max(dim=1)[0]
                closer = dist < best[fooled]
                adv[fooled] = torch.where(closer.view(view), x1[fooled], adv[fooled])
                best[fooled] = torch.where(closer, dist, best[fooled])
                x1[fooled] = x0[fooled] + (x1[fooled] - x0[fooled]) * beta
    found = best < 1e10
    adv_all[correct[found]] = adv[found]
    return adv_all


def fab_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 100,
                 targets: int = 9, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> torch.Tensor:
    """FAB-T. x float [B, C, H, W] in [0, 1], y int64 [B]; returns x_adv like x: for a broken sample the smallest
    fooling example found within eps, else x. Deterministic (AutoAttack runs it without a random start)."""
    if targets < 1:
        raise ValueError(f"targets must be >= 1, got {targets}")
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    adv = x.clone()
    for target in range(2, targets + 2):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            break
        xs, ys = x[idx], y[idx]
        x_adv = _single_run(model, xs, ys, target, steps, alpha_max, eta, beta)
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != ys
        fooled &= (xs - x_adv).abs().reshape(idx.numel(), -1).max(1)[0] <= eps
        robust[idx[fooled]] = False
        adv[idx[fooled]] = x_adv[fooled]
    return adv
