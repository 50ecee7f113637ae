"""One exception type for everything a user can cause, so the CLI can print one line and pick an exit code."""

from __future__ import annotations

import os

# Exit codes shared by every subcommand (documented in the README).
EXIT_OK = 0
EXIT_INPUT_FAILED = 1  # at least one input could not be processed; the rest were
EXIT_USAGE = 2  # the command could not run as asked (bad option, model or weights unavailable)
EXIT_INTERNAL = 3  # a bug in cvtool: one line, and --debug for the traceback
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`| head`)


class CvtoolError(Exception):
    """A failure the user can fix, carrying a one-line message and, where it has one, the file at fault."""

    exit_code = EXIT_USAGE

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InputError(CvtoolError):
    """One input is bad (unreadable, not an image, too large); the batch goes on without it."""

    exit_code = EXIT_INPUT_FAILED


class WeightsError(CvtoolError):
    """Weights cannot be had: missing offline, failed hash check, refused pickled code, wrong shapes."""


class UsageError(CvtoolError):
    """An option or argument the command cannot honour."""
