"""Small helpers shared by the CLI command modules."""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable

import typer

#: largest frame side accepted on the command line (libx264's limit is 16384; a frame buffer of
#: 8192x8192 rgb24 is already 200 MB, and nothing in a dataset needs more)
MAX_SIDE = 8192


def parse_size(s: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``640x360``); even sizes only, because H.264 yuv420p needs them; at most
    :data:`MAX_SIDE` per side, so a typo cannot ask for terabytes of frame buffers."""
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError as e:
        raise typer.BadParameter(f"size must look like 640x360, got {s!r}") from e
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise typer.BadParameter(f"size must be positive and even (yuv420p), got {s!r}")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise typer.BadParameter(f"size must be at most {MAX_SIDE}x{MAX_SIDE}, got {s!r}")
    return w, h


def refuse_overwrite(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], option: str = "--out") -> None:
    """Exit 2 (bad options) when ``out`` names one of the command's inputs: no command may write
    over what it reads (``biaudio render IN --out IN`` would replace the 360° source)."""
    from biaudio.media.ffpath import same_file  # here: biaudio.media imports numpy, --help stays fast

    for what, p in inputs.items():
        if p is not None and same_file(out, p):
            raise typer.BadParameter(f"{out} is the {what}; choose another output file (inputs are never overwritten)",
                                     param_hint=f"'{option}'")


def os_error_line(e: OSError) -> str:
    """``<file>: <why> (<fix>)`` for an OSError, in the project's one-line error format."""
    import errno as _errno

    where = e.filename if e.filename is not None else ""
    why = e.strerror or str(e)
    fix = {
        _errno.ENOSPC: "free some space and rerun",
        _errno.EDQUOT: "free some space and rerun",
        _errno.EROFS: "the file system is read-only: choose a writable folder",
        _errno.EACCES: "no permission: choose a folder you can write, or fix its permissions",
        _errno.EPERM: "no permission: choose a folder you can write, or fix its permissions",
        _errno.ENOENT: "check the path",
        _errno.EISDIR: "a folder is where a file is expected: give a file",
        _errno.ENOTDIR: "a file is where a folder is expected: give a folder",
        _errno.EEXIST: "a file is where a folder is expected: give a folder",
    }.get(e.errno or 0)
    if e.errno == _errno.ENOENT and str(where) in ("ffmpeg", "ffprobe"):
        return f"{where}: not found on PATH (install ffmpeg, e.g. apt-get install ffmpeg)"
    line = f"{os.fsdecode(where)}: {why}" if where else why
    return line + (f" ({fix})" if fix else "")


def guard_errors(fn: Callable) -> Callable:
    """Wrap a command so an error nobody caught becomes one line on stderr and exit 1, never a
    traceback: an OSError (read-only folder, full disk, missing ffmpeg), a broken SQLite file, or
    a :class:`biaudio.errors.BiaudioError`. Commands that document another code catch their own."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from biaudio.errors import BiaudioError

        try:
            return fn(*args, **kwargs)
        except OSError as e:
            msg = os_error_line(e)
        except sqlite3.Error as e:
            msg = f"SQLite: {e}"
        except BiaudioError as e:
            msg = str(e)
        if kwargs.get("as_json") or kwargs.get("json_out"):
            sys.stdout.write(json.dumps({"ok": False, "error": msg, "exit_code": 1}) + "\n")
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(1)

    return wrapper


def guard_app(app: typer.Typer) -> None:
    """Apply :func:`guard_errors` to every command of ``app`` and of its sub-apps."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "__wrapped__", None):
            info.callback = guard_errors(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_app(group.typer_instance)


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
