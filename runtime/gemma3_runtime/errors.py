"""Errors that mean "the user gave us something wrong" (as opposed to a bug or a crash).

The CLI turns a `UserInputError` into ONE line on stderr and exit code 2 (contract.INVALID_INPUT_EXIT_CODE), so
every module raises it with a message that names the field or file and says what was expected.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input: a path, a flag, a config or a file the user provided. The message is shown as-is, on one line."""


class StorageFullError(Exception):
    """A write found no space left (disk or quota full). The CLI shows the message, one line naming the directory,
    and exits with contract.STORAGE_FULL_EXIT_CODE; what was committed before stays as it was."""
