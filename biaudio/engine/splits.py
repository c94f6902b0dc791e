"""Groups, splits and source-video times: which clips must stay together, and where a clip is.

Why groups: a split keyed on the *source item* leaks when several items come from one video.
Sphere360 cuts ~17 ten-second sections out of each YouTube video and every section is its own
item (``<ytid>_<startsec>``), so hashing the item id put clips of one video into train *and* test.
The unit that must never be divided is the original video: ``group_id``. For YouTube and Sphere360
items it is the YouTube id; for local files and other URLs it is the file stem with a trailing
``_<digits>`` removed (Sphere360's clip files are named ``<ytid>_<startsec>.webm``), unless the
recipe's ``split.group_pattern`` or a ``group`` column of a table source says otherwise.

Splits are then assigned per group: by a salted hash of ``group_id`` (stable, and adding videos
never moves existing ones), or from fixed lists (``split.lists``, e.g. Sphere360's
``train.txt``/``test.txt``). Published lists are not always clean (Sphere360's put some videos in
both), so a group whose entries disagree is reported and, with ``split.repair`` (default), moved
whole to one split.

Times: a sectioned download starts at the section start of the original video, so the clip's
times in that file are shifted by it to give times in the source video (``section_start_s``).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from biaudio.errors import BiaudioError

SPLITS = ("train", "val", "test")
# a tie between splits in a conflicting group goes to the evaluation splits first: they are the
# small, published ones whose size a user compares against
TIE_ORDER = ("test", "val", "train")

_TRAILING_NUM = re.compile(r"^(?P<base>.+?)_\d+$")
# Sphere360 clip files: <11- or 12-char YouTube id>_<start second>
SPHERE360_NAME = re.compile(r"^(?P<vid>[A-Za-z0-9_-]{11,12})_(?P<start>\d+)$")
_YT_ID = re.compile(r"^[A-Za-z0-9_-]{11,12}$")  # Sphere360's lists hold some 12-character ids
_SYNTH_DIR = re.compile(r"(^|/)sources/synth-[0-9a-f]+/")


def _get(source: Any, name: str, default: Any = None) -> Any:
    if isinstance(source, Mapping):
        return source.get(name, default)
    return getattr(source, name, default)


def youtube_id(uri: str | None) -> str | None:
    """The video id of a YouTube URL (watch, youtu.be, shorts, embed), else None."""
    if not uri or "://" not in str(uri):
        return None
    from biaudio.ingest.sources import video_id_in_url

    vid = video_id_in_url(str(uri))
    return vid if vid is not None and _YT_ID.match(vid) else None


def default_group(stem: str) -> str:
    """``0B7ds6NmVBQl_20`` -> ``0B7ds6NmVBQl``: the stem without one trailing ``_<digits>``."""
    m = _TRAILING_NUM.match(stem)
    return m.group("base") if m else stem


def _stem(kind: str, uri: str, source_id: str) -> str:
    if kind == "url":
        stem = PurePosixPath(urlparse(uri).path).stem
    else:
        stem = Path(uri).stem if uri else ""
    return stem or source_id


def check_group_pattern(pattern: str | None) -> None:
    """Raise ValueError unless ``pattern`` is a regex with exactly one capturing group."""
    if pattern is None:
        return
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"not a regular expression: {e}") from None
    if rx.groups != 1:
        raise ValueError(f"needs exactly one capturing group (the group id), has {rx.groups}")


def group_id_for(source: Any, pattern: str | None = None) -> str:
    """The group (original video) of a source item (a ``SourceItem`` or its record dict).

    Order: an explicit ``group`` (a table source's ``group`` column, synthetic scenes); the YouTube
    id for ``youtube``/``sphere360`` items; for files and URLs the first capture of ``pattern``
    searched in the file stem (when it matches), else the stem without a trailing ``_<digits>``.
    """
    explicit = _get(source, "group")
    if explicit not in (None, ""):
        return str(explicit)
    kind = str(_get(source, "kind", "file") or "file")
    uri = str(_get(source, "uri", "") or "")
    sid = str(_get(source, "source_id", "") or "")
    if kind in ("youtube", "sphere360"):
        return youtube_id(uri) or default_group(sid)
    stem = _stem(kind, uri, sid)
    if pattern:
        m = re.search(pattern, stem)
        if m and m.group(1):
            return m.group(1)
    return default_group(stem)


def group_id_from_row(source_id: str, source_uri: str | None) -> str:
    """The group of a manifest row that has none (schema v1): from ``source_id`` and ``source_uri``.

    A YouTube URL gives its id; a synthetic scene (``OUT/sources/synth-*/``) is its own group;
    anything else the stem of the URI (or the source id) without a trailing ``_<digits>``. Without
    the item kind this matches what a v2 build writes for the default recipe (no
    ``split.group_pattern`` and no ``group`` column).
    """
    uri = str(source_uri or "")
    vid = youtube_id(uri)
    if vid:
        return vid
    if _SYNTH_DIR.search(uri.replace("\\", "/")):
        return str(source_id)
    kind = "url" if "://" in uri else "file"
    return default_group(_stem(kind, uri, str(source_id)))


# ------------------------------------------------------------------ times in the source video


def section_start(source: Any, offset_from_name: bool = False) -> float | None:
    """Where the item's media starts in the source video (seconds), or None for the whole video.

    A sectioned download (``youtube``/``sphere360``/``url`` with a section) starts at the section
    start (yt-dlp cuts at that time; ``fetch.force_keyframes_at_cuts`` makes the cut exact). A
    local file is the whole video unless ``offset_from_name`` (recipe ``timeline``) and its stem is
    a Sphere360 clip name ``<ytid>_<startsec>``: then it starts at ``startsec``. A local file with
    a section (from a table source) is cut by the build itself, so its times are already the file's.
    """
    kind = str(_get(source, "kind", "file") or "file")
    sec = _get(source, "section")
    if kind != "file":
        return float(sec[0]) if sec else None
    if offset_from_name:
        m = SPHERE360_NAME.match(Path(str(_get(source, "uri", "") or "")).stem)
        if m:
            return float(m.group("start"))
    return None


def section_start_from_row(source_id: str, source_uri: str | None) -> float | None:
    """Section start of a schema-v1 row: a YouTube source whose id is ``<ytid>_<start>`` was a
    sectioned download starting at ``start`` (whole seconds: v1 ids truncate fractional starts)."""
    vid = youtube_id(source_uri)
    if not vid:
        return None
    m = re.match(rf"^{re.escape(vid)}_(\d+)$", str(source_id))
    return float(m.group(1)) if m else None


# ------------------------------------------------------------------ split assignment


def hash_split(key: str, fractions: tuple[float, float], salt: str) -> str:
    """``train``/``val``/``test`` from a salted hash of ``key`` (a group id).

    ``fractions`` = (val, test). The hash maps the key to a uniform number in [0, 1); the low
    ``test`` part is test, the next ``val`` part is val.
    """
    val, test = fractions
    h = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


@dataclass
class SplitList:
    """One fixed assignment file: one id per line (a clip id, source id or group id)."""

    split: str
    path: str
    ids: list[str] = field(default_factory=list)
    sha256: str = ""


def read_split_list(split: str, path: str | Path) -> SplitList:
    """Read a list file (``#`` comments and blank lines ignored; a trailing media extension is dropped,
    so a list of file names works too). Raises BiaudioError naming the file when unreadable."""
    p = Path(path)
    if split not in SPLITS:
        raise BiaudioError(str(p), "bad_split_list", f"split {split!r} is not one of {SPLITS}", stage="split")
    try:
        data = p.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BiaudioError(str(p), "unreadable_split_list", str(e), stage="split") from None
    ids = []
    for line in text.splitlines():
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        name = PurePosixPath(s.replace("\\", "/")).name
        stem, dot, ext = name.rpartition(".")
        ids.append(stem if dot and ext.lower() in ("webm", "mp4", "mkv", "mov", "m4v", "avi", "ogv") else name)
    return SplitList(split, str(p), ids, hashlib.sha256(data).hexdigest())


def assign_splits(rows: list[dict], *, fractions: tuple[float, float], salt: str,
                  lists: Iterable[SplitList] = (), repair: bool = True) -> dict:
    """Set ``row["split"]`` for every row (each must have ``group_id``, ``source_id``, ``clip_id``).

    Without lists: every group by :func:`hash_split`. With lists: a row takes the split of the
    most specific entry naming it (clip id, then source id, then group id); the unlisted rows of a
    listed group follow it; groups no list names are hashed. A group whose entries disagree
    (``conflicts``) is moved whole to the split most of its entries name (ties: test, val, train)
    when ``repair``; otherwise each listed row keeps its entry's split (a leak that ``biaudio
    validate`` refuses). Returns the report stored in ``stats.json`` under ``split``.
    """
    lists = list(lists)
    where: dict[str, set[str]] = defaultdict(set)
    for sl in lists:
        for i in sl.ids:
            where[i].add(sl.split)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_group[str(r["group_id"])].append(r)
    listed_rows = 0
    matched: set[str] = set()
    conflicts = []
    unlisted_groups = 0
    for gid in sorted(by_group):
        grows = by_group[gid]
        own: dict[int, tuple[str, set[str]]] = {}  # row index -> (entry, its splits)
        for k, r in enumerate(grows):
            for key in (str(r["clip_id"]), str(r["source_id"]), gid):
                if key in where:
                    own[k] = (key, where[key])
                    matched.add(key)
                    break
        if not own:
            s = hash_split(gid, fractions, salt)
            for r in grows:
                r["split"] = s
            unlisted_groups += bool(lists)
            continue
        listed_rows += len(own)
        votes: Counter[str] = Counter()
        entries: dict[str, set[str]] = defaultdict(set)
        for entry, splits in own.values():
            for s in splits:
                entries[s].add(entry)
        for s, ents in entries.items():
            votes[s] = len(ents)
        best = max(votes, key=lambda s: (votes[s], -TIE_ORDER.index(s)))
        if len(votes) > 1:
            n_other = sum(1 for k, r in enumerate(grows) if k in own and own[k][1] != {best})
            conflicts.append({"group_id": gid, "entries": {s: sorted(entries[s]) for s in SPLITS if s in entries},
                              "moved_to": best if repair else None, "clips_moved": n_other if repair else 0})
        for k, r in enumerate(grows):
            if k in own and not repair and len(votes) > 1:
                ss = own[k][1]
                r["split"] = best if best in ss else min(ss, key=TIE_ORDER.index)
            else:
                r["split"] = best
    report: dict[str, Any] = {
        "by": "group_id",
        "method": "lists" if lists else "hash",
        "salt": salt,
        "fractions": {"val": fractions[0], "test": fractions[1]},
        "groups_by_split": {s: len({str(r["group_id"]) for r in rows if r.get("split") == s}) for s in SPLITS},
    }
    if lists:
        report["lists"] = {sl.split: {"path": sl.path, "sha256": sl.sha256, "entries": len(sl.ids),
                                      "in_build": sum(1 for i in set(sl.ids) if i in matched)} for sl in lists}
        report["listed_clips"] = listed_rows
        report["unlisted_groups"] = unlisted_groups
        report["repair"] = repair
        report["conflicts"] = conflicts
    return report


def leaking_groups(rows: Iterable[Mapping]) -> dict[str, list[str]]:
    """``{group_id: [splits]}`` for every group found in more than one split."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        seen[str(r["group_id"])].add(str(r["split"]))
    order = {s: i for i, s in enumerate(SPLITS)}
    return {g: sorted(s, key=lambda x: (order.get(x, len(order)), x)) for g, s in sorted(seen.items()) if len(s) > 1}
