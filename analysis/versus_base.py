"""Is a fine-tuned model better than the base it started from? A paired per-sample comparison on the same
images, and the sentence every summary prints (the study's run summary, `patchtune status`, the report).

No torch, no Ray: per-sample scores come in as lists (1 robust, 0 not; or the fraction of an eps grid a
sample survives), and the records go to best.json as plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis import stats

SPLIT_WORDS = {"val": "validation", "test": "test"}


def compare(trial: Sequence[float], base: Sequence[float], *, split: str, measure: str) -> dict[str, Any]:
    """The record of one comparison: both accuracies, the difference in points with its 95 % interval, the
    test's p and name, and the verdict ("better" only when the test says so at the 5 % level; "undecided"
    with the reason when no test can decide, e.g. both at 0 % on every image)."""
    c = stats.per_sample(trial, base, scale=100.0)
    word = stats.verdict(c.diff, c.p)
    return {
        "split": split, "measure": measure, "n": c.n,
        "trial": 100 * float(np.mean(trial)) if len(trial) else None,
        "base": 100 * float(np.mean(base)) if len(base) else None,
        "diff": c.diff, "lo": c.lo, "hi": c.hi, "p": c.p, "test": c.test,
        "verdict": "undecided" if c.refusal else {"yes": "better", "no": "worse"}.get(word, "not better"),
        "refusal": c.refusal,
    }


def sentence(record: Mapping[str, Any], who: str = "The best trial") -> str:
    """'<who> is better than its base <measure> on 500 validation images: 52.4 % vs 9.6 %, +42.8 pt [+38.1,
    +47.2], McNemar exact p=2e-41.'"""
    r = record
    word = {"better": "better than its base", "worse": "not better than its base (worse)"}.get(
        r["verdict"], "not better than its base")
    where = f"on {r['n']} {SPLIT_WORDS.get(r['split'], r['split'])} images"
    if not r["n"]:
        return f"{who}: no comparison with its base {r['measure']} (no images)."
    if r.get("refusal"):
        return (f"{who} is not better than its base {r['measure']} {where}: {r['trial']:.1f} % vs {r['base']:.1f} %; "
                f"no test can decide ({r['refusal']}).")
    return (f"{who} is {word} {r['measure']} {where}: {r['trial']:.1f} % vs {r['base']:.1f} %, "
            f"{r['diff']:+.1f} pt [{r['lo']:+.1f}, {r['hi']:+.1f}], {r['test']} p={r['p']:.2g}.")


def decisive(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The comparison a verdict rests on: the test split's (audit worst case, first eps) when the study was
    audited, else validation's (on the images the trial was selected on, so optimistic)."""
    vs = entry.get("vs_base") or {}
    tests = vs.get("test") or []
    return dict(tests[0]) if tests else (dict(vs["val"]) if vs.get("val") else None)


def _headline_record(entries: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], dict[str, Any], bool] | None:
    """(entry, record, better) the headline rests on: the first best trial that beats its base, else the best."""
    records = [(e, r) for e in entries if (r := decisive(e)) is not None]
    if not records:
        return None
    winners = [(e, r) for e, r in records if r["verdict"] == "better"]
    e, r = (winners or records)[0]
    return e, r, bool(winners)


def headline(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """One line that leads every summary: whether any best trial beats its base, and by how much."""
    found = _headline_record(entries)
    if found is None:
        return None
    e, r, better = found
    if better:
        return "BETTER THAN THE BASE: " + sentence(r, f"Trial {e['trial_id']}")
    caveat = "" if r["split"] == "test" else " (validation images, the ones it was selected on)"
    return f"NO TRIAL IS BETTER THAN THE BASE{caveat}: " + sentence(r, f"The best trial ({e['trial_id']})")


def verdict(best: Mapping[str, Any] | None) -> str | None:
    """The headline of a study's best.json; None until the study is complete (no best.json yet)."""
    return headline(best["trials"]) if best else None


def lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The headline, then every other comparison of every best trial."""
    found = _headline_record(entries)
    out = [h] if (h := headline(entries)) else []
    for e in entries:
        vs = e.get("vs_base") or {}
        for r in [*([vs["val"]] if vs.get("val") else []), *(vs.get("test") or [])]:
            if found is not None and e is found[0] and r == found[1]:
                continue  # already the headline
            out.append("  " + sentence(r, f"Trial {e['trial_id']}"))
    return out
