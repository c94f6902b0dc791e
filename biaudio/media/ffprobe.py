"""Running ``ffprobe`` on a local file: its JSON, or a MediaError with a reason slug.

Kept apart from ``probe.py`` (which turns the JSON into :class:`ProbeInfo` and parses MP4 boxes
with ``sa3d.py``) so that ``sa3d.py`` can ask ffprobe for a channel count without importing
``probe.py``, which imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from biaudio.errors import MediaError
from biaudio.media.ffgraph import run
from biaudio.media.ffpath import probe_args

_FFPROBE_TIMEOUT_S = 60


def check_file(path: str | os.PathLike) -> None:
    """What ``run_ffprobe`` checks before starting a process: missing, not a file, empty."""
    p = Path(path)
    if not p.exists():
        raise MediaError(str(p), "missing", "file does not exist")
    if not p.is_file():
        raise MediaError(str(p), "unreadable", "not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(str(p), "empty", "file has zero bytes")


def run_ffprobe(path: str | os.PathLike) -> dict:
    """ffprobe ``-show_streams -show_format`` JSON; raises MediaError with a reason slug."""
    p = Path(path)
    check_file(p)
    cmd = ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", *probe_args(p)]
    try:
        r = run(cmd, capture_output=True, timeout=_FFPROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise MediaError(str(p), "unreadable", "ffprobe timed out") from e
    err = r.stderr.decode("utf-8", "replace").strip()
    if r.returncode != 0:
        low = err.lower()
        reason = (
            "truncated"
            if ("moov atom not found" in low or "end of file" in low or "input/output" in low)
            else "unreadable"
        )
        raise MediaError(str(p), reason, err.splitlines()[-1] if err else f"ffprobe exit {r.returncode}")
    try:
        return json.loads(r.stdout.decode("utf-8", "replace"))
    except json.JSONDecodeError as e:
        raise MediaError(str(p), "unreadable", f"ffprobe JSON: {e}") from e


def duration(path: str | os.PathLike) -> float | None:
    """Container duration in seconds, None when ffprobe cannot read the file (``biaudio validate``
    reports that as unreadable media instead of stopping the check)."""
    try:
        r = run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", *probe_args(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        return float(json.loads(r.stdout)["format"]["duration"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None


def video_codec(path: str | os.PathLike) -> str | None:
    """The codec name of the first video stream (``h264``...), None when there is none or ffprobe
    cannot read the file: lets a muxer copy H.264 instead of encoding it again."""
    try:
        r = run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name",
                 "-of", "json", *probe_args(path)], capture_output=True, text=True, timeout=_FFPROBE_TIMEOUT_S)
        streams = json.loads(r.stdout).get("streams") or []
        return str(streams[0]["codec_name"]) if streams else None
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None


def missing_tools() -> list[str]:
    """``ffmpeg``/``ffprobe`` not found on PATH (empty when both are there): the build checks this
    before it starts, so a missing tool is one clear message, not a reject per item."""
    import shutil

    return [b for b in ("ffmpeg", "ffprobe") if shutil.which(b) is None]


def ffmpeg_version() -> str | None:
    """ffmpeg's version string (``6.1.1-3ubuntu5``...), None when it does not run; recorded in the
    manifest's ``tool_versions`` because another ffmpeg can change the output bytes."""
    try:
        first = run(
            ["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return first[0].split()[2] if first and len(first[0].split()) > 2 else None
