"""Every option the `patchtune` parser accepts, per command, read from the parser itself."""

from __future__ import annotations

import argparse

from study.cli import build_parser


def command_options() -> dict[str, dict[str, argparse.Action]]:
    """command -> every option string it accepts (`--x`, `--no-x`, `-h`, `--help`) -> its argparse action."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {command: {flag: action for action in parser._actions for flag in action.option_strings}
            for command, parser in sub.choices.items()}
