"""Command-line flags as views of the settings: each flag is one field of one settings model, parsed and checked
with that field's own type and range, its help text the field's description and its default the model's. A flag
that is not given is None ("not given"), so the model fills in its default. `FLAGS` records every flag's setting
(the suite checks that each maps to one and carries no default of its own).

Every user mistake ends as one line naming the bad value, exit status 2, before any work starts.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined

from trainables.config.spine import Settings, config_error, field_path_of, nested, value_type
from trainables.vocab import UserError

EXIT_USAGE = 2
M = TypeVar("M", bound=Settings)


class UsageError(UserError):
    """A user mistake detected after argument parsing (bad combination, missing file, bad checkpoint...)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; users asked for one line that names the bad value.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# (command, flag) -> "Model.path": every flag of every command and the setting it is a view of.
FLAGS: dict[tuple[str, str], str] = {}


def _default_text(info: Any) -> str:
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is None or value is ... or value is PydanticUndefined:
        return ""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v.value if isinstance(v, enum.Enum) else v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


class Flags:
    """The flags of one command, each the view of one setting."""

    def __init__(self, parser: argparse.ArgumentParser, command: str) -> None:
        self.parser, self.command = parser, command
        self.views: dict[str, tuple[type[Settings], str]] = {}  # dest -> (model, dotted path)

    def add(self, model: type[Settings], path: str, flag: str | None = None, *, default: str | None = None,
            metavar: str | None = None, empty: str | None = None) -> None:
        """`flag` (default: --<field name>) for `model`'s setting at `path`; `default` describes the default where
        it depends on something else than the model (a checkpoint, the data set); `empty` is the word that gives a
        list setting no entries."""
        info = field_path_of(model, path)
        flag = flag or "--" + path.rsplit(".", 1)[-1].replace("_", "-")
        dest = flag.lstrip("-").replace("-", "_")
        kind = value_type(info.annotation)
        description = info.description or ""
        if "(null: " in description:  # the description says what not giving it means
            help_text = description.replace("(null: ", "(default: ")
        else:
            shown = default if default is not None else _default_text(info)
            help_text = description + (f" (default: {shown})" if shown else "")
        kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            kwargs.update(type=str.lower, choices=[str(m.value) for m in kind])
        elif typing.get_origin(kind) is tuple and _enum_items(kind) is not None:
            enum_type = _enum_items(kind)
            assert enum_type is not None
            kwargs["type"] = choice_list([str(m.value) for m in enum_type], path.rsplit(".", 1)[-1].rstrip("s"),
                                         empty=empty)
            kwargs["metavar"] = metavar or "A,B,..."
        elif typing.get_origin(kind) is tuple:
            kwargs.update(nargs="+", type=_scalar(typing.get_args(kind)[0]))
        else:
            kwargs["type"] = _scalar(typing.Annotated[(info.annotation, *info.metadata)] if info.metadata
                                     else info.annotation)
        if metavar and "metavar" not in kwargs:
            kwargs["metavar"] = metavar
        self.parser.add_argument(flag, **kwargs)
        self.views[dest] = (model, path)
        FLAGS[(self.command, flag)] = f"{model.__name__}.{path}"

    def given(self, args: argparse.Namespace, model: type[Settings]) -> dict[str, Any]:
        """The settings of `model` given on the command line, as nested keyword values."""
        return nested({path: tuple(value) if isinstance(value, list) else value
                       for dest, (owner, path) in self.views.items()
                       if owner is model and (value := getattr(args, dest, None)) is not None})

    def build(self, args: argparse.Namespace, model: type[M]) -> M:
        """`model` from the flags given; the model fills in every other default."""
        return model.parse(self.given(args, model))


def _enum_items(kind: Any) -> type[enum.Enum] | None:
    args = typing.get_args(kind)
    inner = value_type(args[0]) if args else None
    return inner if isinstance(inner, type) and issubclass(inner, enum.Enum) else None


def _scalar(annotation: Any) -> Callable[[str], Any]:
    """A parser of one value for a field typed `annotation` (constraints included): the text read as the field's
    Python type, then validated by pydantic; an argparse error names the value and what was expected."""
    adapter: TypeAdapter[Any] | None = None  # built on first use: every command's flags are declared on each call
    base = value_type(annotation)
    reader: Callable[[str], Any] = int if base is int else float if base is float else str

    def parse(text: str) -> Any:
        try:
            value = reader(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if reader is int else 'a number'}, "
                                             f"got {text!r}") from None
        nonlocal adapter
        adapter = adapter or TypeAdapter(annotation)
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(str(config_error(exc, BaseModel))) from None

    parse.__name__ = getattr(base, "__name__", "value")  # argparse names the type in "invalid <type> value"
    return parse


def choice_list(choices: Sequence[str], what: str, empty: str | None = None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        if empty is not None and empty in items:
            if len(items) > 1:
                raise argparse.ArgumentTypeError(f"{text!r}: {empty!r} stands alone")
            return []
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got an empty {what}")
        for item in items:
            if item not in choices:
                raise argparse.ArgumentTypeError(f"unknown {what} {item!r} (choose from {', '.join(choices)})")
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"{what} lists an entry twice: {text!r}")
        return items

    return parse


# ------------------------------------------------------------------------------------------- files


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


def readable_dir(value: str | None, flag: str = "--data-root") -> str | None:
    if value is None:
        return None
    p = Path(value)
    if not p.is_dir():
        raise UsageError(f"{flag} {value!r} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise UsageError(f"{flag} {value!r} is not readable")
    return str(p)


def require_files(*paths: str | None) -> None:
    """Refuses a missing checkpoint before the handler imports torch: a typo is answered at once, not in seconds."""
    for path in paths:
        if path is not None and not Path(path).is_file():
            raise UsageError(f"checkpoint not found: {path}")


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


def say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def device(name: str) -> Any:
    from trainables.perf import pick_device

    try:
        return pick_device(name)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"--device {name!r}: {exc}") from None

