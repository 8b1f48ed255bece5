"""Audit reports (`patchtune-audit/1` dicts from `patchtune audit` or a study's audit.json) as tables and text.

No torch: this reads the JSON the audit wrote.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis import tables
from trainables.vocab import Component, values

ROW_LABELS = {
    "clean": "Clean",
    "paper_fgsm": "FGSM (paper)",
    "paper_ifgsm10": "IFGSM-10, alpha 0.01 (paper; cannot reach eps > 0.1)",
    "paper_pgd10": "PGD-10, alpha 0.01 (paper; cannot reach eps > 0.1)",
    "autoattack": "AutoAttack (standard)",
}


# AutoAttack's standard version, the reference the audit's labels compare with (trainables.audit.AuditCfg's defaults)
AUTOATTACK_STANDARD: dict[str, Any] = {"components": list(values(Component)), "square_queries": 5000}


# The audit's rows in its own order, by name prefix; the per-sample worst case comes after them all.
ROW_KINDS = ("clean", "paper_", "strong_pgd", "autoattack")
WORST = "Worst case (per sample, all rows)"


def row_kind(name: str) -> int:
    return next((i for i, kind in enumerate(ROW_KINDS) if name.startswith(kind)), len(ROW_KINDS))


def row_label(name: str, params: Mapping[str, Any]) -> str:
    if name == "autoattack" and params.get("components") is not None:
        parts = [] if list(params["components"]) == AUTOATTACK_STANDARD["components"] else [", ".join(params["components"])]
        queries = params.get("square_queries")
        if "square" in params["components"] and queries not in (None, AUTOATTACK_STANDARD["square_queries"]):
            parts.append(f"Square {queries} queries")
        return f"AutoAttack ({'; '.join(parts)})" if parts else ROW_LABELS[name]
    if name in ROW_LABELS:
        return ROW_LABELS[name]
    if name.startswith("strong_pgd"):
        return f"PGD-{params.get('steps')} x{params.get('restarts')} restarts, {_step_text(params)}"
    return name


def _step_text(params: Mapping[str, Any]) -> str:
    """The strong PGD's step grows with eps, so it is shown as a share of eps: audits at several eps then share one
    row (alpha = eps/20, not 0.005 at eps 0.1 and 0.015 at eps 0.3)."""
    alpha, eps = float(params.get("alpha", 0)), params.get("eps")
    if not eps or not alpha:
        return f"alpha {alpha:.3g}"
    ratio = float(eps) / alpha
    return f"alpha = eps/{round(ratio)}" if abs(ratio - round(ratio)) < 1e-6 else f"alpha = {alpha / float(eps):.3g}·eps"


def rows_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """One line per attack: accuracy (%) with its 95 % Wilson interval, measured max |delta|, time, note."""
    out = []
    for r in report["rows"]:
        lo, hi = r["ci95"]
        out.append({
            "attack": row_label(r["name"], r["params"]),
            "accuracy_pct": 100 * r["acc"],
            "ci95_pct": f"[{100 * lo:.1f}, {100 * hi:.1f}]",
            "max_linf": r["max_linf"],
            "seconds": r["seconds"],
            "note": r.get("note", ""),
        })
    lo, hi = report["worst_case_ci95"]
    out.append({"attack": WORST, "accuracy_pct": 100 * report["worst_case_acc"],
                "ci95_pct": f"[{100 * lo:.1f}, {100 * hi:.1f}]", "max_linf": math.nan,
                "seconds": report["seconds"], "note": ""})
    return pd.DataFrame(out)


def bars_frame(reports: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> pd.DataFrame:
    """Long frame for `plots.audit_bars`: model, attack, whether it is one of the paper's, accuracy and its
    interval in percent."""
    out = []
    for label, rep in zip(labels, reports, strict=True):
        rows = [*rep["rows"], {"name": "worst", "params": {}, "acc": rep["worst_case_acc"], "ci95": rep["worst_case_ci95"]}]
        for r in rows:
            name = "Worst case" if r["name"] == "worst" else row_label(r["name"], r["params"])
            out.append({"model": f"{label} (eps {rep['eps']:g})", "attack": name, "paper": r["name"].startswith("paper_"),
                        "accuracy_pct": 100 * r["acc"], "ci_lo_pct": 100 * r["ci95"][0], "ci_hi_pct": 100 * r["ci95"][1]})
    return pd.DataFrame(out)


def checks_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"check": c["name"], "status": c["status"], "detail": c["detail"]} for c in report["checks"]])


def side_by_side(reports: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> pd.DataFrame:
    """Paper-parameter vs strong-attack accuracy (%) of several audited models, one column each."""
    cols, kinds = {}, {WORST: len(ROW_KINDS)}
    for label, rep in zip(labels, reports, strict=True):
        cols[f"{label} (eps {rep['eps']:g})"] = rows_frame(rep).set_index("attack")["accuracy_pct"]
        for r in rep["rows"]:
            kinds.setdefault(row_label(r["name"], r["params"]), row_kind(r["name"]))
    # rows in the audit's own order (clean, paper, strong, AutoAttack, worst case), not pandas' sorted union
    order = sorted(kinds, key=kinds.__getitem__)
    return pd.DataFrame(cols).reindex(order).reset_index().rename(columns={"index": "attack"})


def headline(report: Mapping[str, Any]) -> str:
    paper = next((r for r in report["rows"] if r["name"] == "paper_pgd10"), None)
    lo, hi = report["worst_case_ci95"]
    fails = [c["name"] for c in report["checks"] if c["status"] == "FAIL"]
    warns = [c["name"] for c in report["checks"] if c["status"] == "WARN"]
    text = (f"eps {report['eps']:g}, n={report['n']}: clean {100 * report['clean_acc']:.2f} %, "
            + (f"paper PGD-10 {100 * paper['acc']:.2f} %, " if paper else "")
            + f"worst case {100 * report['worst_case_acc']:.2f} % [{100 * lo:.1f}, {100 * hi:.1f}] — masking checks "
            + report["verdict"])
    if fails:
        text += f" (FAIL: {', '.join(fails)})"
    if warns:
        text += f" (WARN: {', '.join(warns)})"
    if paper and paper["acc"] - report["worst_case_acc"] > max(0.005, 1 / max(report["n"], 1)):
        # Not a masking problem (the strong attacks work), but the paper-parameter number is no robustness number.
        text += (f". The paper's PGD-10 overstates robustness by {100 * (paper['acc'] - report['worst_case_acc']):.1f} pt: "
                 "quote the worst case")
    return str(text)


def render_text(report: Mapping[str, Any], title: str = "") -> str:
    rows = tables.text(rows_frame(report), floats={"accuracy_pct": ".2f", "max_linf": ".3f", "seconds": ".1f"})
    checks = tables.text(checks_frame(report))
    head = f"{title}\n" if title else ""
    return f"{head}{headline(report)}\n\n{rows}\n\n{checks}"
