"""The one base class of user errors: bad input, config or environment that a user fixes, never a bug.

Entry points catch :class:`BbstError` at one boundary (``pipelines/cli.py`` and every script's ``main``), print
``bbst <command>: error: <message>`` plus the hint when there is one, and exit with code 2. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class BbstError(Exception):
    """A user-facing error: the message names the file, flag or key and the value; ``hint`` says what to do."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        return super().__str__()


class InputError(BbstError):
    """A command-line input that cannot work (missing file, wrong kind of path, value out of range)."""


class MissingInputError(BbstError, FileNotFoundError):
    """A file or folder the user named (flag, config key or list entry) does not exist; the message names it."""


class BadInputError(BbstError, ValueError):
    """A file the user named exists but cannot be used (wrong format, undecodable, missing columns)."""
