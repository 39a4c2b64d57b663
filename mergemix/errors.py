"""User-facing errors: the CLI prints `error: <message>` on one line and exits non-zero (no traceback)."""


class MergeMixError(Exception):
    """An input problem the user can fix: bad config, file, checkpoint, ratio or benchmark."""
