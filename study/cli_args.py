"""The `patchtune` command's argument types and argparse adjustments: every value checked as it is parsed,
with a one-line error naming it. Choices derive from the Enums in `trainables.vocab`."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from trainables.vocab import (
    Arch,
    AttackName,
    Dataset,
    Method,
    Optimizer,
    PatchOp,
    SplitName,
    UserError,
    values,
)

EXIT_USAGE = 2


class UsageError(UserError):
    """A user mistake detected after argument parsing (bad combination, missing file, bad checkpoint...)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; users asked for one line that names the bad value.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------------------- argument types


def number(kind: Callable[[str], float], cond: Callable[[float], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or not cond(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_float = number(float, lambda v: v > 0, "a number > 0")
unit_float = number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
open_unit_float = number(float, lambda v: 0 < v < 1, "a number in (0, 1)")
warmup_float = number(float, lambda v: 0 <= v < 1, "a share of the training steps in [0, 1)")
positive_int = number(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = number(int, lambda v: v >= 0, "an integer >= 0")
any_int = number(int, lambda v: True, "an integer")


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got an empty {what}")
        for item in items:
            if item not in choices:
                raise argparse.ArgumentTypeError(f"unknown {what} {item!r} (choose from {', '.join(choices)})")
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"{what} lists an entry twice: {text!r}")
        return items

    return parse


DATASETS = values(Dataset)
OPTIMIZERS = values(Optimizer)
OPS = values(PatchOp)
ATTACKS = values(AttackName)
ARCHS = values(Arch)
SPLITS = (SplitName.TEST.value, SplitName.VAL.value)  # what `eval` and `audit` may score (never train)
METHODS = values(Method)
# The paper's adversarial-training baselines at its attack parameters (one per attack, e.g. pgd-at).
DEFENSES = ("patch", *(f"{a.value}-at" for a in AttackName if a is not AttackName.CLEAN))


def writable_target(path: str, flag: str) -> Path:
    """Check, without creating anything, that `path` can be written later."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path!r} is a directory, expected a file path")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path!r}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"{flag} {path!r}: {ancestor} is not writable")
    return target


def data_root(value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value)
    if not p.is_dir():
        raise UsageError(f"--data-root {value!r} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise UsageError(f"--data-root {value!r} is not readable")
    return str(p)



_NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """`--lr -1e-3` -> `--lr=-1e-3`: argparse would take '-1e-3' for an option and hide the real mistake."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_NUMBER.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out
