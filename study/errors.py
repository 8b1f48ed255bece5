"""The study layer's one-line user errors."""

from __future__ import annotations

from trainables.vocab import UserError


class StudyError(UserError, RuntimeError):
    """A study or reproduction cannot start or resume (a user-facing, one-line problem)."""
