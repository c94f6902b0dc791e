"""Source lists -> :class:`SourceItem` (YouTube ids/URLs, Sphere360 clip ids, plain URLs, local files).

Why a separate stage: the source list is user-written text, so it is the place where typos, stray
option-looking tokens (``-x``) and duplicates enter. Every entry is classified once, here, into a
typed item with a *stable* id (the same line always gives the same id, so reruns, archives and
clip ids line up); a bad line becomes a :class:`BiaudioError` naming ``file:line`` and the other
lines still go on.

Accepted entries (one per line in .txt, a column in .csv/.tsv/.parquet, or a list of strings):

- ``dQw4w9WgXcQ`` (11-char YouTube id; a leading ``-`` is legal in ids and is only ever put
  inside a ``watch?v=`` URL, never on a command line)
- ``https://www.youtube.com/watch?v=ID`` / ``https://youtu.be/ID`` / ``.../shorts/ID``
- ``<ytid>_<startsec>`` Sphere360 clip id = the 10-s section starting at that second
- any other ``http(s)://`` URL (yt-dlp generic extractor)
- a local media file, a folder (its media files), a glob (``clips/*.webm``), or another list file

Table lists may add ``start``/``end`` columns (a section) and a ``group`` column: the original
video the entry comes from, which overrides the derived ``group_id`` (splits keep a group whole).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlparse

from biaudio.errors import BiaudioError

STAGE = "sources"
SourceKind = Literal["youtube", "sphere360", "url", "file"]

#: Length of the section a Sphere360 clip id stands for (the released clips are 10 s long).
SPHERE360_CLIP_S = 10.0
LIST_SUFFIXES = {".txt", ".list", ".csv", ".tsv", ".parquet"}
MEDIA_SUFFIXES = {".webm", ".mp4", ".mkv", ".mov", ".m4v", ".avi", ".ogv"}
# Column names recognised in CSV/parquet lists, first match wins.
ID_COLUMNS = ("source", "uri", "url", "id", "youtube_id", "ytid", "video_id", "clip_id", "path", "file")
START_COLUMNS = ("start", "start_s", "start_sec", "section_start")
END_COLUMNS = ("end", "end_s", "end_sec", "section_end")
GROUP_COLUMNS = ("group", "group_id")  # the original video an entry belongs to (splits keep it whole)

_YT_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
# Sphere360 ids use 11- or 12-character video ids (the published lists contain both).
_SPHERE360 = re.compile(r"^(?P<vid>[A-Za-z0-9_-]{11,12})_(?P<start>\d+)$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SourceItem:
    """One thing to fetch/process. ``uri`` is a URL or an absolute local path."""

    source_id: str
    kind: SourceKind
    uri: str
    section: tuple[float, float] | None = None
    origin: str | None = None  # "file:line" the item came from, for error messages
    group: str | None = None  # the original video, when the source list says (a ``group`` column)

    def to_dict(self) -> dict:
        return {
            "source_id": self.source_id,
            "kind": self.kind,
            "uri": self.uri,
            "section": list(self.section) if self.section else None,
            "origin": self.origin,
            "group": self.group,
        }


@dataclass
class SourceReadResult:
    items: list[SourceItem] = field(default_factory=list)
    errors: list[BiaudioError] = field(default_factory=list)
    duplicates: int = 0


def youtube_url(video_id: str) -> str:
    """The canonical watch URL. Ids may start with '-', so they only ever travel inside a URL."""
    return f"https://www.youtube.com/watch?v={video_id}"


def _short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def video_id_in_url(url: str) -> str | None:
    """The video-id part of a YouTube URL (watch, youtu.be, shorts, embed, live, v), unchecked; None
    for other hosts. Callers check the id against their own pattern (a source list takes 11
    characters, Sphere360's split lists also hold 12)."""
    u = urlparse(url)
    host = (u.hostname or "").lower()
    if host.endswith("youtu.be"):
        return u.path.strip("/").split("/")[0]
    if host.endswith("youtube.com") or host.endswith("youtube-nocookie.com"):
        if u.path == "/watch":
            return (parse_qs(u.query).get("v") or [""])[0]
        parts = [p for p in u.path.split("/") if p]
        return parts[1] if len(parts) >= 2 and parts[0] in ("shorts", "embed", "live", "v") else ""
    return None


def _youtube_id_from_url(url: str) -> str | None:
    vid = video_id_in_url(url)
    return vid if vid is not None and _YT_ID.match(vid) else None


def _section_from(start: object, end: object) -> tuple[float, float] | None:
    def num(v: object) -> float | None:
        if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
            return None
        return float(v)  # type: ignore[arg-type]

    s, e = num(start), num(end)
    if s is None and e is None:
        return None
    if s is None or e is None or not (0 <= s < e):
        raise ValueError(f"bad section start={start!r} end={end!r}")
    return (s, e)


def _file_item(path: Path, origin: str | None) -> SourceItem:
    path = path.resolve()
    sid = _SAFE.sub("-", path.stem).strip("-") or f"file-{_short_hash(str(path))}"
    return SourceItem(sid, "file", str(path), None, origin)


def parse_entry(
    text: str, origin: str | None = None, section: tuple[float, float] | None = None, base: Path | None = None
) -> list[SourceItem]:
    """Classify one entry. Raises ``ValueError`` with the reason when it is malformed."""
    s = text.strip()
    if not s:
        return []
    if s.lower().startswith(("http://", "https://")):
        vid = _youtube_id_from_url(s)
        if vid:
            return [SourceItem(vid if section is None else f"{vid}_{int(section[0])}", "youtube", youtube_url(vid), section, origin)]
        u = urlparse(s)
        if not u.hostname:
            raise ValueError(f"URL without a host: {s!r}")
        stem = _SAFE.sub("-", Path(u.path).stem).strip("-")[:40]
        sid = f"{stem}-{_short_hash(s, 8)}" if stem else f"url-{_short_hash(s)}"
        return [SourceItem(sid, "url", s, section, origin)]
    if "://" in s:
        raise ValueError(f"unsupported URL scheme: {s!r}")
    m = _SPHERE360.match(s)
    if m and not Path(s).exists():
        start = float(m.group("start"))
        sec = section or (start, start + SPHERE360_CLIP_S)
        return [SourceItem(s, "sphere360", youtube_url(m.group("vid")), sec, origin)]
    if _YT_ID.match(s) and not Path(s).exists():
        sid = s if section is None else f"{s}_{int(section[0])}"
        return [SourceItem(sid, "youtube", youtube_url(s), section, origin)]
    # Local things. Relative paths inside a list file are relative to that file.
    p = Path(s).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    if any(c in s for c in "*?["):
        hits = sorted(Path(h) for h in glob.glob(str(p), recursive=True))
        hits = [h for h in hits if h.is_file() and h.suffix.lower() in MEDIA_SUFFIXES]
        if not hits:
            raise ValueError(f"glob matches no media files: {s!r}")
        return [_file_item(h, origin) for h in hits]
    if p.is_dir():
        hits = sorted(h for h in p.iterdir() if h.is_file() and h.suffix.lower() in MEDIA_SUFFIXES)
        if not hits:
            raise ValueError(f"folder has no media files: {s!r}")
        return [_file_item(h, origin) for h in hits]
    if p.is_file():
        return [_file_item(p, origin)]
    if s.startswith("-"):
        raise ValueError(f"looks like a command-line option, not a source: {s!r}")
    raise ValueError(f"not a YouTube id, Sphere360 id, URL or existing file: {s!r}")


def _cell(rec: list[str], i: int | None) -> str | None:
    return rec[i] if i is not None and i < len(rec) else None


def _rows_from_table(path: Path) -> list[tuple[int, str, object, object, object]]:
    """(line_number, entry, start, end, group) rows from a CSV/TSV/parquet list."""
    rows: list[tuple[int, str, object, object, object]] = []
    if path.suffix.lower() == ".parquet":
        from biaudio.manifest import read_frame

        df = read_frame(path)
        cols = {c.lower(): c for c in df.columns}
        idc = next((cols[c] for c in ID_COLUMNS if c in cols), df.columns[0])
        sc = next((cols[c] for c in START_COLUMNS if c in cols), None)
        ec = next((cols[c] for c in END_COLUMNS if c in cols), None)
        gc = next((cols[c] for c in GROUP_COLUMNS if c in cols), None)
        for i, rec in enumerate(df.to_dict("records")):
            # "line" of a parquet row = row index + 2 (as if it had a header line)
            rows.append((i + 2, "" if rec[idc] is None else str(rec[idc]), rec.get(sc) if sc else None,
                         rec.get(ec) if ec else None, rec.get(gc) if gc else None))
        return rows
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = list(csv.reader(f, delimiter=delim))
    if not reader:
        return rows
    header = [h.strip().lower() for h in reader[0]]
    has_header = any(h in ID_COLUMNS for h in header)
    idx, si, ei, gi, start_line = 0, None, None, None, 1
    if has_header:
        idx = next(header.index(c) for c in ID_COLUMNS if c in header)
        si = next((header.index(c) for c in START_COLUMNS if c in header), None)
        ei = next((header.index(c) for c in END_COLUMNS if c in header), None)
        gi = next((header.index(c) for c in GROUP_COLUMNS if c in header), None)
        reader, start_line = reader[1:], 2
    for n, rec in enumerate(reader, start=start_line):
        if not rec or not any(x.strip() for x in rec) or rec[0].lstrip().startswith("#"):
            continue
        rows.append((n, _cell(rec, idx) or "", _cell(rec, si), _cell(rec, ei), _cell(rec, gi)))
    return rows


def _read_list_file(path: Path, out: SourceReadResult, seen: set, depth: int) -> None:
    try:
        if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
            rows = _rows_from_table(path)
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = []
            for n, line in enumerate(lines, start=1):
                line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("http") else line.strip()
                if line:
                    rows.append((n, line, None, None, None))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        out.errors.append(BiaudioError(path, "unreadable_source_list", str(e), stage=STAGE))
        return
    except Exception as e:  # pandas/pyarrow raise their own types for a broken parquet file
        out.errors.append(BiaudioError(path, "unreadable_source_list", f"{type(e).__name__}: {e}", stage=STAGE))
        return
    for n, entry, start, end, group in rows:
        origin = f"{path}:{n}"
        try:
            section = _section_from(start, end)
            _add_entry(entry, origin, section, path.parent, out, seen, depth, _group_from(group))
        except ValueError as e:
            out.errors.append(BiaudioError(origin, "malformed_source", str(e), stage=STAGE))


def _group_from(v: object) -> str | None:
    if v is None or (isinstance(v, float) and v != v):
        return None
    return str(v).strip() or None


def _add_entry(entry: str, origin: str | None, section, base: Path | None, out: SourceReadResult, seen: set, depth: int,
               group: str | None = None) -> None:
    s = entry.strip()
    p = Path(s).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        if depth > 4:
            raise ValueError(f"list files nested too deep at {s!r}")
        _read_list_file(p.resolve(), out, seen, depth + 1)
        return
    for item in parse_entry(s, origin, section, base):
        if group is not None:
            item = replace(item, group=group)
        key = (item.kind, item.uri, item.section)
        if key in seen:
            out.duplicates += 1
            continue
        seen.add(key)
        out.items.append(item)


def _disambiguate(items: list[SourceItem]) -> list[SourceItem]:
    """Two different inputs must never share an id (clip ids, completion records and archives key
    on it), and an id must not depend on where an input stands in the list: when several inputs
    would get the same id, *every* one of them gets ``<id>-<hash of its uri and section>``, so
    reordering the list (or inserting a file earlier) never moves an id from one input to another."""
    count: dict[str, int] = {}
    for it in items:
        count[it.source_id] = count.get(it.source_id, 0) + 1
    return [it if count[it.source_id] == 1 else
            replace(it, source_id=f"{it.source_id}-{source_hash(it.uri, it.section)}")
            for it in items]


def source_hash(uri: str, section: tuple[float, float] | None) -> str:
    """The short hash that tells apart inputs whose plain ids collide (a pure function of the input)."""
    return _short_hash(uri + repr(section), 6)


def read_sources(spec: str | Path | list[str] | tuple[str, ...]) -> SourceReadResult:
    """Read source lists/entries into de-duplicated items; malformed entries go to ``errors``.

    ``spec`` is one path (a list file, folder, glob or media file) or a list of entries of any
    accepted kind. Raises ``BiaudioError(reason="empty_source_list")`` when nothing usable is found,
    because an empty build that "succeeds" hides a wrong path.
    """
    entries = [str(spec)] if isinstance(spec, (str, Path)) else [str(x) for x in spec]
    out = SourceReadResult()
    seen: set = set()
    for i, e in enumerate(entries):
        try:
            _add_entry(e, f"<arg {i + 1}>" if not isinstance(spec, (str, Path)) else None, None, None, out, seen, 0)
        except ValueError as ex:
            out.errors.append(BiaudioError(e, "malformed_source", str(ex), stage=STAGE))
    out.items = _disambiguate(out.items)
    if not out.items:
        why = "; ".join(str(e) for e in out.errors[:3]) or "no entries"
        raise BiaudioError(", ".join(entries) or "<none>", "empty_source_list", why, stage=STAGE)
    return out
