"""Write a file under a temporary sibling name, then rename it over the final name.

Why one helper: every output of the build (media, previews, manifest, state, caches, archive
entries) must be either the old file or the new one after a crash or a full disk, never half of
one, and the engine must recognise a killed run's leftovers by name (``TEMP_MARKER``, a leading
dot) to sweep them. The rename is atomic only within one folder, so the temporary is a sibling.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A file name is a temporary (not yet renamed) output if it matches this; the engine deletes such
# leftovers of a killed run before it starts.
TEMP_MARKER = ".tmp-"

_counter = itertools.count()


def temp_path(final: Path) -> Path:
    """Temporary sibling of ``final`` (same folder, so ``os.replace`` is an atomic rename).

    Hidden (leading dot) and tagged with ``TEMP_MARKER`` + pid, so a crashed run's leftovers are
    recognisable and two processes never share one temporary name.
    """
    final = Path(final)
    return final.with_name(f".{final.name}{TEMP_MARKER}{os.getpid()}")


def _unique_temp(final: Path, keep_suffix: bool) -> Path:
    # pid first (a worker finds its own temporaries by ``TEMP_MARKER + pid``), then host and a
    # per-process counter: processes on other machines writing into one shared folder (Ray
    # workers, the fetch archive), and threads of one process, never share a name; the final
    # suffix stays last only when asked (``keep_suffix``: ffmpeg and numpy choose the format by
    # it); otherwise the name does not end like the final one, so a ``*.json`` glob over a folder
    # of records never picks up a killed writer's temporary
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    tag = f"{TEMP_MARKER}{os.getpid()}-{host}-{next(_counter)}"
    return final.with_name(f".{final.stem}{tag}{final.suffix}" if keep_suffix else f".{final.name}{tag}")


@contextmanager
def atomic_path(final: Path | str, *, mode: int | None = None, fsync: bool = False,
                keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success rename it to ``final``.

    ``mode``: permissions set before the rename (tools that write the temporary, e.g. ``mkstemp``
    users, may create it 0600). ``fsync``: flush the file to disk first (small records whose loss
    after a power cut would lose work). ``keep_suffix``: the temporary ends with ``final``'s suffix
    (for writers that pick the format by it). On any exception the temporary is removed and ``final`` is
    left as it was.
    """
    final = Path(final)
    tmp = _unique_temp(final, keep_suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def file_mode() -> int:
    """Mode for new files, 0666 & ~umask: what ``open()`` would give, for temporaries made by tools
    that create them 0600 (``mkstemp``, ffmpeg's own temp handling)."""
    um = os.umask(0)
    os.umask(um)
    return 0o666 & ~um


def write_bytes(path: Path | str, data: bytes, *, fsync: bool = False) -> Path:
    """``path.write_bytes(data)`` through a temporary sibling and a rename."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: Path | str, text: str, *, fsync: bool = False) -> Path:
    """``path.write_text(text)`` (UTF-8) through a temporary sibling and a rename."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)
