"""User-facing errors: the CLI prints `error: <message>` on one line and exits non-zero (no traceback)."""

from __future__ import annotations

import re

# scheme://user:password@host...: the password runs to the last '@' of the URL (an unquoted '@' in it too)
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)\S*@")


class MergeMixError(Exception):
    """An input problem the user can fix: bad config, file, checkpoint, ratio or benchmark."""


def mask_secrets(value):
    """`value` with the password of every URL in it shown as `***` (as SQLAlchemy renders a URL that hides it):
    strings, and the strings inside mappings and lists. For anything printed, logged or tracked."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v) for v in value)
    return value
