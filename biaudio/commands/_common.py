"""Small helpers shared by the CLI command modules."""

from __future__ import annotations

import re

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


_LIST_ITEM = re.compile(r"^(?:[-*•]|\d+[.)])\s")


def unwrap_help(text: str | None) -> str | None:
    """Join the hard-wrapped lines of each help paragraph into one line.

    Why: our docstrings are wrapped at ~100 columns for the source, and typer's rich help keeps
    every newline and then wraps again at the terminal width, which leaves ragged half lines.
    Indented lines (examples) and list items keep their own lines; blank lines separate paragraphs."""
    if not text:
        return text
    out: list[str] = []
    for line in text.strip("\n").splitlines():
        s = line.rstrip()
        joinable = s and not s[0].isspace() and not _LIST_ITEM.match(s)
        prev = out[-1] if out else ""
        if joinable and prev and not prev[0].isspace():
            out[-1] = f"{prev} {s}"
        else:
            out.append(s)
    return "\n".join(out)


def tidy_help(app: typer.Typer) -> None:
    """Apply :func:`unwrap_help` to every command of ``app`` and of its sub-apps (call after registering)."""
    import inspect

    for info in app.registered_commands:
        info.help = unwrap_help(info.help or (inspect.getdoc(info.callback) if info.callback else None))
    for group in app.registered_groups:
        if group.typer_instance is not None:
            tidy_help(group.typer_instance)
