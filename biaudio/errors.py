"""Errors that carry *which file* and *why*, so a failed item becomes a readable reject row.

Every stage raises :class:`BiaudioError` (or a subclass) for bad input instead of returning a
silently wrong result; the build executor catches it per item, records ``stage``/``reason``/
``detail`` in the rejects table, and goes on with the other items.
"""

from __future__ import annotations


class BiaudioError(Exception):
    """Bad input or a failed stage for one item.

    ``reason`` is a short machine-readable slug (``not_4_channels``, ``silent``, ``http_404``...)
    used as the reject reason; ``detail`` is the human sentence.
    """

    def __init__(self, path: str | None, reason: str, detail: str = "", stage: str | None = None):
        self.path = None if path is None else str(path)
        self.reason = reason
        self.detail = detail
        self.stage = stage
        where = f"{self.path}: " if self.path else ""
        msg = f"{where}{reason}" + (f" ({detail})" if detail else "")
        super().__init__(msg)


class MediaError(BiaudioError):
    """A media file cannot be read as required (not 4 channels, truncated, no audio, ...)."""


class ConventionError(BiaudioError):
    """An FOA channel convention is unknown or cannot be determined."""


class RecipeError(BiaudioError):
    """A recipe key is unknown or has a bad value; ``path`` names the recipe, ``reason`` the key."""


class RejectItem(BiaudioError):
    """A filter decided to drop an item (silent, static, speech, no L/R difference...)."""
