"""Does the search earn its keep? Every sampler x scheduler x concurrency replayed on the search table
(benchmarks/search_table.py) for many seeds, against random search with FIFO, on a simulated clock.

    .venv/bin/python -m benchmarks.search_replay          # the whole grid, 30 seeds (~25 min on 2 cores)
    .venv/bin/python -m benchmarks.search_replay --seeds 3 --samplers random,tpe:4 --schedulers fifo,asha:1:2

Samplers (`--samplers`): `random`, `tpe:N` (multivariate TPE, N startup trials: the study's), `tpe-uni:N`
(univariate), `gp:N` (Optuna's Gaussian process). Schedulers (`--schedulers`): `fifo`, `asha:G:RF` (grace
period, reduction factor). Each combination runs at each `--concurrency` for `--seeds` seeds, three times a seed:
with the `quick` preset's 8 trials, with 4x that, and until the table is used up (`--gp-trials` caps the GP's,
whose asks grow cubic in the trials).

Writes `--out` (markdown: the table, the ratios, the regrets, cheap vs strong, the defaults the evidence picks)
and the anytime figure beside the docs (`--figure`); the docs page `docs/guide/search.md` shows both.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.replay import Combo, Finished, Table, best_so_far, bootstrap_ci, iqm, replay
from benchmarks.search_table import TABLE
from study.settings import SamplerCfg, SchedulerCfg, SearchCfg
from trainables.atomic import atomic_open, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
REPORT = Path(__file__).with_name("search_replay.md")
FIGURE = ROOT / "docs" / "img" / "search-anytime.png"
QUICK_TRIALS = 8  # the quick preset's num_samples
WITHIN = 0.01  # "found it": within 1 point of the table's best
SAMPLERS = ("random", "tpe:2", "tpe:4", "tpe:8", "tpe:16", "tpe-uni:4", "gp:4")
SCHEDULERS = ("fifo", "asha:1:2", "asha:1:3", "asha:2:2")
GP_SCHEDULERS = ("fifo", "asha:1:2")  # the GP's asks are slow: only beside the default scheduler


def sampler_of(text: str) -> SamplerCfg:
    kind, _, startup = text.partition(":")
    types = {"random": ("random", True), "tpe": ("tpe", True), "tpe-uni": ("tpe", False), "gp": ("gp", True)}
    if kind not in types or (kind != "random" and not startup.isdigit()) or (kind == "random" and startup):
        raise ValueError(f"{text!r} is not a sampler (random, tpe:N, tpe-uni:N, gp:N)")
    name, multivariate = types[kind]
    return SamplerCfg.model_validate({"type": name, "multivariate": multivariate,
                                      **({"n_startup_trials": int(startup)} if startup else {})})


def scheduler_of(text: str) -> SchedulerCfg:
    parts = text.split(":")
    if parts == ["fifo"]:
        return SchedulerCfg.model_validate({"type": "fifo"})
    if len(parts) == 3 and parts[0] == "asha" and all(p.isdigit() for p in parts[1:]) and int(parts[2]) >= 2:
        return SchedulerCfg.model_validate({"type": "asha", "grace_period": int(parts[1]),
                                            "reduction_factor": int(parts[2])})
    raise ValueError(f"{text!r} is not a scheduler (fifo, asha:GRACE:RF with RF >= 2)")


def preset_combo(preset: str) -> tuple[str, str]:
    """The preset's own sampler and scheduler, in this command's notation (`tpe:4`, `asha:1:2`)."""
    from study.spec import load_spec

    spec = load_spec(preset).resolved()
    s, sc = spec.sampler, spec.scheduler
    sampler = ("random" if s.type.value == "random" else
               f"{'tpe' if s.multivariate else 'tpe-uni'}:{s.n_startup_trials}" if s.type.value == "tpe" else
               f"{s.type.value}:{s.n_startup_trials}")
    return sampler, "fifo" if sc.type.value == "fifo" else f"asha:{sc.grace_period}:{sc.reduction_factor}"


@dataclasses.dataclass(frozen=True)
class Task:
    sampler: str
    scheduler: str
    concurrency: int
    seed: int
    trials: int | None  # None: until the table is used up

    def combo(self) -> Combo:
        return Combo(sampler_of(self.sampler), scheduler_of(self.scheduler), self.concurrency)


_STATE: dict[str, Any] = {}


def _init(table_path: str, preset: str, gp_trials: int) -> None:
    from study.spec import load_spec

    _STATE.update(table=Table.from_frame(pd.read_parquet(table_path)), search=load_spec(preset).resolved().search,
                  gp_trials=gp_trials)


def _run(task: Task) -> tuple[Task, list[Finished]]:
    table: Table = _STATE["table"]
    search: SearchCfg = _STATE["search"]
    trials = task.trials or (_STATE["gp_trials"] if task.sampler.startswith("gp") else None)
    return task, replay(table, search, task.combo(), seed=task.seed, trials=trials)


def run_grid(tasks: Sequence[Task], table_path: Path, preset: str, workers: int,
             gp_trials: int) -> dict[Task, list[Finished]]:
    """Every task's replayed study. A GP study "until the table is used up" stops after `gp_trials`."""
    out: dict[Task, list[Finished]] = {}
    t0, every = time.perf_counter(), max(1, len(tasks) // 20)
    if workers == 1:
        _init(str(table_path), preset, gp_trials)
        results: Any = map(_run, tasks)
    else:
        pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                      initargs=(str(table_path), preset, gp_trials))
        results = pool.map(_run, tasks, chunksize=4)
    for i, (task, trials) in enumerate(results, 1):
        out[task] = trials
        if i % every == 0 or i == len(tasks):
            print(f"  replayed {i}/{len(tasks)} studies ({time.perf_counter() - t0:.0f} s)", flush=True)
    if workers != 1:
        pool.shutdown()
    return out


