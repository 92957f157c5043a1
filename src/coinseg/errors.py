"""The errors a user can fix. The CLI prints these as one line and exits with status 2; anything else is a bug
and keeps its traceback.

Every subclass names what is wrong and where: the file, the manifest row, the settings key or the option.
"""

from __future__ import annotations


class CoinsegError(Exception):
    """Base of every user-fixable error (bad input, bad option, bad run folder)."""


class UsageError(CoinsegError):
    """A command-line option or argument is invalid (the message names the option)."""


class RunError(CoinsegError):
    """A run directory, output folder or checkpoint problem (the message names the path)."""
