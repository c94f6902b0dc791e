"""Every path handed to ffmpeg/ffprobe goes through here, and so does every write failure they report.

Why: ffmpeg reads a command-line word that starts with ``-`` as an option and a word that starts
with ``<scheme>:`` as a protocol URL. A local file named ``-x.webm`` would be parsed as an option,
and a local file named ``tcp:127.0.0.1:9000`` (or ``http:...``, ``concat:...``) would make a
stage open a network connection or read other files. :func:`local` turns a path into an absolute
``file:`` URL (never an option, never another protocol), and :func:`input_args` also limits what
the demuxer may open from inside the file (an HLS playlist or a concat list naming URLs) to local
files. Only the fetch stage uses the network, through yt-dlp, never through these helpers.

The second half maps what ffmpeg (or libsndfile) says about a failed *write* to an ``OSError``
with the right errno, so the build treats a full disk as a write failure (stop, no completion
record, rerun to continue) instead of a permanent reject of the item.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: protocols an input may open (the file itself, and our own pipes)
PROTOCOLS = "file,pipe"


def local(path: str | os.PathLike) -> str:
    """``file:/absolute/path``: an unambiguous local file for ffmpeg/ffprobe (input or output).

    Non-UTF-8 names survive: the string keeps the surrogate escapes of :func:`os.fsdecode`, which
    ``subprocess`` encodes back to the original bytes."""
    return "file:" + os.path.abspath(os.fsdecode(path))


def input_args(path: str | os.PathLike) -> list[str]:
    """``-protocol_whitelist file,pipe -i file:/abs/path`` for one ffmpeg input."""
    return ["-protocol_whitelist", PROTOCOLS, "-i", local(path)]


def probe_args(path: str | os.PathLike) -> list[str]:
    """The input part of an ffprobe command line (same guarantees as :func:`input_args`)."""
    return ["-protocol_whitelist", PROTOCOLS, local(path)]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (also through hard or symbolic links and
    ``..``): the check behind "no command writes over one of its inputs"."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


# what ffmpeg / the C library print for the errnos the build treats as write failures
_WRITE_MESSAGES = (
    ("no space left on device", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("file too large", errno.EFBIG),
    ("read-only file system", errno.EROFS),
)

#: below this many free bytes on the output's file system a failed write counts as a full disk
FULL_DISK_BYTES = 256 * 1024


class WriteFailed(OSError):
    """Writing an output failed because of the disk (full, quota, read-only), not the data.

    An ``OSError`` on purpose: the stages catch ``BiaudioError`` per clip and record a reject,
    while an ``OSError`` with a write errno reaches the build executor, which stops the run and
    writes no completion record, so a rerun after freeing space redoes the item."""


def write_failure(out_path: str | os.PathLike, message: str) -> WriteFailed | None:
    """The :class:`WriteFailed` that ``message`` (ffmpeg's or libsndfile's stderr) reports for a
    write to ``out_path``, or None when it does not look like a disk problem.

    Besides the usual messages, a failure while the output's file system has (almost) no free
    space left counts as a full disk: ffmpeg sometimes prints only "I/O error" and libsndfile only
    "System error."."""
    low = (message or "").lower()
    for text, code in _WRITE_MESSAGES:
        if text in low:
            return WriteFailed(code, f"{os.strerror(code)} ({_last_line(message)})", os.fsdecode(out_path))
    if _almost_full(Path(out_path)):
        return WriteFailed(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({_last_line(message)})", os.fsdecode(out_path))
    return None


def _last_line(message: str) -> str:
    lines = [s for s in (message or "").strip().splitlines() if s.strip()]
    return lines[-1][-300:] if lines else "no message"


def _almost_full(p: Path) -> bool:
    d = p if p.is_dir() else p.parent
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        return shutil.disk_usage(d).free < FULL_DISK_BYTES
    except OSError:
        return False