# --------------------------------------------------------------------------------------------------- analysis


def curve(trials: Sequence[Finished], grid: np.ndarray) -> np.ndarray:
    """Best value recorded by each compute of `grid` (0 before the first trial ends)."""
    compute, best = best_so_far(trials)
    idx = np.searchsorted(compute, grid, side="right") - 1
    return np.where(idx >= 0, best[np.clip(idx, 0, None)], 0.0)


def to_target(trials: Sequence[Finished], target: float) -> float:
    """Compute (worker-seconds) when a trial within `WITHIN` of the table's best first ended; inf if none did."""
    for t in trials:
        if t.candidate >= target - 1e-12:
            return t.compute_s
    return float("inf")


def _median_ratio(a: np.ndarray, b: np.ndarray) -> float:
    ma, mb = float(np.median(a)), float(np.median(b))
    return ma / mb if np.isfinite(ma) and np.isfinite(mb) else float("inf")


def summarise(results: dict[Task, list[Finished]], table: Table) -> pd.DataFrame:
    target = table.best - WITHIN
    rows = []
    keys = sorted({(t.sampler, t.scheduler, t.concurrency) for t in results})
    for sampler, scheduler, conc in keys:
        def runs(trials: int | None, s: str = sampler, sc: str = scheduler, c: int = conc) -> list[list[Finished]]:
            return [v for k, v in sorted(results.items(), key=lambda kv: kv[0].seed)
                    if (k.sampler, k.scheduler, k.concurrency, k.trials) == (s, sc, c, trials)]

        full = runs(None)
        hits = np.array([to_target(r, target) for r in full])
        peer = np.array([to_target(r, target) for r in runs(None, "random", "fifo")]) if (
            "random", "fifo", conc) in keys else np.array([float("nan")])
        row: dict[str, Any] = {"sampler": sampler, "scheduler": scheduler, "concurrency": conc, "seeds": len(full),
                               "name": Combo(sampler_of(sampler), scheduler_of(scheduler), conc).name,
                               "to_target_median_s": float(np.median(hits)), "reached": float(np.isfinite(hits).mean()),
                               "ratio": _median_ratio(hits, peer)}
        if len(hits) > 1 and len(peer) > 1:
            rng = np.random.default_rng(0)
            boots = [_median_ratio(hits[rng.integers(0, len(hits), len(hits))], peer[rng.integers(0, len(peer), len(peer))])
                     for _ in range(1000)]
            row["ratio_lo"], row["ratio_hi"] = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
        for label, n in (("8", QUICK_TRIALS), ("32", 4 * QUICK_TRIALS)):
            done = runs(n)
            if not done:
                continue
            regret = np.array([table.best - max(t.candidate for t in r) for r in done])
            lo, hi = bootstrap_ci(regret[:, None], lambda v: iqm(v, 0))
            row[f"regret{label}"], row[f"regret{label}_lo"], row[f"regret{label}_hi"] = (
                float(iqm(regret[:, None], 0)[0]), float(lo[0]), float(hi[0]))
            row[f"compute{label}_s"] = float(np.mean([r[-1].compute_s for r in done]))
        rows.append(row)
    return pd.DataFrame(rows)


