"""User-facing errors: one readable line, a non-zero exit, never a traceback."""

from __future__ import annotations


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
