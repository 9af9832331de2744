"""Errors that mean "the user gave us something wrong" (as opposed to a bug or a crash).

The CLI turns a `UserInputError` into ONE line on stderr and exit code 2 (contract.INVALID_INPUT_EXIT_CODE), so
every module raises it with a message that names the field or file and says what was expected.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class UserInputError(Exception):
    """Bad input: a path, a flag, a config or a file the user provided. The message is shown as-is, on one line."""


class StorageFullError(Exception):
    """A write found no space left (disk or quota full). The CLI shows the message, one line naming the directory,
    and exits with contract.STORAGE_FULL_EXIT_CODE; what was committed before stays as it was."""


def storage_full_reason(exc: BaseException, directory: Path, needed: int) -> str | None:
    """Why a failed write into `directory` was a full disk or quota (one line naming it), or None when it was not.

    Writers do not all keep the errno: megatron's checkpoint writer reports a full disk as a CheckpointException
    wrapping torch's "unexpected pos", safetensors as its own error. So besides an ENOSPC/EDQUOT anywhere in the
    exception chain, a failure is put down to space when the file system has less room left than the write needs
    (`needed` bytes): with that little space it cannot succeed.
    """
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT) for c in chain):
        return f"{directory}: no space left on the device or quota full"
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return None
    if usage.free < needed:
        return (
            f"{directory}: no space left on the device ({usage.free:,} bytes free when the write failed, the write "
            f"needs {needed:,})"
        )
    return None