def cheap_vs_strong(frame: pd.DataFrame, images: int, n_boot: int = 2000) -> dict[str, Any]:
    """How the per-epoch objective (the study's cheap PGD) ranks the table's configurations against the strong
    attack on the same images, with bootstrap intervals over configurations; and the seed noise."""
    from scipy.stats import spearmanr

    last = frame[(frame["seed"] == 0)].sort_values("epoch").groupby("config_id").tail(1)
    last = last[last["error"] == ""]
    cheap, paper, strong = (last[c].to_numpy(float) for c in ("objective", "val_paper_pgd_acc", "strong_acc"))
    rng = np.random.default_rng(0)

    def overlap(a: np.ndarray, b: np.ndarray, k: int = 5) -> int:
        return len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k]))

    def ci(stat: Any) -> list[float]:
        vals = []
        for _ in range(n_boot):
            i = rng.integers(0, len(cheap), len(cheap))
            vals.append(stat(i))
        return [float(v) for v in np.nanpercentile(vals, [2.5, 97.5])]

    out: dict[str, Any] = {
        "configs": len(last),
        "rho": float(spearmanr(cheap, strong).statistic),
        "rho_ci": ci(lambda i: spearmanr(cheap[i], strong[i]).statistic),
        "rho_paper": float(spearmanr(paper, strong).statistic),
        "rho_paper_ci": ci(lambda i: spearmanr(paper[i], strong[i]).statistic),
        "top5": overlap(cheap, strong), "top5_ci": ci(lambda i: overlap(cheap[i], strong[i])),
        "top5_paper": overlap(paper, strong),
        "gap_pt": float(100 * np.mean(cheap - strong)), "gap_max_pt": float(100 * np.max(cheap - strong)),
        "paper_gap_pt": float(100 * np.mean(paper - strong)),
    }
    pairs = frame.sort_values("epoch").groupby(["config_id", "seed"]).tail(1).pivot(
        index="config_id", columns="seed", values="objective").dropna()
    if pairs.shape[1] >= 2 and len(pairs) >= 3:
        d = pairs[0] - pairs[1]
        out.update(noise_configs=len(pairs), noise_sd_pt=float(100 * np.sqrt(np.mean(d**2) / 2)),
                   noise_rho=float(spearmanr(pairs[0], pairs[1]).statistic))
    best = float(last["objective"].max())
    out["images"] = images
    out["binomial_se_pt"] = float(100 * np.sqrt(best * (1 - best) / images)) if images else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------- output


