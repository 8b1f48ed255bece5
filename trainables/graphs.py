"""Whole attacks replayed as CUDA graphs (GPU only; `perf.PerfCfg.cuda_graphs`).

A small model such as cnn3 leaves the card idle between its many short kernels: PGD-10 is ~600 launches per
batch, each paying the host's dispatch time. A CUDA graph records those launches once and replays them as one.
That needs static shapes and no host syncs, so the graphed attack runs `attacks.pgd` with `compact_every=0`:
every sample steps to the end (fooled samples are not dropped; the first fooling iterate is still kept, so the
result is the same worst case over iterates), and the random start is drawn outside the graph and copied in.
Only full batches of clean images are replayed; the caller ANDs the result with clean correctness.

Graphs are cached per model and per (attack, batch shape). They read the model's parameters in place, so an
optimizer step or `load_state_dict` between replays is seen; replacing a parameter tensor is not.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
from torch import nn

from trainables.attacks import attack_plan, eval_mode, pgd, random_start
from trainables.config import AttackCfg, AttackName
from trainables.perf import Autocast


class GraphedAttack:
    """One attack on batches of one shape: copy in, replay, read `fooled`."""

    def __init__(self, model: nn.Module, cfg: AttackCfg, like: torch.Tensor, autocast: Autocast = nullcontext) -> None:
        if cfg.name is AttackName.CLEAN:
            raise ValueError("the clean pass needs no graph")
        self.cfg, self.plan = cfg, attack_plan(cfg)
        self.x = torch.rand_like(like)  # real-looking inputs for warm-up and capture, never zeros
        self.y = torch.zeros(like.shape[0], dtype=torch.long, device=like.device)
        self.start = self.x.clone()
        self.model, self.autocast = model, autocast
        # Capture needs the lazy work (cuDNN autotuning, workspace allocation) done first, on a side stream.
        side = torch.cuda.Stream(like.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(like.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._attack()
        torch.cuda.current_stream(like.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.fooled = self._attack()

    def _attack(self) -> torch.Tensor:
        with eval_mode(self.model):
            return pgd(self.model, self.x, self.y, eps=self.cfg.eps, alpha=self.plan.alpha, steps=self.plan.steps,
                       random_init=False, start=self.start, last_iterate=self.cfg.last_iterate, compact_every=0,
                       autocast=self.autocast).fooled

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """bool [B]: fooled by some counted iterate of any restart (a fresh tensor)."""
        self.x.copy_(x)
        self.y.copy_(y)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.plan.restarts):
            self.start.copy_(random_start(x, self.cfg.eps, generator) if self.plan.random_init else x)
            self.graph.replay()
            fooled |= self.fooled
        return fooled


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], GraphedAttack]] = weakref.WeakKeyDictionary()


def graphed(model: nn.Module, cfg: AttackCfg, x: torch.Tensor, autocast: Autocast = nullcontext) -> GraphedAttack:
    """The cached graph of `cfg` on `model` for batches shaped like `x` (captured on first use)."""
    per_model = _CACHE.setdefault(model, {})
    key = (cfg, tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
    if key not in per_model:
        per_model[key] = GraphedAttack(model, cfg, x, autocast)
    return per_model[key]
