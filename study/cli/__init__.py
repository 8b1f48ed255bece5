"""The `patchtune` command: one small module per command, each flag a view of one setting (`flags`).

Every user mistake ends as one line `patchtune <command>: error: ...` naming the bad value, exit status 2,
before any data is loaded or file written. Heavy imports (torch, Ray) happen inside the commands so that
`--help` and argument errors stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from study.cli import (
    audit_command,
    eval_command,
    finetune_command,
    pretrain_command,
    reproduce_command,
    study_commands,
    tool_commands,
)
from study.cli.flags import EXIT_USAGE, Parser, join_negative_values
from trainables.vocab import UserError

COMMANDS = (pretrain_command, finetune_command, eval_command, audit_command, study_commands, reproduce_command,
            tool_commands)


def build_parser() -> Parser:
    parser = Parser(prog="patchtune", description="Hyperparameter studies (Ray Tune + Optuna) that fine-tune "
                                                  "pretrained CNNs for adversarial robustness.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args))
    except UserError as exc:  # every kind a user can fix (they all derive from it), caught without importing torch
        print(f"patchtune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"patchtune {args.command}: interrupted", file=sys.stderr)
        return 130
