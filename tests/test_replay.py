"""The search benchmark: its table built for real here (tiny: the quick space on a few real F-MNIST images), resumed;
the replay of every sampler and scheduler on it, deterministic per seed; the replay's ASHA against Ray Tune's
ASHAScheduler decision for decision; and the report command end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmarks import search_replay, search_table
from benchmarks.replay import Asha, Combo, Config, Table, best_so_far, iqm, replay
from study.settings import SamplerCfg, SchedulerCfg, SearchCfg
from study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = {"configs": 5, "epochs": 2, "noise": 1, "overrides": {"data.limit_train": 120, "data.limit_val": 30}}


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory: pytest.TempPathFactory, base_ckpt: Path) -> tuple[Path, Path, dict[str, float]]:
    """A real table of 5 configurations x 2 epochs (+1 at a second seed), built in two runs: the first stops
    after 2 jobs, the second resumes. Returns (parquet, work dir, the first run's part mtimes)."""
    tmp = tmp_path_factory.mktemp("table")
    out, work = tmp / "table.parquet", tmp / "work"
    kw: dict[str, Any] = dict(preset="quick", design_seed=0, workers=1, out=out, work=work, base=base_ckpt, **TINY)
    first = search_table.build(limit=2, **kw)
    assert first.groupby(["config_id", "seed"]).ngroups == 2
    mtimes = {p.name: p.stat().st_mtime_ns for p in work.glob("c*.json")}
    search_table.build(**kw)
    return out, work, mtimes


@pytest.fixture(scope="module")
def table(tiny_table: tuple[Path, Path, dict[str, float]]) -> Table:
    return Table.from_frame(pd.read_parquet(tiny_table[0]))


@pytest.fixture(scope="module")
def search() -> SearchCfg:
    return load_spec("quick").resolved().search


def test_the_table_holds_every_job_once_with_its_epochs_and_a_strong_score(tiny_table: tuple[Path, Path, dict[str, float]]) -> None:
    out, work, mtimes = tiny_table
    frame = pd.read_parquet(out)
    # resumed: the first run's jobs were not run again
    assert mtimes == {name: (work / name).stat().st_mtime_ns for name in mtimes}
    jobs = frame.groupby(["config_id", "seed"])
    assert sorted(jobs.groups) == [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0), (4, 0)]
    for (_cid, _seed), g in jobs:
        assert g["epoch"].tolist() == list(range(1, len(g) + 1))
        assert len(g) == 2 or g["error"].iloc[-1]
        assert g["strong_acc"].iloc[:-1].isna().all()
        assert g["cost_fwd_passes"].is_monotonic_increasing and g["cost_device_s"].is_monotonic_increasing
        if not g["error"].iloc[-1]:  # the strong attack never scores above the objective's PGD by more than noise
            assert 0 <= g["strong_acc"].iloc[-1] <= g["objective"].iloc[-1] + 0.1
    assert frame["objective"].between(0, 1).all() and (frame["train_time_s"] > 0).all()
    # the design is the study's own space, drawn the same way again
    designed = search_table.design("quick", 5, 0, 2, TINY["overrides"])
    for cid, (config, dists) in enumerate(designed):
        row = frame[frame["config_id"] == cid].iloc[0]
        assert json.loads(row["params"]) == {k: v for k, v in config.items() if k in dists}
        assert row["method"] == config["method"] and row["lr"] == pytest.approx(config["lr"])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["jobs_done"] == record["jobs"] == 6


