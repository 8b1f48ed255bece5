"""The paper's Table 1 / Table 2 beside ours (mean and 95 % CI over seeds) and plain findings sentences.

Input: a reproduction's results frame, one row per (seed, method) with columns `clean`, `ttt/clean` and
`<setting>/<attack>` (see trainables/variants.py) as accuracies in [0, 1]. No torch, no Ray.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.paper import TABLE1, TABLE2

ATTACKS = ("fgsm", "ifgsm", "pgd")
ATTACK_LABELS = {"clean": "Clean", "fgsm": "FGSM", "ifgsm": "IFGSM", "pgd": "PGD-10"}
STRONG_KEY = "strong/pgd"  # PGD with alpha * steps >= 2 eps and restarts (study/reproduce.py): not the paper's
STRONG_LABEL = "strong PGD-100 x5 (ours only)"
TABLE1_COLUMNS = {"undefended": "undefended", "patch_adam": "adam", "patch_rmsprop": "rmsprop"}
TABLE2_COLUMNS = {"fgsm_at": "fgsm_at", "ifgsm_at": "ifgsm_at", "pgd_at": "pgd_at", "patch_rmsprop": "proposed"}
SETTINGS = ("whitebox", "transfer", "softmax", "trainmode", "normeps", "ttt", "ttt_eot")
SETTING_LABELS = {
    "whitebox": "white-box", "transfer": "transfer from base", "softmax": "softmax-output loss",
    "trainmode": "train-mode attack", "normeps": "eps in normalised units", "ttt": "test-time transform",
    "ttt_eot": "test-time transform + EOT",
}


def mean_ci(values: pd.Series | np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95 % t interval, in percent (NaN half-width for one seed)."""
    from scipy import stats

    v = 100 * pd.Series(values).dropna().astype(float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v.iloc[0]), math.nan
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def fmt(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(half) else f"{mean:.2f} ± {half:.2f}"


def _column(results: pd.DataFrame, method: str, key: str) -> pd.Series:
    return results.loc[results["method"] == method].sort_values("seed")[key]


def table1(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Rows: Clean, FGSM, IFGSM, PGD-10. Per column: ours (mean ± 95 % CI, %) and the paper's."""
    paper = TABLE1.get(dataset, {})
    rows = []
    for attack in ("clean", *ATTACKS):
        row: dict[str, str] = {"Attack": ATTACK_LABELS[attack]}
        for method, column in TABLE1_COLUMNS.items():
            key = "clean" if attack == "clean" else f"whitebox/{attack}"
            row[f"{column} (ours)"] = fmt(*mean_ci(_column(results, method, key)))
            value = paper.get(attack, {}).get(column)
            row[f"{column} (paper)"] = "-" if value is None else f"{value:.2f}"
        rows.append(row)
    if STRONG_KEY in results:
        rows.append(_strong_row(results, TABLE1_COLUMNS))
    return pd.DataFrame(rows)


def _strong_row(results: pd.DataFrame, columns: dict[str, str]) -> dict[str, str]:
    row = {"Attack": STRONG_LABEL}
    for method, column in columns.items():
        row[f"{column} (ours)"] = fmt(*mean_ci(_column(results, method, STRONG_KEY)))
        row[f"{column} (paper)"] = "-"
    return row


def table2(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Adversarial training vs the proposed fine-tuning; the paper's Table 2 exists for CIFAR-10 only."""
    rows = []
    for attack in ATTACKS:
        row: dict[str, str] = {"Attack": ATTACK_LABELS[attack]}
        for method, column in TABLE2_COLUMNS.items():
            row[f"{column} (ours)"] = fmt(*mean_ci(_column(results, method, f"whitebox/{attack}")))
            value = TABLE2.get(attack, {}).get(column) if dataset == "cifar10" else None
            row[f"{column} (paper)"] = "-" if value is None else f"{value:.2f}"
        rows.append(row)
    if STRONG_KEY in results:
        rows.append(_strong_row(results, TABLE2_COLUMNS))
    return pd.DataFrame(rows)


LONG_COLUMNS = {"patch_adam_long": "adam", "patch_rmsprop_long": "rmsprop"}


def settings_table(results: pd.DataFrame, dataset: str, attack: str = "pgd") -> pd.DataFrame:
    """One column per evaluation setting for `attack`: which, if any, reproduces the paper's numbers.
    The `(long)` rows are the same defenses after a much longer fine-tune (the paper's 20 GPU-minutes)."""
    rows = []
    cells = [(m, c, c) for m, c in TABLE1_COLUMNS.items()]
    cells += [(m, c, f"{c} (long)") for m, c in LONG_COLUMNS.items() if m in set(results["method"])]
    for method, column, label in cells:
        row: dict[str, str] = {"model": label}
        for setting in SETTINGS:
            row[SETTING_LABELS[setting]] = fmt(*mean_ci(_column(results, method, f"{setting}/{attack}")))
        value = TABLE1.get(dataset, {}).get(attack, {}).get(column)
        row["paper"] = "-" if value is None else f"{value:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def paired(results: pd.DataFrame, a: str, b: str, key: str) -> tuple[float, float, float, float, int]:
    """Mean difference a - b in points, its 95 % CI and the paired t-test p over seeds present in both."""
    from scipy import stats

    left = results[results.method == a].set_index("seed")[key]
    right = results[results.method == b].set_index("seed")[key]
    common = left.index.intersection(right.index)
    d = 100 * (left.loc[common] - right.loc[common]).astype(float)
    n = len(d)
    if n < 2:
        diff = float(d.mean()) if n else math.nan
        return diff, math.nan, math.nan, math.nan, n
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    p = float(stats.ttest_rel(left.loc[common], right.loc[common]).pvalue) if d.std(ddof=1) > 0 else (
        0.0 if d.mean() != 0 else 1.0)
    return float(d.mean()), float(d.mean()) - half, float(d.mean()) + half, p, n


def _sentence(claim: str, diff: float, lo: float, hi: float, p: float, n: int) -> str:
    if n < 2:
        return f"{claim}: undecided (n={n} seed{'s' if n != 1 else ''}; difference {diff:+.1f} pt, no test possible)."
    verdict = "yes" if diff > 0 and p < 0.05 else "no" if p < 0.05 else "not significantly"
    return f"{claim}: {verdict}, {diff:+.1f} pt [{lo:+.1f}, {hi:+.1f}], p={p:.2g} (paired t-test, n={n} seeds)."


def findings(results: pd.DataFrame, dataset: str) -> list[str]:
    name = {"fmnist": "F-MNIST", "cifar10": "CIFAR-10", "imagenette": "Imagenette"}.get(dataset, dataset)
    out = []
    for attack in ("pgd", "fgsm"):
        label = ATTACK_LABELS[attack]
        out.append(_sentence(f"RMSProp beats Adam under {label} on {name}",
                             *paired(results, "patch_rmsprop", "patch_adam", f"whitebox/{attack}")))
    for method, label in (("patch_adam", "Adam"), ("patch_rmsprop", "RMSProp")):
        out.append(_sentence(f"Patch fine-tuning with {label} raises PGD-10 accuracy over the undefended model on {name}",
                             *paired(results, method, "undefended", "whitebox/pgd")))
    out.append(_sentence(f"Patch fine-tuning keeps clean accuracy (RMSProp vs undefended) on {name}",
                         *paired(results, "patch_rmsprop", "undefended", "clean")))
    for at in ("fgsm_at", "ifgsm_at", "pgd_at"):
        out.append(_sentence(f"The proposed fine-tuning (RMSProp) beats {at.replace('_at', '').upper()}-AT under PGD-10 on {name}",
                             *paired(results, "patch_rmsprop", at, "whitebox/pgd")))
    out.append(matching_setting(results, dataset))
    if STRONG_KEY in results:
        for method, label in (("patch_rmsprop", "the proposed fine-tuning (RMSProp)"), ("pgd_at", "PGD-AT")):
            out.append(_sentence(f"The paper's PGD-10 overstates the robustness of {label} on {name} "
                                 "(PGD-10 minus strong PGD-100 x5)",
                                 *paired_keys(results, method, "whitebox/pgd", STRONG_KEY)))
    return out


def paired_keys(results: pd.DataFrame, method: str, a: str, b: str) -> tuple[float, float, float, float, int]:
    """Like `paired`, for two metrics of the same method: a - b over seeds, in points."""
    sub = results[results.method == method]
    both = pd.concat([pd.DataFrame({"method": "a", "seed": sub["seed"], "value": sub[a]}),
                      pd.DataFrame({"method": "b", "seed": sub["seed"], "value": sub[b]})])
    return paired(both, "a", "b", "value")


def matching_setting(results: pd.DataFrame, dataset: str) -> str:
    """Which evaluation setting, if any, reproduces the paper's PGD-10 numbers for the *defended* models:
    within 3 pt, or the paper's value inside a 95 % CI no wider than +-10 pt."""
    paper = TABLE1.get(dataset, {}).get("pgd", {})
    matches, closest = [], (math.inf, "")
    for method, column in (("patch_adam", "adam"), ("patch_rmsprop", "rmsprop"),
                           ("patch_adam_long", "adam"), ("patch_rmsprop_long", "rmsprop")):
        target = paper.get(column)
        if target is None:
            continue
        for setting in SETTINGS:
            mean, half = mean_ci(_column(results, method, f"{setting}/pgd"))
            if math.isnan(mean):
                continue
            gap = abs(mean - target)
            label = f"{column} (long)" if method.endswith("_long") else column
            text = f"{SETTING_LABELS[setting]} on {label} ({mean:.1f} % vs paper {target:.1f} %)"
            if gap < closest[0]:
                closest = (gap, text)
            if gap <= 3.0 or (not math.isnan(half) and half <= 10.0 and gap <= half):
                matches.append(text)
    if matches:
        return "Settings that reproduce the paper's defended PGD-10 numbers: " + "; ".join(matches) + "."
    if closest[1]:
        return f"No evaluation setting reproduces the paper's defended PGD-10 numbers; closest: {closest[1]}."
    return "No PGD-10 results to compare with the paper."


def markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render(results: pd.DataFrame, dataset: str, header: str = "") -> str:
    seeds = sorted(results["seed"].unique())
    parts = [header] if header else []
    parts += [f"Seeds: {', '.join(map(str, seeds))}. Ours: mean ± 95 % CI half-width over seeds (t distribution), "
              "accuracy (%) on the test split at the paper's attack parameters; white-box, worst case over iterates. "
              "The strong-PGD row (where present) is ours only: alpha = 2.5 eps / 100 steps, 5 restarts; "
              "`patchtune audit` adds AutoAttack and the masking checks.", "",
              f"## Table 1 ({dataset})", "", markdown_table(table1(results, dataset)), "",
              "## Table 2: adversarial training vs the proposed fine-tuning", "", markdown_table(table2(results, dataset)), "",
              "## PGD-10 under each evaluation setting", "", markdown_table(settings_table(results, dataset)), "",
              "## Findings", "", *[f"- {s}" for s in findings(results, dataset)], ""]
    return "\n".join(parts)
