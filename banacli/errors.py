"""User-facing errors: one readable line, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import errno as _errno


class BanaError(Exception):
    """An error caused by the user's input (files, config, arguments).

    The host prints ``str(err)`` as one line and exits with ``exit_code``.
    Name the file or key and the problem in the message.
    """

    exit_code = 1


class ConfigError(BanaError):
    """A bad config key or value; exit code 2, raised before any work starts."""

    exit_code = 2


class DataError(BanaError):
    """Unreadable or inconsistent input data (images, annotations, splits)."""


class ArtifactError(BanaError):
    """A missing, tampered or mismatching artifact (model, labels, manifest)."""


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path(s), the reason and the errno name,
    e.g. ``run/cls/model.safetensors: No space left on device (ENOSPC)``."""

    reason = exc.strerror or str(exc) or type(exc).__name__
    code = _errno.errorcode.get(exc.errno, "") if isinstance(exc.errno, int) else ""
    tail = f" ({code})" if code else ""
    if exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return f"{where}: {reason}{tail}"
    return f"{reason}{tail}"
