"""DataFrame -> Markdown or fixed-width text, and the `patchtune eval` table. No torch, no Ray.

Every table a report, notebook or CLI command prints goes through `markdown` or `text`, so cells are
formatted one way everywhere: NaN is "-", floats follow `floats`, anything else is `str(value)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.paper import paper_value
from trainables import vocab
from trainables.vocab import METHODS, Method

# A float format spec for every float cell (".4g") or per column ({"accuracy_pct": ".2f"}); floats in other
# columns print as str(value).
FloatFormat = str | Mapping[str, str] | None

OPTIMIZER_LABELS = {o.value: label for o, label in vocab.OPTIMIZER_LABELS.items()}  # tables, findings


def optimizer_label(optimizer: str) -> str:
    return OPTIMIZER_LABELS.get(optimizer, optimizer)


def cell(value: object, column: str, floats: FloatFormat = None) -> str:
    """One value as table text."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        spec = floats if isinstance(floats, str) else (floats or {}).get(column)
        if spec is not None:
            return format(value, spec)
    return str(value)


def _rows(frame: pd.DataFrame, floats: FloatFormat) -> list[list[str]]:
    # Positional, not by column name: the eval table may repeat a column name (two Adam checkpoints).
    columns = [str(c) for c in frame.columns]
    return [[cell(v, c, floats) for c, v in zip(columns, row, strict=True)]
            for row in frame.itertuples(index=False, name=None)]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")  # a bare pipe would end the Markdown cell


def markdown(frame: pd.DataFrame, floats: FloatFormat = None) -> str:
    """A Markdown (GitHub) table: header, separator, one line per row; `|` in any cell is escaped."""
    header = [_escape(str(c)) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in _rows(frame, floats)]
    return "\n".join(lines)


def text(frame: pd.DataFrame, floats: FloatFormat = None) -> str:
    """A fixed-width text table: columns left-aligned, two spaces apart, a dashed rule under the header,
    no trailing blanks."""
    header = [str(c) for c in frame.columns]
    rows = _rows(frame, floats)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# ------------------------------------------------------------------------------------------ patchtune eval

def eval_label(result: Mapping[str, Any]) -> str:
    """Column name of one evaluated checkpoint: "Undefended", its patch fine-tuning's optimizer, its method, or (a
    model patchtune did not train, a plain state dict) its file's name."""
    if result.get("kind") not in ("pretrain", "finetune"):
        return str(result.get("checkpoint", "model")).replace("\\", "/").rsplit("/", 1)[-1]
    method = result.get("method")
    if method not in (None, Method.PATCH.value):
        return f"{METHODS[Method(method)].label} + {optimizer_label(str(result['optimizer']))}"
    return "Undefended" if result["kind"] == "pretrain" else optimizer_label(str(result["optimizer"]))


def _paper_column(result: Mapping[str, Any]) -> str:
    """The paper's Table 1 column of a checkpoint; Table 1 has no column for another method, so its shows "-"."""
    if result.get("method") not in (None, Method.PATCH.value) or result.get("kind") not in ("pretrain", "finetune"):
        return str(result.get("method") or result.get("kind"))
    return "undefended" if result["kind"] == "pretrain" else str(result["optimizer"])


def eval_table(results: Sequence[Mapping[str, Any]], info: Mapping[str, Any]) -> str:
    """`patchtune eval`'s report: per attack, each checkpoint's accuracy (%) beside the paper's Table 1 value.

    results: one dict per checkpoint with `kind` ("pretrain" | "finetune"), `optimizer`, `method` and
    `accuracy` (attack -> [0, 1]); info: `dataset`, `split`, `n` and `attacks` (attack -> its parameters).
    """
    names = [eval_label(r) for r in results]
    paper = {a: [paper_value(info["dataset"], a, _paper_column(r)) for r in results] for a in info["attacks"]}
    with_paper = any(v is not None for values in paper.values() for v in values)  # the paper covers the data set
    header = ["Attack", "Parameters"] + [f"{n} (ours)" for n in names] + ([f"{n} (paper)" for n in names] if with_paper
                                                                           else [])
    rows = []
    for attack, params in info["attacks"].items():
        desc = ", ".join(f"{k}={v:g}" for k, v in params.items() if k in ("eps", "alpha", "steps"))
        if "steps" in params and params["alpha"] * params["steps"] < params["eps"] - 1e-12:
            desc += " (cannot reach eps)"
        ours = [f"{100 * r['accuracy'][attack]:.2f}" for r in results]
        theirs = ["-" if v is None else f"{v:.2f}" for v in paper[attack]] if with_paper else []
        rows.append([attack.upper() if attack != "clean" else "Clean", desc or "-", *ours, *theirs])
    title = (f"{info['dataset']} {info['split']} split, n={info['n']}, accuracy (%)"
             + ("; paper = Agarwal et al. 2021, Table 1" if with_paper else ""))
    return title + "\n" + text(pd.DataFrame(rows, columns=header))


def attack_text(desc: dict[str, object]) -> str:
    """An attack as its description in best.json says (name, eps, alpha, steps, restarts), flagged where alpha x
    steps cannot reach eps."""
    name = str(desc.get("name", "?"))
    if name == "clean" or "eps" not in desc:
        return name
    eps = float(desc["eps"])  # type: ignore[arg-type]
    if "steps" not in desc:
        return f"{name.upper()}, eps {eps:g}"
    steps, alpha = int(desc["steps"]), float(desc["alpha"])  # type: ignore[call-overload, arg-type]
    restarts = int(desc.get("restarts") or 1)  # type: ignore[call-overload]
    text = f"{name.upper()}-{steps}{f' x{restarts}' if restarts > 1 else ''}, eps {eps:g}, alpha {alpha:g}"
    return text + (f" (cannot reach eps: alpha x steps = {alpha * steps:g})" if alpha * steps < eps - 1e-12 else "")


def test_line(test: dict[str, Any]) -> str:
    """A trial's test-split accuracies (best.json's `test`), each with its attack's strength."""
    return "; ".join(f"{attack_text(test['attacks'].get(k, {'name': k}))}: {100 * v:.2f}%"
                     for k, v in test["accuracy"].items())
