"""The reproduction's findings: one sentence per claim of the paper (and of ours about its evaluation), each a paired
comparison per seed and per image, and the whole report (`render`: tables, findings, the robust fine-tunes).
No torch, no Ray.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis import grid, stats, tables
from analysis.grid import Cell
from analysis.paper import TABLE1
from analysis.repro_tables import (
    ATTACK_LABELS,
    DATASET_NAMES,
    SAME_IN_EVERY_SEED,
    SETTING_LABELS,
    SETTINGS,
    STRONG_KEY,
    interval,
    model_label,
    robust_measure,
    robust_table,
    settings_table,
    strong_name,
    strong_params,
    table1,
    table2,
)
from analysis.stats import Comparison
from analysis.tables import optimizer_label
from trainables.vocab import Method, decode_outcomes, paper_eps


def _outcomes(results: pd.DataFrame, method: str, key: str, seeds: list[int]) -> np.ndarray | None:
    """seeds x images 0/1 outcomes of `method` under `key` (the `per_image` column), None where any is missing
    (results written before it was recorded)."""
    if "per_image" not in results:
        return None
    rows = results[results.cell == method].set_index("seed")
    strings: list[str] = []
    for seed in seeds:
        cell = rows.at[seed, "per_image"]
        outcome = json.loads(cell).get(key) if isinstance(cell, str) else None
        if not isinstance(outcome, str):
            return None
        strings.append(outcome)
    if len({len(s) for s in strings}) != 1:
        return None
    return np.array([decode_outcomes(s) for s in strings], dtype=float)


def paired(results: pd.DataFrame, a: str, b: str, key: str) -> Comparison:
    """Method a minus method b on `key` in points over the seeds present in both: per image and per seed
    (`stats.seeds_x_images`) where the rows carry per-image outcomes, else the paired t-test over seeds."""
    left = results[results.cell == a].set_index("seed")[key]
    right = results[results.cell == b].set_index("seed")[key]
    common = sorted(left.index.intersection(right.index))
    return _compare(results, (a, key), (b, key), common, left.loc[common], right.loc[common])


def paired_keys(results: pd.DataFrame, method: str, a: str, b: str) -> Comparison:
    """Like `paired`, for two metrics of the same method: a - b, in points."""
    sub = results[results.cell == method].sort_values("seed")
    return _compare(results, (method, a), (method, b), list(sub["seed"]), sub[a], sub[b])


def _compare(results: pd.DataFrame, a: tuple[str, str], b: tuple[str, str], seeds: list[int],
             per_seed_a: pd.Series, per_seed_b: pd.Series) -> Comparison:
    """(method, key) a minus b: per seed and image where both have per-image outcomes, else over seeds."""
    x, y = _outcomes(results, *a, seeds), _outcomes(results, *b, seeds)
    if x is not None and y is not None and x.shape == y.shape:
        return stats.seeds_x_images(x, y)
    return stats.paired(per_seed_a, per_seed_b, scale=100)


def test_detail(comparison: Comparison) -> str:
    """The test behind a finding, in words: which, and over how many seeds (and images)."""
    if comparison.test == "seeds x images":
        return f"seeds x images, n={comparison.n} seeds x {comparison.images} images"
    return f"paired t-test, n={comparison.n} seeds"


def _sentence(claim: str, comparison: Comparison) -> str:
    return stats.verdict_sentence(claim, comparison, detail=test_detail(comparison))

def _opt(cell: Cell) -> str:
    return optimizer_label(cell.optimizer.value if cell.optimizer else "none")

def _at_label(cell: Cell) -> str:
    return f"the paper's {str(cell.paper_attack).upper()}-AT"


def robust_findings(results: pd.DataFrame, dataset: str) -> list[str]:
    """The paper's optimizer question where there is robustness to explain: within each robust fine-tuning
    method, every pair of optimizers (the later in the vocabulary's order against the earlier: "RMSProp beats
    Adam"), then each robust fine-tune against the undefended model; all under the strong PGD at the paper's
    eps, each pair compared per seed and per image (`paired`)."""
    name = DATASET_NAMES.get(dataset, dataset)
    key, measure = robust_measure(results)
    at = f"at eps {paper_eps(dataset):g} ({measure})"
    out = []
    for cells in grid.robust_groups(results):
        method = cells[0].method_label
        for i, earlier in enumerate(cells):
            for later in cells[i + 1:]:
                out.append(_sentence(f"{_opt(later)} beats {_opt(earlier)} under {method} fine-tuning on {name} {at}",
                                     paired(results, later.cell, earlier.cell, key)))
    undefended = grid.undefended_cell(results)
    if undefended is not None:
        out += [_sentence(f"{cell.label} fine-tuning raises robust accuracy over the undefended model on {name} {at}",
                          paired(results, cell.cell, undefended.cell, key))
                for cell in grid.robust_cells(results)]
    return out


def findings(results: pd.DataFrame, dataset: str) -> list[str]:
    """One sentence per claim of the paper (and of ours about its evaluation), each a paired comparison per
    seed and per image (`paired`). "The proposed" method is the Table 2 `proposed` cell; its rivals are the other Table 1 patch
    fine-tunes, the undefended model and the adversarial-training baselines."""
    name = DATASET_NAMES.get(dataset, dataset)
    proposed, undefended = grid.proposed_cell(results), grid.undefended_cell(results)
    out = _optimizer_findings(results, proposed, name) + _patch_findings(results, proposed, undefended, name)
    out += _at_findings(results, proposed, name)
    out.append(matching_setting(results, dataset))
    if STRONG_KEY in results:
        out += _strong_findings(results, proposed, name)
    return out


def _optimizer_findings(results: pd.DataFrame, proposed: Cell | None, name: str) -> list[str]:
    """The paper's optimizer claim: the proposed fine-tune beats the other optimizers' (PGD-10, FGSM)."""
    if proposed is None:
        return []
    rivals = [c for c in grid.table1_cells(results) if c.patch and c != proposed]
    return [_sentence(f"{_opt(proposed)} beats {_opt(other)} under {ATTACK_LABELS[attack]} on {name}",
                      paired(results, proposed.cell, other.cell, f"whitebox/{attack}"))
            for attack in ("pgd", "fgsm") for other in rivals]


def _patch_findings(results: pd.DataFrame, proposed: Cell | None, undefended: Cell | None,
                    name: str) -> list[str]:
    """Patch fine-tuning against the undefended model: more robust, as accurate."""
    if undefended is None:
        return []
    out = [_sentence(f"Patch fine-tuning with {_opt(cell)} raises PGD-10 accuracy over the undefended model "
                     f"on {name}", paired(results, cell.cell, undefended.cell, "whitebox/pgd"))
           for cell in grid.table1_cells(results) if cell.patch]
    if proposed is not None:
        claim = f"Patch fine-tuning keeps clean accuracy ({_opt(proposed)} vs undefended) on {name}"
        out.append(_sentence(claim, paired(results, proposed.cell, undefended.cell, "clean")))
    return out


def _at_findings(results: pd.DataFrame, proposed: Cell | None, name: str) -> list[str]:
    """The paper's Table 2 claim: the proposed fine-tuning beats each adversarial-training baseline."""
    if proposed is None:
        return []
    baselines = [c for c in grid.table2_cells(results) if c.paper_attack is not None]
    return [_sentence(f"The proposed fine-tuning ({_opt(proposed)}) beats {_at_label(at)} under PGD-10 "
                      f"on {name}", paired(results, proposed.cell, at.cell, "whitebox/pgd"))
            for at in baselines]


def _strong_findings(results: pd.DataFrame, proposed: Cell | None, name: str) -> list[str]:
    """Does PGD-10 overstate robustness? For the proposed fine-tuning and for PGD-AT (the usual strong
    baseline): PGD-10 minus the strong attack, per seed."""
    checked = [(proposed, f"the proposed fine-tuning ({_opt(proposed)})")] if proposed is not None else []
    checked += [(c, _at_label(c)) for c in grid.cells(results) if c.method_name == Method.PAPER_PGD_AT.value]
    return [_sentence(f"The paper's PGD-10 overstates the robustness of {label} on {name} "
                      f"(PGD-10 minus strong {strong_name(results)})",
                      paired_keys(results, cell.cell, "whitebox/pgd", STRONG_KEY))
            for cell, label in checked]


def matching_setting(results: pd.DataFrame, dataset: str) -> str:
    """Which evaluation setting, if any, reproduces the paper's PGD-10 numbers for the *defended* models:
    within 3 pt, or the paper's value inside a 95 % CI no wider than +-10 pt."""
    paper = TABLE1.get(dataset, {}).get("pgd", {})
    matches, closest = [], (math.inf, "")
    for cell in grid.table1_cells(results) + grid.table1_cells(results, long=True):
        target = paper.get(str(cell.table1_column))
        if cell.undefended or target is None:
            continue
        for setting in SETTINGS:
            iv = interval(results, cell.cell, f"{setting}/pgd")
            if math.isnan(iv.mean):
                continue
            gap = abs(iv.mean - target)
            text = (f"{SETTING_LABELS[setting]} on {model_label(cell)} "
                    f"({iv.mean:.1f} % vs paper {target:.1f} %)")
            if gap < closest[0]:
                closest = (gap, text)
            if gap <= 3.0 or (not math.isnan(iv.half) and iv.half <= 10.0 and gap <= iv.half):
                matches.append(text)
    if matches:
        return "Settings that reproduce the paper's defended PGD-10 numbers: " + "; ".join(matches) + "."
    if closest[1]:
        return f"No evaluation setting reproduces the paper's defended PGD-10 numbers; closest: {closest[1]}."
    return "No PGD-10 results to compare with the paper."


def power_statement(seeds: int, images: int) -> str:
    """What `seeds` x `images` can detect, said before a reproduction starts (and in its tables)."""
    close, independent = stats.detectable_difference(images, 0.1), stats.detectable_difference(images, 0.5)
    few = (f" With {seeds} seed{'s' if seeds != 1 else ''} the seed-to-seed part has {seeds - 1} degree"
           f"{'s' if seeds != 2 else ''} of freedom" + (": no finding can be decided." if seeds < 2 else
                                                        f" (t quantile {stats.t_quantile(seeds - 1):.1f})."))
    return (f"Power: {seeds} seed{'s' if seeds != 1 else ''} x {images} test images. Every seed scores the same images, "
            f"so more seeds cannot shrink their sampling noise: two models that differ by less than {close:.1f} "
            f"(if they disagree on 10 % of the images) to {independent:.1f} points (independent errors at 50 % "
            f"accuracy) cannot be told apart (80 % power, 5 % level), before any seed-to-seed variation.{few}")


FINDINGS_METHOD = (
    "Each finding compares two models trained from the same seeds and scored on the same test images, at the 5 % "
    "level. Where the results carry per-image outcomes it pairs them per seed and per image (seeds x images: "
    "seed-to-seed variation and the sampling of the test images both widen the interval); older results fall back "
    "to a paired t-test over seeds. \"undecided\" says why no test can decide: too few seeds, every seed giving "
    "the same difference, or every model at 0 % or 100 %.")


def render(results: pd.DataFrame, dataset: str, header: str = "") -> str:
    seeds = sorted(results["seed"].unique())
    parts = [header] if header else []
    strong = ""
    if STRONG_KEY in results:
        steps, restarts = strong_params(results)
        strong = (f"The strong-PGD row is ours only: alpha = 2.5 eps / {steps} steps, {restarts} random "
                  f"start{'s' if restarts > 1 else ''}; ")
    parts += [f"Seeds: {', '.join(map(str, seeds))}. Ours: mean ± 95 % CI half-width over seeds (t distribution), "
              "accuracy (%) on the test split at the paper's attack parameters; white-box, worst case over iterates; "
              f"{SAME_IN_EVERY_SEED}: every seed scored the same (no spread over seeds, which is not certainty). "
              f"{strong}`patchtune audit` adds AutoAttack and the masking checks.", "",
              f"## Table 1 ({dataset})", "", tables.markdown(table1(results, dataset)), "",
              "## Table 2: adversarial training vs the proposed fine-tuning", "", tables.markdown(table2(results, dataset)), "",
              "## PGD-10 under each evaluation setting", "", tables.markdown(settings_table(results, dataset)), "",
              "## Findings", "", FINDINGS_METHOD, "", *[f"- {s}" for s in findings(results, dataset)], ""]
    if grid.robust_cells(results):
        _, measure = robust_measure(results)
        parts += ["## Robust fine-tuning: does the optimizer matter?", "",
                  f"Each method fine-tunes the seed's base at the paper's eps {paper_eps(dataset):g} and lr (the same "
                  "lr for every optimizer, as the paper compared them), for as many epochs as the patch fine-tunes; "
                  f"judged by {measure} at that eps (alpha x steps reaches it). Training compute: seconds on the "
                  "trial's device and passes of one image through the model (attack steps included).", "", tables.markdown(robust_table(results, dataset)), "",
                  *[f"- {s}" for s in robust_findings(results, dataset)], ""]
    return "\n".join(parts)