def figure(results: dict[Task, list[Finished]], table: Table, summary: pd.DataFrame, path: Path, label: str,
           preset: tuple[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concs = sorted({t.concurrency for t in results})
    top = max((sum(c.seconds) for c in table.configs), default=1.0) * len(table.configs)
    first = min(r[0].compute_s for r in results.values() if r)
    grid = np.geomspace(max(first, 1.0), max(max(r[-1].compute_s for r in results.values()), 2.0), 400)
    fig, axes = plt.subplots(1, len(concs), figsize=(6.2 * len(concs), 4.6), sharey=True, squeeze=False)
    for ax, conc in zip(axes[0], concs, strict=True):
        shown = _shown(summary, conc, preset)
        for (sampler, scheduler), style in shown.items():
            runs = [v for k, v in results.items() if (k.sampler, k.scheduler, k.concurrency, k.trials)
                    == (sampler, scheduler, conc, None)]
            if not runs:
                continue
            curves = np.stack([curve(r, grid) for r in runs])
            mid = iqm(curves, 0)
            lo, hi = bootstrap_ci(curves, lambda v: iqm(v, 0), n_boot=300)
            hours = grid / 3600
            name = Combo(sampler_of(sampler), scheduler_of(scheduler), conc).name
            ax.plot(hours, 100 * mid, label=f"{name}{style[1]}", color=style[0], lw=1.8)
            ax.fill_between(hours, 100 * lo, 100 * hi, color=style[0], alpha=0.15, lw=0)
        ax.axhline(100 * table.best, color="black", lw=0.8, ls="--")
        ax.axhline(100 * (table.best - WITHIN), color="grey", lw=0.8, ls=":")
        ax.set_title(f"max_concurrent {conc}: IQM of {len(runs)} seeds, bootstrap 95 % band")
        ax.set_xlabel("simulated compute, core-hours (training + per-epoch scoring; log scale)")
        ax.set_xscale("log")
        ax.set_xlim(grid[0] / 3600, min(grid[-1], top) / 3600)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("the study's best trial so far (%)")
    axes[0][0].set_ylim(max(0, 100 * table.best - 25), 100 * table.best + 3)
    fig.suptitle(f"Objective: {label}. Replayed on the search table (dashed: its best configuration; dotted: 1 point "
                 f"below)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _shown(summary: pd.DataFrame, conc: int, preset: tuple[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """Random search with FIFO (the peer), TPE with FIFO, random search with ASHA, the preset's own combination,
    and the best combination at this concurrency."""
    lines = {("random", "fifo"): ("tab:gray", " (peer)"), ("tpe:4", "fifo"): ("tab:blue", ""),
             ("random", "asha:1:2"): ("tab:orange", ""), preset: ("tab:red", " (the quick preset's)")}
    best = _best(summary, conc)
    if best is not None and best not in lines:
        lines[best] = ("tab:green", " (best)")
    return lines


def _best(summary: pd.DataFrame, conc: int) -> tuple[str, str] | None:
    """The combination that reaches within 1 point of the table's best for the least compute (median over seeds,
    among those that reach it in at least half of them), ties broken by the regret at 8 trials."""
    s = summary[(summary["concurrency"] == conc) & (summary["reached"] >= 0.5)]
    if s.empty:
        return None
    s = s.sort_values(["to_target_median_s", "regret8"] if "regret8" in s else ["to_target_median_s"])
    return str(s.iloc[0]["sampler"]), str(s.iloc[0]["scheduler"])


def _fmt_ci(v: float, lo: float, hi: float, scale: float = 100) -> str:
    return f"{scale * v:.1f} [{scale * lo:.1f}, {scale * hi:.1f}]"


def _verdicts(summary: pd.DataFrame, preset: tuple[str, str]) -> list[str]:
    """Per concurrency, in words: the preset's combination against random search with FIFO and against the
    combination that reaches the table's best for the least compute."""
    out = []
    for conc in sorted(summary["concurrency"].unique()):
        rows = summary[summary["concurrency"] == conc].set_index(["sampler", "scheduler"])
        if preset not in rows.index or ("random", "fifo") not in rows.index:
            continue
        p, peer = rows.loc[preset], rows.loc[("random", "fifo")]
        best_key = _best(summary, int(conc)) or preset
        b = rows.loc[best_key]
        same = best_key == preset
        overlap = same or (p["ratio_lo"] <= b["ratio_hi"] and b["ratio_lo"] <= p["ratio_hi"])
        out.append(
            f"- **max_concurrent {conc}.** The quick preset's {p['name']} reaches within 1 point of the table's best "
            f"for {p['ratio']:.2f}x the compute random search with FIFO needs [{p['ratio_lo']:.2f}, "
            f"{p['ratio_hi']:.2f}]. After 8 trials its regret is {100 * p['regret8']:.1f} points "
            f"[{100 * p['regret8_lo']:.1f}, {100 * p['regret8_hi']:.1f}] for {p['compute8_s'] / 3600:.2f} core-hours; "
            f"random search with FIFO's is {100 * peer['regret8']:.1f} [{100 * peer['regret8_lo']:.1f}, "
            f"{100 * peer['regret8_hi']:.1f}] for {peer['compute8_s'] / 3600:.2f}. "
            + ("It is also the combination that gets there for the least compute." if same else
               f"The combination that gets there for the least compute is {b['name']} ({b['ratio']:.2f}x "
               f"[{b['ratio_lo']:.2f}, {b['ratio_hi']:.2f}], regret after 8 trials {100 * b['regret8']:.1f} points): "
               + ("its interval overlaps the preset's, so the two are not told apart by these seeds."
                  if overlap else "its interval does not overlap the preset's.")))
    return out


def markdown(summary: pd.DataFrame, table: Table, meta: dict[str, Any], strong: dict[str, Any], label: str,
             seeds: int, figure_rel: str, preset: tuple[str, str]) -> str:
    lines = [
        "<!-- written by `python -m benchmarks.search_replay`; do not edit by hand -->",
        f"**The table** (`benchmarks/search_table.parquet`, built by `python -m benchmarks.search_table` at "
        f"{meta.get('commit', '?')}): {meta.get('configs')} configurations of the `{meta.get('preset')}` space "
        f"(a seeded random design) x {meta.get('epochs')} epochs, the first {meta.get('noise_configs')} at a second "
        f"seed; {meta.get('job_seconds_sum', 0) / 3600:.1f} core-hours of trials ({meta.get('machine', '')}). "
        f"Objective: {label}. Its best configuration scores {100 * table.best:.1f} %.",
        "",
        f"![anytime curves]({figure_rel})",
        "",
        "**The quick preset's search against the alternatives:**",
        "",
        *_verdicts(summary, preset),
        "",
        f"**Compute to reach within 1 point of the table's best, and regret**, {seeds} seeds per row. *Ratio*: the "
        "median compute to get there over random search with FIFO's at the same concurrency, with a bootstrap 95 % "
        "interval (below 1: cheaper). *Reached*: the share of seeds that got there before the table ran out (ASHA can "
        "stop the best configuration early). *Regret*: the table's best minus the study's best trial (the best of its "
        "trials that ran to the end, as `patchtune run` picks it), in points, IQM "
        "over seeds [bootstrap 95 %], after the quick preset's 8 trials and after 32, with the mean compute those "
        "studies spent.",
        "",
        "| concurrency | sampler + scheduler | compute to within 1 pt (median) | reached | ratio vs random + FIFO | "
        "regret at 8 trials (pt) | compute at 8 | regret at 32 trials (pt) | compute at 32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.sort_values(["concurrency", "to_target_median_s", "regret8"]).iterrows():
        ratio = (f"{r['ratio']:.2f} [{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}]"
                 if np.isfinite(r["ratio"]) and "ratio_lo" in r and np.isfinite(r["ratio_hi"]) else
                 f"{r['ratio']:.2f}" if np.isfinite(r["ratio"]) else "not reached")
        reach = f"{r['to_target_median_s'] / 3600:.2f} h" if np.isfinite(r["to_target_median_s"]) else "-"
        lines.append(
            f"| {r['concurrency']} | {r['name']} | {reach} | {100 * r['reached']:.0f} % | {ratio} | "
            f"{_fmt_ci(r['regret8'], r['regret8_lo'], r['regret8_hi'])} | {r['compute8_s'] / 3600:.2f} h | "
            f"{_fmt_ci(r['regret32'], r['regret32_lo'], r['regret32_hi'])} | {r['compute32_s'] / 3600:.2f} h |")
    s = strong
    noise = (f" Training noise: over the {s['noise_configs']} configurations run at two seeds, the objective's "
             f"standard deviation is {s['noise_sd_pt']:.1f} points (Spearman between the seeds {s['noise_rho']:.2f})."
             if "noise_sd_pt" in s else "")
    lines += [
        "",
        f"**Cheap vs strong.** On the {s['configs']} configurations' last epoch, the per-epoch objective ({label}) "
        f"ranks them against the strong attack on the same {s['images']} images (PGD-50 x3, Madry's step) with "
        f"Spearman's rho {s['rho']:.3f} [{s['rho_ci'][0]:.3f}, {s['rho_ci'][1]:.3f}] (bootstrap over "
        f"configurations), and its top 5 shares {s['top5']} of 5 with the strong top 5 "
        f"[{s['top5_ci'][0]:.0f}, {s['top5_ci'][1]:.0f}]. The paper's PGD-10 (alpha x steps = eps) ranks them with "
        f"rho {s['rho_paper']:.3f} [{s['rho_paper_ci'][0]:.3f}, {s['rho_paper_ci'][1]:.3f}], top-5 overlap "
        f"{s['top5_paper']}. The objective overstates the strong score by {s['gap_pt']:.1f} points on average (at "
        f"most {s['gap_max_pt']:.1f}); the paper's PGD-10 by {s['paper_gap_pt']:.1f}.{noise} An accuracy near the "
        f"best on {s['images']} images has a binomial standard error of {s['binomial_se_pt']:.1f} points.",
    ]
    return "\n".join(lines) + "\n"


TRACE_KEYS = ("sampler", "scheduler", "concurrency", "seed", "trials")


def save_traces(results: dict[Task, list[Finished]], path: Path) -> None:
    rows = [{**{k: getattr(task, k) for k in TRACE_KEYS}, **dataclasses.asdict(t)}
            for task, trials in results.items() for t in trials]
    frame = pd.DataFrame(rows)
    frame["trials"] = frame["trials"].fillna(-1).astype(int)  # -1: until the table was used up
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        frame.to_parquet(f, index=False)


def load_traces(path: Path) -> dict[Task, list[Finished]]:
    frame = pd.read_parquet(path)
    fields = [f.name for f in dataclasses.fields(Finished)]
    out: dict[Task, list[Finished]] = {}
    for key, g in frame.groupby(list(TRACE_KEYS), sort=False):
        sampler, scheduler, conc, seed, trials = key
        task = Task(str(sampler), str(scheduler), int(conc), int(seed), None if int(trials) < 0 else int(trials))
        out[task] = [Finished(**{k: r[k] for k in fields}) for r in g.to_dict("records")]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--preset", default="quick", help="the preset whose search space the table holds")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    parser.add_argument("--gp-schedulers", default=",".join(GP_SCHEDULERS),
                        help="the schedulers the GP sampler runs with (its asks are slow)")
    parser.add_argument("--concurrency", default="2,8")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--gp-trials", type=int, default=48, help="the GP's studies stop after this many trials")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=REPORT, help="the markdown report")
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--traces", type=Path, default=ROOT / "runs" / "search_replay" / "traces.parquet",
                        help="every replayed study's trials, kept so that --report-only can redraw the report")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from --traces, replaying nothing")
    args = parser.parse_args(argv)
    try:
        samplers = [s for s in args.samplers.split(",") if s and sampler_of(s)]
        schedulers = [s for s in args.schedulers.split(",") if s and scheduler_of(s)]
        gp_schedulers = [s for s in args.gp_schedulers.split(",") if s and scheduler_of(s)]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        concs = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency {args.concurrency!r}: comma-separated integers")
    if any(c < 1 for c in concs) or args.seeds < 1 or args.workers < 1 or args.gp_trials < 1:
        parser.error("--concurrency, --seeds, --workers and --gp-trials must be at least 1")
    if not args.table.is_file():
        parser.error(f"--table {str(args.table)!r}: no such file (build it: python -m benchmarks.search_table)")
    try:
        frame = pd.read_parquet(args.table)
        table = Table.from_frame(frame)
    except Exception as exc:  # pyarrow's and our own: a file that is not the table
        parser.error(f"--table {str(args.table)!r} is not a search table: {type(exc).__name__}: {exc}")
    meta_path = args.table.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    from study.spec import load_spec

    spec = load_spec(args.preset, meta.get("overrides")).resolved()  # as the table was built
    objective = spec.objective.pgd()
    label = (f"PGD-{objective.steps} (alpha {objective.alpha:g}) accuracy at eps {objective.eps:g} on the validation "
             f"images")

    combos = [(s, sc) for s in samplers for sc in (gp_schedulers if s.startswith("gp") else schedulers)]
    if ("random", "fifo") not in combos:
        combos.insert(0, ("random", "fifo"))  # the peer every ratio is against
    tasks = [Task(s, sc, c, seed, n) for s, sc in combos for c in concs for seed in range(args.seeds)
             for n in (QUICK_TRIALS, 4 * QUICK_TRIALS, None)]
    t0 = time.perf_counter()
    if args.report_only:
        if not args.traces.is_file():
            parser.error(f"--report-only: no traces at {str(args.traces)!r} (run without --report-only first)")
        results = load_traces(args.traces)
    else:
        print(f"replaying {len(tasks)} studies ({len(combos)} combinations x {len(concs)} concurrencies x {args.seeds} "
              f"seeds x 3 lengths) on {len(table.configs)} configurations", flush=True)
        results = run_grid(tasks, args.table, args.preset, args.workers, args.gp_trials)
        save_traces(results, args.traces)
    summary = summarise(results, table)
    with warnings.catch_warnings():  # a bootstrap resample of a tiny table can be constant: rho is NaN there
        warnings.simplefilter("ignore")
        strong = cheap_vs_strong(frame, spec.data.limit_val or 0)
    preset = preset_combo(args.preset)
    figure(results, table, summary, args.figure, label, preset)
    rel = os.path.relpath(args.figure, (ROOT / "docs" / "guide"))
    seeds = len({t.seed for t in results})
    text = markdown(summary, table, meta, strong, label, seeds, rel, preset)
    with atomic_open(args.out, "w") as f:
        f.write(text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(
        {"summary": summary.to_dict("records"), "cheap_vs_strong": strong, "seeds": args.seeds}, indent=1,
        default=float) + "\n")
    print(text)
    print(f"{args.out}, {args.figure} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
