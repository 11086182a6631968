"""Resource limits for untrusted inputs and the one error type that reports a refused input.

The limits themselves are configured in ``params.yaml`` (``data.limits``, typed as
:class:`detoxops.config.DataLimits`); every refusal names the limit, the value found and the ``--set`` that
raises it, so a legitimate large dataset is one flag away and an archive or pixel bomb is a clear error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detoxops.config import DataLimits

__all__ = ["InputLimitError", "default_limits", "limit_error"]


class InputLimitError(ValueError):
    """An input is larger than a configured limit (a ``ValueError``, so callers that report bad input report it)."""


def default_limits() -> DataLimits:
    from detoxops.config import DataLimits

    return DataLimits()


def limit_error(where: str, what: str, found: int, key: str, limit: int) -> InputLimitError:
    """``<where>: <what> is <found>, over data.limits.<key> = <limit>; raise it with --set …``."""
    suggestion = 1 << max(int(found) - 1, 1).bit_length()  # the next power of two at or above what was found
    return InputLimitError(
        f"{where}: {what} is {found:,}, over the limit data.limits.{key} = {limit:,} (a safeguard against "
        f"archive / pixel bombs). If the input is trusted, raise it: --set data.limits.{key}={suggestion} "
        f"(or edit data.limits in params.yaml)"
    )
