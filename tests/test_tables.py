"""analysis.stats (intervals, comparisons, verdicts) and analysis.tables (Markdown, text, the eval table)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pandas as pd
import pytest
from scipy import stats as sps

from analysis import stats, tables


def test_t_interval_is_the_t_interval() -> None:
    iv = stats.t_interval(pd.Series([10.0, 20.0, 30.0, math.nan]))
    assert iv.n == 3 and iv.mean == pytest.approx(20.0)
    assert iv.half == pytest.approx(4.303 * 10 / math.sqrt(3), rel=1e-3) and iv.lo == pytest.approx(20 - iv.half)
    one = stats.t_interval([50.0])
    assert one.mean == 50.0 and one.n == 1 and all(math.isnan(x) for x in (one.lo, one.hi, one.half))
    assert math.isnan(stats.t_interval([]).mean)
    assert stats.t_interval([1.0, 2.0, 4.0], confidence=0.99).half > stats.t_interval([1.0, 2.0, 4.0]).half


def test_paired_comparison() -> None:
    a, b = [0.50, 0.61, 0.55, math.nan], [0.40, 0.50, 0.47, 0.3]
    c = stats.paired(a, b, scale=100)
    assert c.n == 3 and c.diff == pytest.approx(29 / 3) and c.lo < c.diff < c.hi
    assert c.p == pytest.approx(sps.ttest_rel(a[:3], b[:3]).pvalue)
    constant = stats.paired([0.5, 0.75], [0.25, 0.5], scale=100)  # exact in binary: no variance, no verdict
    assert constant.diff == 25.0 and constant.refusal and math.isnan(constant.p) and math.isnan(constant.half)
    assert stats.paired([0.5, 0.75], [0.5, 0.75]).refusal == "every seed gives the same difference (+0.0 pt): no variance to test"
    single = stats.paired([0.3], [0.2], scale=100)
    assert single.n == 1 and single.diff == pytest.approx(10.0) and math.isnan(single.p)


def test_welch_comparison() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.5]
    c = stats.welch(a, b)
    se = math.sqrt(pd.Series(a).var() / 4 + pd.Series(b).var() / 3)
    assert c.diff == pytest.approx(2.5 - 2.5 / 3) and c.half == pytest.approx(1.96 * se) and c.n == 7
    assert c.p == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    few = stats.welch([1.0], [0.0, 2.0])
    assert few.diff == 0.0 and math.isnan(few.half) and math.isnan(few.p)


def test_verdict_sentences() -> None:
    assert [stats.verdict(d, p) for d, p in ((1, 0.01), (-1, 0.01), (1, 0.2), (-1, 0.5))] == [
        "yes", "no", "not significantly", "not significantly"]
    c = stats.Comparison(diff=4.94, lo=4.2, hi=5.6, half=0.7, p=0.0012, n=3)
    assert stats.verdict_sentence("A beats B", c, detail="paired t-test, n=3 seeds") == (
        "A beats B: yes, +4.9 pt [+4.2, +5.6], p=0.0012 (paired t-test, n=3 seeds).")
    assert stats.verdict_sentence("A beats B", c, detail="n=4 vs 3", p_label="Welch p").endswith(
        ", Welch p=0.0012 (n=4 vs 3).")
    one = stats.Comparison(diff=2.0, lo=math.nan, hi=math.nan, half=math.nan, p=math.nan, n=1)
    assert stats.verdict_sentence("A beats B", one, detail="-") == (
        "A beats B: undecided (n=1 seed, no test possible; difference +2.0 pt).")


def test_degenerate_seed_tests_refuse_in_words() -> None:
    """The issue's case: two seeds whose differences are both +1.4 pt (500 images move accuracy in 0.2 pt steps)
    once gave "yes, p=1.6e-16". A t-test over seeds with no variance, every model at 0 %, or one seed: refused."""
    shared = stats.paired([0.514, 0.620], [0.500, 0.606], scale=100)
    assert shared.refusal == "every seed gives the same difference (+1.4 pt): no variance to test" and math.isnan(shared.p)
    assert stats.verdict_sentence("RMSProp beats Adam", shared, detail="-") == (
        "RMSProp beats Adam: undecided (every seed gives the same difference (+1.4 pt): no variance to test; "
        "difference +1.4 pt).")
    zeros = stats.paired([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], scale=100)
    assert zeros.refusal == "every model scores 0 % on every seed"
    assert stats.paired([0.5], [0.4], scale=100).refusal == "too few seeds (n=1) for a paired t over seeds"
    assert stats.welch([3.0, 3.0], [3.0, 3.0]).refusal == "every model scores 3 on every trial"
    fine = stats.paired([0.5, 0.62, 0.55], [0.48, 0.6, 0.5], scale=100)
    assert fine.refusal == "" and fine.p == pytest.approx(sps.ttest_rel([0.5, 0.62, 0.55], [0.48, 0.6, 0.5]).pvalue)


def test_markdown_escapes_pipes_and_prints_nan_as_a_dash() -> None:
    frame = pd.DataFrame({"pool": ["flip|noise", "rotate"], "acc": [0.123456, math.nan], "n": [3, 4]})
    assert tables.markdown(frame, floats=".4g").splitlines() == [
        "| pool | acc | n |", "|---|---|---|", "| flip\\|noise | 0.1235 | 3 |", "| rotate | - | 4 |"]
    assert "| 0.123456 |" in tables.markdown(frame)  # unformatted floats print as str()
    assert "| 0.12 |" in tables.markdown(frame, floats={"acc": ".2f"})


def test_text_table_is_fixed_width() -> None:
    frame = pd.DataFrame({"attack": ["Clean", "PGD-10"], "accuracy_pct": [91.234, math.nan], "note": ["", "x"]})
    assert tables.text(frame, floats={"accuracy_pct": ".2f"}).splitlines() == [
        "attack  accuracy_pct  note", "------  ------------  ----", "Clean   91.23", "PGD-10  -             x"]


def test_eval_table() -> None:
    results = [{"kind": "pretrain", "optimizer": "adam", "method": None, "accuracy": {"clean": 0.9, "pgd": 0.05}},
               {"kind": "finetune", "optimizer": "rmsprop", "method": "patch", "accuracy": {"clean": 0.88, "pgd": 0.45}},
               {"kind": "finetune", "optimizer": "adam", "method": "pgd_at", "accuracy": {"clean": 0.8, "pgd": 0.55}},
               {"kind": "finetune", "optimizer": "rmsprop", "method": "patch", "accuracy": {"clean": 0.7, "pgd": 0.5}}]
    info = {"dataset": "fmnist", "split": "test", "n": 500,
            "attacks": {"clean": {}, "pgd": {"eps": 0.3, "alpha": 0.01, "steps": 10, "restarts": 1}}}
    lines = tables.eval_table(results, info).splitlines()
    assert lines[0] == "fmnist test split, n=500, accuracy (%); paper = Agarwal et al. 2021, Table 1"
    assert re.split(r" {2,}", lines[1]) == [
        "Attack", "Parameters", "Undefended (ours)", "RMSProp (ours)", "PGD-AT + Adam (ours)", "RMSProp (ours)",
        "Undefended (paper)", "RMSProp (paper)", "PGD-AT + Adam (paper)", "RMSProp (paper)"]
    assert set(lines[2]) == {"-", " "}
    assert re.split(r" {2,}", lines[4]) == ["PGD", "eps=0.3, alpha=0.01, steps=10 (cannot reach eps)", "5.00", "45.00",
                                                      "55.00", "50.00", "3.06", "50.08", "-", "50.08"]
    # a model patchtune did not train (a plain state dict) is named by its file
    assert tables.eval_label({"kind": "plain", "checkpoint": "models/mine.pt", "method": None}) == "mine.pt"
    # a data set the paper does not cover: no paper columns, eps as a short number
    info = {"dataset": "imagefolder", "split": "test", "n": 30,
            "attacks": {"clean": {}, "pgd": {"eps": 8 / 255, "alpha": 0.01, "steps": 10, "restarts": 1}}}
    lines = tables.eval_table(results[:1], info).splitlines()
    assert lines[0] == "imagefolder test split, n=30, accuracy (%)"
    assert re.split(r" {2,}", lines[4]) == ["PGD", "eps=0.0313725, alpha=0.01, steps=10", "5.00"]


def test_audit_and_report_do_not_import_each_other() -> None:
    code = "import sys, analysis.audit_tables\nsys.exit(1 if 'analysis.report' in sys.modules else 0)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_per_sample_comparison_is_mcnemar_with_the_agresti_min_interval() -> None:
    # 100 images: 30 only the trial gets right, 10 only the base, 20 both, 40 neither
    trial = [1] * 30 + [0] * 10 + [1] * 20 + [0] * 40
    base = [0] * 30 + [1] * 10 + [1] * 20 + [0] * 40
    c = stats.per_sample(trial, base)
    assert c.test == "McNemar exact" and c.n == 100 and c.diff == pytest.approx(20.0)
    assert c.p == pytest.approx(sps.binomtest(30, 40, 0.5).pvalue) and c.p < 0.01
    # Agresti & Min (2005): Wald on the table with 1/2 added to each cell
    centre, half = (30.5 - 10.5) / 102, 1.959964 * math.sqrt(41 - 20**2 / 102) / 102
    assert (c.lo, c.hi) == pytest.approx((100 * (centre - half), 100 * (centre + half)), abs=1e-4)
    same = stats.per_sample([1, 0, 1], [1, 0, 1])
    assert same.diff == 0.0 and same.p == 1.0 and same.lo < 0 < same.hi  # no discordant pair: no evidence
    flipped = stats.per_sample(base, trial)
    assert flipped.diff == pytest.approx(-20.0) and flipped.p == pytest.approx(c.p)
    graded = stats.per_sample([0.5, 1.0, 0.25], [0.0, 0.5, 0.25])  # fractions of an eps grid
    assert graded.test == "paired t over samples" and graded.p == pytest.approx(sps.ttest_rel([0.5, 1.0, 0.25], [0.0, 0.5, 0.25]).pvalue)
    with pytest.raises(ValueError, match="aligned"):
        stats.per_sample([1, 0], [1])
    # both models at 0 % on every image: no test can decide, and the record says so instead of "not better"
    zero = stats.per_sample([0] * 50, [0] * 50)
    assert zero.refusal == "every model scores 0 % on every sample" and math.isnan(zero.p)
    from analysis import versus_base

    record = versus_base.compare([0] * 50, [0] * 50, split="test", measure="under PGD-100")
    assert record["verdict"] == "undecided" and "no test can decide (every model scores 0 %" in versus_base.sentence(record)


def test_better_than_the_base_in_words() -> None:
    from analysis import versus_base

    clear = versus_base.compare([1] * 60 + [0] * 40, [1] * 10 + [0] * 90, split="val", measure="at the worst case")
    assert clear["verdict"] == "better" and clear["trial"] == pytest.approx(60.0) and clear["base"] == pytest.approx(10.0)
    text = versus_base.sentence(clear, "Trial t1")
    assert re.fullmatch(r"Trial t1 is better than its base at the worst case on 100 validation images: 60\.0 % vs 10\.0 %, "
                        r"\+50\.0 pt \[\+\d+\.\d, \+\d+\.\d\], McNemar exact p=\S+\.", text), text
    noise = versus_base.compare([1, 0, 1, 0, 1, 1], [1, 1, 0, 0, 1, 0], split="val", measure="under PGD-10")
    assert noise["verdict"] == "not better"
    assert "is not better than its base under PGD-10 on 6 validation images" in versus_base.sentence(noise)
    worse = versus_base.compare([0] * 50, [1] * 50, split="val", measure="under PGD-10")
    assert "not better than its base (worse)" in versus_base.sentence(worse)
    # the headline: the test comparison decides when there is one; a loser's headline says so first
    on_test = versus_base.compare([1, 0, 1, 0, 1, 1], [1, 1, 0, 0, 1, 0], split="test", measure="at the worst case")
    entries = [{"trial_id": "a", "vs_base": {"val": clear, "test": [on_test]}}]
    assert versus_base.headline(entries).startswith("NO TRIAL IS BETTER THAN THE BASE: The best trial (a) is not better")
    assert versus_base.headline([{"trial_id": "a", "vs_base": {"val": noise}}]).startswith(
        "NO TRIAL IS BETTER THAN THE BASE (validation images, the ones it was selected on)")
    assert versus_base.headline([{"trial_id": "b", "vs_base": {"val": noise, "test": [dict(clear, split="test")]}}]).startswith(
        "BETTER THAN THE BASE: Trial b is better")
    assert versus_base.headline([{"trial_id": "c"}]) is None  # a study written before the comparison existed
    assert len(versus_base.lines(entries)) == 2  # the headline, then the comparison it does not already state
