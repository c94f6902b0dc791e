"""Small helpers shared by the CLI command modules."""

from __future__ import annotations

import typer


def parse_size(s: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``640x360``); even sizes only, because H.264 yuv420p needs them."""
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError as e:
        raise typer.BadParameter(f"size must look like 640x360, got {s!r}") from e
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise typer.BadParameter(f"size must be positive and even (yuv420p), got {s!r}")
    return w, h
