"""Fetch one source item with yt-dlp's Python API: 360° video + 4-channel FOA audio.

Why it is built this way:

- **One info call per video** (``extract_info(download=False)``), then the download re-processes
  that same info with explicit format ids (what ``--load-info-json`` does). Each extra info call is
  one more chance to meet YouTube's bot check.
- **Formats are chosen here, not by a yt-dlp selector string**: a selector silently falls back to a
  stereo track when no 4-channel one exists; we need to *know* and reject with ``no_foa_format``.
  The info JSON is kept beside the media so the choice can be audited later.
- **Failures become reason slugs** (``unavailable``, ``private``, ``geo_blocked``, ``bot_check``,
  ``http_404``, ``timeout``, ``truncated``, ``network``, ``too_small``, ``no_foa_format`` ...) for the
  rejects table; only transient ones are retried, with exponential backoff.
- **A download archive** (finished ids with their uri and section, one file per id, renamed into
  place) means a rerun never fetches a finished item again.
- Ids are always wrapped in URLs and handed to the API, never to a command line, so an id like
  ``-x1234567890`` can not be read as an option.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from biaudio import atomic
from biaudio.errors import BiaudioError
from biaudio.ingest.sources import SourceItem

STAGE = "fetch"
ARCHIVE_NAME = "fetch-archive.jsonl"
RETRYABLE = {"network", "timeout", "truncated", "http_5xx", "http_429"}


class FetchConfig(BaseModel):
    """Recipe section ``fetch``. Defaults are the paper pipeline's: ``bv[height<=1440]+ba[audio_channels=4]``
    for sections (``height<=1080`` for whole videos), 30-s socket timeout, retries, files under 1 KiB
    are failures."""

    model_config = ConfigDict(extra="forbid")

    max_height: int = Field(1440, description="video height limit when downloading a section")
    max_height_full: int = Field(1080, description="video height limit when downloading a whole video")
    allow_6ch: bool = Field(False, description="accept 6-channel FOA + head-locked stereo tracks")
    prefer_opus: bool = True
    require_360_format: bool = Field(True, description="when formats carry a projection note, require equirect")
    socket_timeout_s: float = 30.0
    retries: int = Field(3, ge=0, description="our retries of transient failures (network, timeout, truncated)")
    backoff_s: float = Field(2.0, ge=0, description="first retry delay; doubles each retry")
    ytdlp_retries: int = Field(1, ge=0, description="yt-dlp's own HTTP retries inside one attempt")
    rate_limit_bps: int | None = Field(None, description="download rate limit in bytes/s")
    min_interval_s: float = Field(0.0, ge=0, description="minimum delay between two network fetches")
    cookies_file: str | None = None
    proxy: str | None = None
    player_client: list[str] | None = Field(None, description="YouTube player clients, e.g. ['web', 'android']")
    force_keyframes_at_cuts: bool = True
    archive: str | None = Field(None, description=f"download archive path (default OUT/{ARCHIVE_NAME})")
    min_bytes: int = Field(1024, description="smaller downloads are failures (too_small)")
    verify_channels: bool = Field(True, description="probe the download: audio must have 4 (or 6) channels")


@dataclass
class FormatChoice:
    """Explicit yt-dlp format ids; ``verify`` = channel count unknown until the file is probed."""

    format_spec: str
    video_id: str | None
    audio_id: str | None
    audio_channels: int | None
    verify: bool


# ---------------------------------------------------------------------------------- classification

_PATTERNS: list[tuple[str, tuple[str, ...]]] = [
    ("private", ("private video", "video is private")),
    ("bot_check", ("not a bot", "sign in to confirm you", "confirm you're not", "captcha")),
    ("age_restricted", ("confirm your age", "age-restricted", "age restricted", "inappropriate for some users")),
    ("geo_blocked", ("available in your country", "geo restrict", "georestrict", "geo-restrict",
                     "blocked it in your country", "from your location")),
    ("members_only", ("members-only", "join this channel")),
    ("live", ("live event will begin", "premieres in", "is live")),
    ("unavailable", ("video unavailable", "is unavailable", "has been removed", "account associated with this video has been terminated",
                     "no longer available", "does not exist", "copyright claim")),
    ("no_foa_format", ("requested format is not available", "no video formats found")),
    ("http_404", ("http error 404", "404: not found", "404 not found")),
    ("http_403", ("http error 403", "403: forbidden")),
    ("http_429", ("http error 429", "too many requests")),
    ("http_5xx", ("http error 5",)),
    ("timeout", ("timed out", "timeout")),
    ("too_small", ("did not get any data blocks",)),
    ("truncated", ("content too short", "more expected", "contenttooshort", "incompleteread", "incomplete read", "bytes, expected",
                   "connection broken", "unexpected end", "only got")),
    ("unsupported_url", ("unsupported url",)),
    ("network", ("connection refused", "connection reset", "name or service not known", "temporary failure in name",
                 "network is unreachable", "remote end closed", "urlopen error", "transporterror", "ssl", "http error",
                 "unable to download")),
]


def classify_error(message: str) -> str:
    """Map a yt-dlp/network error message to a reject reason slug (first pattern wins)."""
    m = message.lower()
    for reason, needles in _PATTERNS:
        if any(n in m for n in needles):
            return reason
    return "download_failed"


# ---------------------------------------------------------------------------------- format choice


def _is_none(v: object) -> bool:
    return v is None or v == "none"


def _projection_note(f: dict) -> str | None:
    """YouTube puts ``projectionType`` into format_note ('equi', 'mesh', 'equi_threed_top_bottom')."""
    note = (f.get("format_note") or "").lower()
    for token in (t.strip() for t in note.split(",")):
        if token.startswith("equi") or token.startswith("mesh") or token == "cubemap":
            return token
    return None


def select_formats(info: dict, cfg: FetchConfig, section: bool = False) -> FormatChoice:
    """Pick explicit format ids from ``info['formats']``.

    360 video up to the height limit (``bv[height<=H]``) + an audio-only format with exactly 4
    channels (6 when ``allow_6ch``), Opus (YouTube's ``ambisonic`` family) preferred. Raises
    ``BiaudioError`` ``no_foa_format`` / ``not_360`` / ``no_video_format``. Direct files (generic
    extractor) carry no stream details: the single format is taken and ``verify`` is set so the
    download gets probed.
    """
    formats = [f for f in (info.get("formats") or [info]) if f.get("format_id") is not None]
    path = info.get("webpage_url") or info.get("id")
    if not formats:
        raise BiaudioError(path, "no_formats", "extractor returned no formats", stage=STAGE)
    limit = cfg.max_height if section else cfg.max_height_full
    known_channels = any(f.get("audio_channels") for f in formats)
    known_codecs = any(f.get("vcodec") is not None or f.get("acodec") is not None for f in formats)

    if not known_channels and not known_codecs:
        # Direct media link: nothing to choose from, check the file once downloaded.
        f = formats[-1]
        return FormatChoice(str(f["format_id"]), None, None, None, verify=True)

    allowed = {4, 6} if cfg.allow_6ch else {4}
    audio = [f for f in formats if _is_none(f.get("vcodec")) and not _is_none(f.get("acodec"))]
    foa = [f for f in audio if f.get("audio_channels") in allowed]
    combined_foa = [f for f in formats if not _is_none(f.get("vcodec")) and not _is_none(f.get("acodec"))
                    and f.get("audio_channels") in allowed]
    if not foa and not combined_foa:
        chans = sorted({f.get("audio_channels") for f in formats if f.get("audio_channels")})
        detail = f"audio channel counts offered: {chans or 'unknown'}"
        if 6 in chans and not cfg.allow_6ch:
            detail += " (6-channel FOA+head-locked is off; set fetch.allow_6ch)"
        raise BiaudioError(path, "no_foa_format", detail, stage=STAGE)

    def audio_key(f: dict) -> tuple:
        codec = (f.get("acodec") or "").lower()
        note = (f.get("format_note") or "").lower()
        return (
            f.get("audio_channels") == 4,  # plain FOA before FOA + head-locked
            cfg.prefer_opus and codec.startswith("opus"),
            "ambisonic" in note,
            f.get("abr") or f.get("tbr") or 0,
        )

    video = [f for f in formats if not _is_none(f.get("vcodec")) and _is_none(f.get("acodec"))]
    any_projection = any(_projection_note(f) for f in formats)
    if cfg.require_360_format and any_projection:
        video = [f for f in video if (_projection_note(f) or "").startswith("equi")]
    elif cfg.require_360_format and video and not any_projection and info.get("extractor_key", "").lower().startswith("youtube"):
        raise BiaudioError(path, "not_360", "no equirectangular video format (not a 360° video)", stage=STAGE)
    video = [f for f in video if (f.get("height") or 0) <= limit]

    def video_key(f: dict) -> tuple:
        mono = "threed" not in (_projection_note(f) or "")
        return (mono, f.get("height") or 0, f.get("fps") or 0, f.get("tbr") or 0)

    if foa and video:
        v = max(video, key=video_key)
        a = max(foa, key=audio_key)
        return FormatChoice(f"{v['format_id']}+{a['format_id']}", str(v["format_id"]), str(a["format_id"]),
                            a.get("audio_channels"), verify=False)
    combined = [f for f in combined_foa if (f.get("height") or 0) <= limit]
    if combined:
        c = max(combined, key=video_key)
        return FormatChoice(str(c["format_id"]), str(c["format_id"]), str(c["format_id"]), c.get("audio_channels"), False)
    raise BiaudioError(path, "no_video_format", f"no 360° video format with height <= {limit}", stage=STAGE)


# ---------------------------------------------------------------------------------- archive


def archive_path(out_dir: Path, cfg: FetchConfig) -> Path:
    return Path(cfg.archive) if cfg.archive else Path(out_dir) / ARCHIVE_NAME


def archive_entries(path: Path) -> Path:
    """The folder of the archive's entries: one small JSON file per finished download."""
    return path.with_name(path.name + ".d")


def read_archive(path: Path) -> dict[str, dict]:
    """source_id -> record of finished downloads.

    Entries are files in ``<archive>.d/`` (one per source, renamed into place whole, so concurrent
    workers on several hosts never tear or lose one, on NFS as on a local disk); the JSONL file
    itself is still read (archives written by older versions; later lines win, broken lines are
    skipped) and entry files win over it.
    """
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                done[rec["source_id"]] = rec
            except (ValueError, KeyError, TypeError):
                continue
    folder = archive_entries(path)
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            done[rec["source_id"]] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return done


def _append_archive(path: Path, rec: dict) -> None:
    """Add one finished download: a whole file renamed into place (no ``O_APPEND``, no lock: on a
    network filesystem appends from several clients can interleave or vanish, renames cannot)."""
    import re

    folder = archive_entries(path)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", str(rec["source_id"])).lstrip(".") + ".json")
    atomic.write_text(final, json.dumps(rec, sort_keys=True) + "\n")


def _archived_for(rec: dict | None, item: SourceItem) -> bool:
    """An archive entry counts only for the input it was made from (ids can move between inputs)."""
    if not rec:
        return False
    section = list(item.section) if item.section else None
    sec = rec.get("section")
    return rec.get("uri") == item.uri and (None if sec is None else [float(x) for x in sec]) == (
        None if section is None else [float(x) for x in section])


# ---------------------------------------------------------------------------------- fetch

_last_fetch = [0.0]


class _Silent:
    """yt-dlp logger that keeps messages (for classification) instead of printing them."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def _ydl_params(cfg: FetchConfig, logger: _Silent) -> dict:
    p: dict = {
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": logger,
        "socket_timeout": cfg.socket_timeout_s,
        "retries": cfg.ytdlp_retries,
        "fragment_retries": cfg.ytdlp_retries,
        "extractor_retries": cfg.ytdlp_retries,
        "file_access_retries": 1,
        "noplaylist": True,
        "cachedir": False,
        "updatetime": False,
    }
    if cfg.rate_limit_bps:
        p["ratelimit"] = cfg.rate_limit_bps
    if cfg.cookies_file:
        p["cookiefile"] = cfg.cookies_file
    if cfg.proxy:
        p["proxy"] = cfg.proxy
    if cfg.player_client:
        p["extractor_args"] = {"youtube": {"player_client": list(cfg.player_client)}}
    return p


def _media_in(d: Path) -> Path | None:
    files = [f for f in d.iterdir() if f.is_file() and not f.name.endswith((".part", ".ytdl", ".json", ".temp"))
             and ".part-Frag" not in f.name]
    return max(files, key=lambda f: f.stat().st_size) if files else None


def _attempt(item: SourceItem, out_dir: Path, cfg: FetchConfig) -> Path:
    import yt_dlp
    from yt_dlp.utils import download_range_func

    logger = _Silent()
    params = _ydl_params(cfg, logger)
    work = out_dir / f".fetch-{item.source_id}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        try:
            with yt_dlp.YoutubeDL(params) as ydl:
                info = ydl.extract_info(item.uri, download=False)
                info = ydl.sanitize_info(info)
        except yt_dlp.utils.DownloadError as e:
            msg = str(e)
            raise BiaudioError(item.uri, classify_error(msg), msg.replace("ERROR: ", "")[:400], stage=STAGE) from None
        if info is None:
            raise BiaudioError(item.uri, "unavailable", "extractor returned nothing", stage=STAGE)
        if info.get("_type") == "playlist":
            raise BiaudioError(item.uri, "not_a_video", "URL is a playlist", stage=STAGE)
        _write_json_atomic(out_dir / f"{item.source_id}.info.json", info)
        choice = select_formats(info, cfg, section=item.section is not None)

        dl = dict(params)
        dl.update({"format": choice.format_spec, "outtmpl": {"default": str(work / "media.%(ext)s")},
                   "paths": {"home": str(work), "temp": str(work)}, "overwrites": True, "continuedl": False})
        if item.section is not None:
            dl["download_ranges"] = download_range_func(None, [tuple(item.section)])
            dl["force_keyframes_at_cuts"] = cfg.force_keyframes_at_cuts
        try:
            with yt_dlp.YoutubeDL(dl) as ydl:
                ydl.process_ie_result(info, download=True)
        except yt_dlp.utils.DownloadError as e:
            msg = str(e)
            raise BiaudioError(item.uri, classify_error(msg), msg.replace("ERROR: ", "")[:400], stage=STAGE) from None
        media = _media_in(work)
        if media is None:
            raise BiaudioError(item.uri, "too_small", "yt-dlp produced no file", stage=STAGE)
        size = media.stat().st_size
        if size < cfg.min_bytes:
            raise BiaudioError(item.uri, "too_small", f"{size} bytes < {cfg.min_bytes}", stage=STAGE)
        if cfg.verify_channels:
            _verify_foa(media, item, cfg)
        final = out_dir / f"{item.source_id}{media.suffix}"
        os.replace(media, final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verify_foa(media: Path, item: SourceItem, cfg: FetchConfig) -> None:
    from biaudio.media import probe

    try:
        p = probe(media)
    except BiaudioError as e:
        raise BiaudioError(item.uri, e.reason if e.reason != "unreadable" else "truncated", e.detail, stage=STAGE) from None
    if not p.has_audio:
        raise BiaudioError(item.uri, "no_foa_format", "download has no audio stream", stage=STAGE)
    allowed = {4, 6} if cfg.allow_6ch else {4}
    if p.audio_channels not in allowed:
        raise BiaudioError(item.uri, "no_foa_format", f"download audio has {p.audio_channels} channels", stage=STAGE)


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic.write_text(path, json.dumps(obj, indent=1, default=str))


def fetch(item: SourceItem, out_dir: str | Path, cfg: FetchConfig | None = None) -> Path:
    """Return the local media path for ``item``, downloading it when needed.

    Local files: a no-op returning the path (``missing`` if it does not exist). Finished ids in the
    archive are returned without any network access. Transient failures are retried
    ``cfg.retries`` times with doubling backoff; the final failure raises ``BiaudioError``.
    """
    cfg = cfg or FetchConfig()
    if item.kind == "file":
        p = Path(item.uri)
        if not p.is_file():
            raise BiaudioError(p, "missing", "local file does not exist", stage=STAGE)
        if not os.access(p, os.R_OK):
            raise BiaudioError(p, "unreadable", "no read permission", stage=STAGE)
        return p
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = archive_path(out_dir, cfg)
    rec = read_archive(arch).get(item.source_id)
    if _archived_for(rec, item):
        done = Path(rec["path"])
        done = done if done.is_absolute() else arch.parent / done
        if done.is_file():
            return done

    delay = cfg.backoff_s
    for attempt in range(cfg.retries + 1):
        wait = _last_fetch[0] + cfg.min_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        _last_fetch[0] = time.monotonic()
        try:
            path = _attempt(item, out_dir, cfg)
        except BiaudioError as e:
            if e.reason in RETRYABLE and attempt < cfg.retries:
                time.sleep(delay)
                delay *= 2
                continue
            if attempt:
                raise BiaudioError(e.path, e.reason, f"{e.detail} (after {attempt + 1} attempts)", stage=STAGE) from None
            raise
        try:
            rel = os.path.relpath(path, arch.parent)
        except ValueError:
            rel = str(path)
        _append_archive(arch, {"source_id": item.source_id, "uri": item.uri, "path": rel,
                               "section": list(item.section) if item.section else None,
                               "bytes": path.stat().st_size, "time": time.time()})
        return path
    raise AssertionError("unreachable")