def test_a_work_dir_of_another_design_is_refused(tiny_table: tuple[Path, Path, dict[str, float]]) -> None:
    _out, work, _ = tiny_table
    proc = subprocess.run([sys.executable, "-m", "benchmarks.search_table", "--configs", "30", "--work", str(work),
                           "--out", str(work / "other.parquet")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "another design" in proc.stderr and "Traceback" not in proc.stderr
    assert not (work / "other.parquet").exists()


@pytest.mark.parametrize("sampler", ["random", "tpe:2", "tpe-uni:2", "gp:2"])
@pytest.mark.parametrize("scheduler", ["fifo", "asha:1:2"])
def test_a_replayed_study_runs_each_configuration_once_and_is_deterministic(
        table: Table, search: SearchCfg, sampler: str, scheduler: str) -> None:
    combo = Combo(search_replay.sampler_of(sampler), search_replay.scheduler_of(scheduler), 2)
    trials = replay(table, search, combo, seed=3)
    assert sorted(t.config for t in trials) == sorted(c.id for c in table.configs)  # the table, used up, once each
    assert [t.compute_s for t in trials] == sorted(t.compute_s for t in trials)
    assert trials == replay(table, search, combo, seed=3)
    by_id = {c.id: c for c in table.configs}
    for t in trials:
        config = by_id[t.config]
        assert t.value == (0.0 if t.state == "FAIL" else config.objective[t.epochs - 1])
        if scheduler == "fifo" and t.state != "FAIL":
            assert t.state == "COMPLETE" and t.epochs == table.epochs
    if scheduler == "fifo":  # random search over the whole table finds its best
        assert max(t.value for t in trials) == table.best
        # compute counts the busy workers only: at the end it is every epoch's seconds, once
        assert trials[-1].compute_s == pytest.approx(sum(sum(c.seconds) for c in table.configs))


def test_a_proposal_is_answered_by_the_nearest_configuration_not_yet_run(table: Table) -> None:
    target = table.configs[2]
    assert table.nearest(target.params, used=set()).id == target.id
    assert table.nearest(target.params, used={target.id}).id != target.id
    distances = table.distances(target.params)
    assert distances[2] == 0 and (np.delete(distances, 2) > 0).all()


def test_different_seeds_propose_differently(table: Table, search: SearchCfg) -> None:
    combo = Combo(SamplerCfg.model_validate({"type": "random"}), SchedulerCfg.model_validate({"type": "fifo"}), 1)
    orders = {tuple(t.config for t in replay(table, search, combo, seed=s)) for s in range(6)}
    assert len(orders) > 1


def _synthetic_table(n: int, epochs: int, seed: int) -> list[Config]:
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n):
        level = rng.uniform(0.1, 0.6)
        curve = tuple(float(np.clip(level + 0.05 * e + rng.normal(0, 0.03), 0, 1)) for e in range(epochs))
        configs.append(Config(i, {}, {}, curve, tuple(float(s) for s in rng.uniform(1, 5, epochs)), False, curve[-1]))
    return configs


@pytest.mark.parametrize(("max_t", "grace", "rf"), [(4, 1, 2), (4, 1, 3), (4, 2, 2), (9, 1, 3), (8, 1, 2)])
def test_our_asha_decides_as_ray_tunes_asha_scheduler(max_t: int, grace: int, rf: int) -> None:
    """Random asynchronous streams of results (trials interleaved, stopped ones dropping out, ties in value)
    through Ray Tune's ASHAScheduler, driven as Tune drives it, and through ours: every decision the same."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    for stream_seed in range(20):
        rnd = random.Random(stream_seed)
        ray_asha = ASHAScheduler(metric="objective", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf)
        ours = Asha(max_t, grace, rf)
        trials = {f"t{i}": Trial("bench", trial_id=f"t{i}", stub=True) for i in range(12)}
        for t in trials.values():
            ray_asha.on_trial_add(None, t)
        it = dict.fromkeys(trials, 0)
        live = list(trials)
        stops = 0
        while live:
            tid = rnd.choice(live)
            it[tid] += 1
            value = round(rnd.random(), 1)  # coarse: ties happen
            result = {"training_iteration": it[tid], "objective": value}
            theirs = ray_asha.on_trial_result(None, trials[tid], result) == TrialScheduler.STOP
            assert ours.on_result(tid, it[tid], value) == theirs, (stream_seed, tid, it[tid])
            if theirs:
                ray_asha.on_trial_complete(None, trials[tid], result)
                ours.on_complete(tid, it[tid], value)
                live.remove(tid)
                stops += it[tid] < max_t
        assert [dict(r) for _, r in ours.rungs] == [dict(r) for _, r in ray_asha._brackets[0]._rungs]
    assert stops > 0


def test_asha_saves_compute_and_concurrency_makes_proposals_blind(search: SearchCfg) -> None:
    """On a synthetic table where low early scores predict low final ones, ASHA spends less than FIFO for the
    same trials; the curves' statistics are what the report uses."""
    from optuna.distributions import json_to_distribution

    # synthetic results on configurations of the quick space, so that proposals map onto them
    designed = search_table.design("quick", 24, 7, 4)
    configs = [Config(c.id, {k: v for k, v in cfg.items() if k in d}, {k: json_to_distribution(v) for k, v in d.items()},
                      c.objective, c.seconds, c.failed, c.strong)
               for c, (cfg, d) in zip(_synthetic_table(24, 4, seed=1), designed, strict=True)]
    tab = Table(configs, 4)
    fifo = Combo(search_replay.sampler_of("random"), search_replay.scheduler_of("fifo"), 2)
    asha = Combo(search_replay.sampler_of("random"), search_replay.scheduler_of("asha:1:2"), 2)
    spent = {name: np.mean([replay(tab, search, c, seed=s)[-1].compute_s for s in range(5)])
             for name, c in (("fifo", fifo), ("asha", asha))}
    assert spent["asha"] < 0.8 * spent["fifo"]
    compute, best = best_so_far(replay(tab, search, fifo, seed=0))
    assert (np.diff(best) >= 0).all() and best[-1] == tab.best
    assert iqm(np.array([[1.0], [2.0], [3.0], [100.0]]), 0)[0] == 2.5


def test_the_report_command_end_to_end(tiny_table: tuple[Path, Path, dict[str, float]], tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    args = ["--table", str(tiny_table[0]), "--seeds", "3", "--workers", "1", "--samplers", "random,tpe:4",
            "--schedulers", "fifo,asha:1:2", "--concurrency", "1,2", "--out", str(out),
            "--figure", str(tmp_path / "anytime.png"), "--traces", str(tmp_path / "traces.parquet")]
    search_replay.main(args)
    text = out.read_text()
    out.unlink()
    search_replay.main([*args, "--report-only"])  # the same report, redrawn from the kept traces
    assert out.read_text() == text
    for combo in ("random + fifo", "tpe(startup 4) + fifo", "random + asha(g1, rf2)", "tpe(startup 4) + asha(g1, rf2)"):
        assert text.count(f"| {combo} |") == 2, combo  # one row per concurrency
    assert "Spearman" in text and (tmp_path / "anytime.png").stat().st_size > 10_000
    # the preset's own combination (quick.yaml's sampler and scheduler) judged in words at each concurrency
    assert text.count("- **max_concurrent") == 2 and "The quick preset's tpe(startup 4) + asha(g1, rf2)" in text
    summary = json.loads(out.with_suffix(".json").read_text())["summary"]
    peer = [r for r in summary if r["sampler"] == "random" and r["scheduler"] == "fifo"]
    assert all(r["ratio"] == 1.0 for r in peer)


@pytest.mark.parametrize(("args", "named"), [
    (["--samplers", "tpe"], "'tpe' is not a sampler"),
    (["--schedulers", "asha:1:1"], "'asha:1:1' is not a scheduler"),
    (["--seeds", "0"], "--seeds"),
    (["--table", "/nonexistent.parquet"], "/nonexistent.parquet"),
])
def test_the_report_command_refuses_bad_arguments_in_one_line(args: list[str], named: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.search_replay", *args, "--out", str(tmp_path / "r.md")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.md").exists()


def test_a_file_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "table.parquet"
    bad.write_text("not parquet")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.search_replay", "--table", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a search table" in proc.stderr and "Traceback" not in proc.stderr


def test_the_sampler_a_spec_names_is_the_one_built() -> None:
    """study/samplers.py builds what the study and the replay ask for: each spec's `sampler:` to its Optuna class,
    TPE multivariate (grouped) unless `multivariate: false`, the GP with its startup trials."""
    import optuna

    from study.samplers import make_sampler

    def build(**cfg: Any) -> optuna.samplers.BaseSampler:
        return make_sampler(SamplerCfg.model_validate(cfg), seed=0)

    tpe = build(type="tpe", n_startup_trials=7)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._multivariate and tpe._group and tpe._n_startup_trials == 7
    uni = build(type="tpe", multivariate=False)
    assert isinstance(uni, optuna.samplers.TPESampler) and not uni._multivariate and not uni._group
    gp = build(type="gp", n_startup_trials=3)
    assert isinstance(gp, optuna.samplers.GPSampler) and gp._n_startup_trials == 3
    assert isinstance(build(type="random"), optuna.samplers.RandomSampler)
    assert isinstance(build(type="nsga2"), optuna.samplers.NSGAIISampler)
