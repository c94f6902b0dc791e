"""The one error line of the `visaudio` commands and its exit codes."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(msg: str, code: int = 1) -> NoReturn:
    """One line on stderr and the documented exit status: 1 an input, checkpoint or run folder
    that cannot be used (the message names it and the fix), 2 an option value out of range."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def os_error(e: OSError) -> str:
    """An OSError as one line naming the file, not a traceback."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"
