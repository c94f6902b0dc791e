"""Manifest schema v2: ``manifest.parquet`` (one row per kept clip), ``rejects.parquet``, ``stats.json``.

The schema is a fixed pyarrow schema (not inferred from the rows) so that every build, whatever
its content, writes the same column types, and readers (pandas, pyarrow, duckdb, the model's data
loader) can rely on it. ``manifests/README.md`` documents it; a test keeps the two in step.

Reproducibility: rows are sorted by ``clip_id`` and written with fixed writer options, so the same
inputs give a byte-identical file (the resume tests compare bytes). Every file is written to a
temporary name and renamed, so a reader never sees half a manifest.

Versions: v2 added ``group_id`` (the original video; splits are assigned per group) and
``section_start_s`` (times are in the source video's timeline). v1 files still read: every reader
goes through :func:`read_manifest` / :func:`read_manifest_frame`, which derive the v2 columns of a
v1 file on read (:func:`v1_to_v2`); ``biaudio upgrade OUT`` rewrites a v1 folder as v2.
"""

from __future__ import annotations

import json
import numbers
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from biaudio import atomic
from biaudio.atomic import atomic_path
from biaudio.engine.splits import (
    SplitList,
    assign_splits,
    group_id_from_row,
    hash_split,
    section_start_from_row,
)
from biaudio.errors import BiaudioError

SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
"""Versions the readers accept; v1 gets its v2 columns derived on read."""
MANIFEST_NAME = "manifest.parquet"
REJECTS_NAME = "rejects.parquet"
STATS_NAME = "stats.json"
VERSIONS_DIR = "manifest_versions"
SPLITS = ("train", "val", "test")
QA_STATUSES = ("pending", "accepted", "rejected", "flagged")

_TRAJ = pa.list_(
    pa.struct([("t", pa.float64()), ("yaw", pa.float64()), ("pitch", pa.float64()), ("roll", pa.float64())])
)
_WINDIRS = pa.list_(
    pa.struct(
        [
            ("t", pa.float64()),
            ("azimuth_deg", pa.float64()),
            ("elevation_deg", pa.float64()),
            ("diffuseness", pa.float64()),
            ("energy_db", pa.float64()),
        ]
    )
)

# (name, type, nullable): the v2 columns, in file order
_COLUMNS: list[tuple[str, pa.DataType, bool]] = [
    ("schema_version", pa.int32(), False),
    ("clip_id", pa.string(), False),
    ("source_id", pa.string(), False),
    ("group_id", pa.string(), False),
    ("source_uri", pa.string(), False),
    ("split", pa.string(), False),
    ("start_s", pa.float64(), False),
    ("end_s", pa.float64(), False),
    ("duration_s", pa.float64(), False),
    ("section_start_s", pa.float64(), True),
    ("video_path", pa.string(), False),
    ("audio_path", pa.string(), False),
    ("preview_path", pa.string(), True),
    ("fps", pa.float64(), False),
    ("hfov_deg", pa.float64(), False),
    ("width", pa.int32(), False),
    ("height", pa.int32(), False),
    ("sample_rate", pa.int32(), False),
    ("num_frames", pa.int32(), False),
    ("trajectory", _TRAJ, False),
    ("trajectory_mode", pa.string(), False),
    ("clip_azimuth_deg", pa.float64(), True),
    ("clip_elevation_deg", pa.float64(), True),
    ("window_directions", _WINDIRS, True),
    ("silence_ratio", pa.float64(), True),
    ("static_ratio", pa.float64(), True),
    ("speech_ratio", pa.float64(), True),
    ("speech_backend", pa.string(), True),
    ("speech_checkpoint", pa.string(), True),
    ("lr_difference", pa.float64(), True),
    ("caption", pa.string(), True),
    ("caption_visible", pa.string(), True),
    ("caption_invisible", pa.string(), True),
    ("caption_backend", pa.string(), True),
    ("foa_convention", pa.string(), True),
    ("hrir_set", pa.string(), True),
    ("decoder", pa.string(), True),
    ("recipe_hash", pa.string(), False),
    ("tool_versions", pa.string(), False),
    ("qa_status", pa.string(), False),
    ("qa_reason", pa.string(), True),
]

MANIFEST_SCHEMA = pa.schema(
    [pa.field(n, t, nullable=nl) for n, t, nl in _COLUMNS],
    metadata={b"biaudio.schema_version": str(SCHEMA_VERSION).encode()},
)
V2_COLUMNS = ("group_id", "section_start_s")
"""Columns added in v2 (absent from v1 files; derived on read)."""
_V1_COLUMNS = [c for c in _COLUMNS if c[0] not in V2_COLUMNS]
ENGINE_COLUMNS = ("schema_version", "group_id", "split", "recipe_hash", "tool_versions", "qa_status", "qa_reason")
"""Columns the engine fills in; the per-item stages provide all the others."""

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("clip_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("source_uri", pa.string()),
    ],
    metadata={b"biaudio.schema_version": str(SCHEMA_VERSION).encode()},
)

_WRITE_OPTS: dict[str, Any] = {"compression": "zstd", "use_dictionary": True, "write_statistics": True}


class SchemaVersionError(BiaudioError):
    """An output folder or manifest was written by another schema version of this tool."""


# ------------------------------------------------------------------ splits


def assign_split(group_id: str, fractions: tuple[float, float], salt: str) -> str:
    """``train``/``val``/``test`` from a hash of the *group* id (the original video, never the clip).

    ``fractions`` = (val_fraction, test_fraction). Every clip of one video lands in the same
    split, and adding videos never moves existing ones. See :mod:`biaudio.engine.splits`.
    """
    return hash_split(str(group_id), fractions, salt)


# ------------------------------------------------------------------ tool versions


@lru_cache(maxsize=1)
def tool_versions() -> str:
    """JSON of the versions that can change the output bytes (biaudio, numpy, torch, ffmpeg...).

    Read from package metadata (no heavy imports); cached per process.
    """
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in ("biaudio", "numpy", "scipy", "torch", "pyarrow", "opencv-python-headless", "pyannote.audio"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    from biaudio.media.ffprobe import ffmpeg_version

    out["ffmpeg"] = ffmpeg_version()
    return json.dumps(out, sort_keys=True)


# ------------------------------------------------------------------ writing


def _canonical_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_canonical_type(t.value_type)).with_name("item"))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_canonical_type(f.type)) for f in t])
    return t


def _canonical_table(table: pa.Table) -> pa.Table:
    """Name every list's value field ``item``, as a table built from rows has it.

    A table read back from parquet names them ``element``; the name goes into the footer's stored
    arrow schema, so without this a read -> change -> write (``qa apply``, ``annotate``) would
    write other bytes than the build for the same rows. The data pages do not change.
    """
    schema = pa.schema([f.with_type(_canonical_type(f.type)) for f in table.schema], metadata=table.schema.metadata)
    return table.cast(schema)


def write_table(table: pa.Table, path: Path | str) -> Path:
    """Write a manifest/rejects table (or a version of one) the one way every writer uses.

    One set of parquet options (``_WRITE_OPTS``) and one temp + fsync + rename, so equal tables give
    byte-identical files whichever command wrote them (build, ``qa apply``, ``annotate``, ``upgrade``),
    and a crash leaves the old file or the new one, never half of one.
    """
    path = Path(path)
    table = _canonical_table(table)
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp, **_WRITE_OPTS)
    return path


def write_frame(df, path: Path | str) -> Path:
    """Write a side table (an eval report's ``per_clip``/``camera_truth``) as parquet the way
    :func:`write_table` writes the manifest: same options, temp + fsync + rename, no index column."""
    return write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def read_frame(path: Path | str):
    """Any parquet file as a pandas DataFrame (source lists, report side tables); the manifest
    itself goes through :func:`read_manifest_frame`, which checks its version."""
    return pq.read_table(path).to_pandas()


def next_version_path(out_dir: Path | str) -> Path:
    """``OUT/manifest_versions/manifest.v<N>.parquet`` with N one above the highest kept (1 at first)."""
    vdir = Path(out_dir) / VERSIONS_DIR
    vdir.mkdir(exist_ok=True)
    n = 1
    for p in vdir.glob("manifest.v*.parquet"):
        stem = p.name[len("manifest.v") : -len(".parquet")]
        if stem.isdigit():
            n = max(n, int(stem) + 1)
    return vdir / f"manifest.v{n}.parquet"


def keep_version(out_dir: Path | str) -> Path:
    """Copy the current ``OUT/manifest.parquet`` byte for byte to the next version path (temp +
    rename) before a command replaces it; returns that path. ``qa apply``, ``annotate`` and
    ``upgrade`` share this one history, so every earlier manifest stays available for rollback."""
    src = Path(out_dir) / MANIFEST_NAME
    dst = next_version_path(out_dir)
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return dst


def read_schema(path: Path | str) -> pa.Schema:
    """The parquet schema (with its ``biaudio.*`` metadata) of a manifest or rejects file, no rows."""
    return pq.read_schema(path)


def read_table(path: Path | str) -> pa.Table:
    """A manifest or rejects file as written, without version checks or v1 -> v2 conversion
    (for callers that check the version themselves, e.g. the QA tool, which names old versions)."""
    return pq.read_table(path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync, rename: a crash leaves the old file or the new one."""
    atomic.write_text(path, text, fsync=True)


def complete_rows(
    rows: Iterable[dict],
    *,
    recipe_hash: str,
    split_fractions: tuple[float, float],
    salt: str,
    versions: str | None = None,
    lists: Iterable[SplitList] = (),
    repair: bool = True,
    report: dict | None = None,
) -> list[dict]:
    """Add the engine's columns (group, split, schema_version, recipe_hash, tool_versions, QA) to stage rows.

    A row without ``group_id`` gets the one its ``source_id``/``source_uri`` imply
    (:func:`biaudio.engine.splits.group_id_from_row`); the engine sets it from the source item.
    Splits are assigned per group (:func:`biaudio.engine.splits.assign_splits`); ``report``, when
    given, receives the split report (``stats.json`` ``split``).
    """
    versions = tool_versions() if versions is None else versions
    out = []
    for r in rows:
        r = dict(r)
        r["schema_version"] = SCHEMA_VERSION
        if r.get("group_id") in (None, ""):
            r["group_id"] = group_id_from_row(str(r["source_id"]), r.get("source_uri"))
        r.setdefault("section_start_s", None)
        r["recipe_hash"] = recipe_hash
        r["tool_versions"] = versions
        r.setdefault("qa_status", "pending")
        r.setdefault("qa_reason", None)
        out.append(r)
    rep = assign_splits(out, fractions=split_fractions, salt=salt, lists=lists, repair=repair)
    if report is not None:
        report.update(rep)
    return out


def manifest_table(rows: list[dict]) -> pa.Table:
    """Rows -> table with the v2 schema, sorted by clip_id; extra keys become extra columns.

    Extra columns (a stage may add some) are appended after the schema's columns, sorted by name,
    with inferred types; the schema's columns are never reordered or retyped.
    """
    rows = sorted(rows, key=lambda r: str(r["clip_id"]))
    ids = [r["clip_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BiaudioError(None, "duplicate_clip_id", f"clip ids appear twice: {dup[:5]}")
    rows = [ClipRow.from_dict(r).to_dict() for r in rows]  # a bad row: BiaudioError naming clip and column
    try:
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise BiaudioError(None, "bad_row", f"manifest rows do not fit schema v{SCHEMA_VERSION}: {e}") from e
    extra = sorted({k for r in rows for k in r} - set(MANIFEST_SCHEMA.names))
    for name in extra:
        col = pa.array([_jsonable(r.get(name)) for r in rows])
        if pa.types.is_null(col.type):
            col = col.cast(pa.string())
        table = table.append_column(name, col)
    return table


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):  # numpy scalars/arrays
        return v.tolist()
    return v


def write_manifest(out_dir: Path, rows: list[dict]) -> Path:
    """Write ``OUT/manifest.parquet`` atomically (rows must already have the engine columns)."""
    path = Path(out_dir) / MANIFEST_NAME
    write_table(manifest_table(rows), path)
    return path


# ------------------------------------------------------------------ typed rows

_STAGE_OMITS = tuple(c for c in ENGINE_COLUMNS if not c.startswith("qa_"))
"""Engine columns a stage row (``ItemResult.rows``, completion records) does not carry yet (it
carries the QA columns' defaults)."""


def _type_problem(typ: pa.DataType, v: Any) -> str | None:
    """Why ``v`` cannot be stored in a column of arrow type ``typ`` (None when it can).

    Checked, never converted: the writer hands the values to arrow unchanged, so a row that passes
    writes the same bytes as before. numpy scalars pass (numpy registers them with ``numbers``).
    """
    if pa.types.is_string(typ):
        return None if isinstance(v, str) else f"is {type(v).__name__}, expected str"
    if pa.types.is_integer(typ):
        return None if isinstance(v, numbers.Integral) and not isinstance(v, bool) else \
            f"is {type(v).__name__}, expected int"
    if pa.types.is_floating(typ):
        return None if isinstance(v, numbers.Real) and not isinstance(v, bool) else \
            f"is {type(v).__name__}, expected float"
    if pa.types.is_list(typ):
        if isinstance(v, (str, bytes, Mapping)) or not hasattr(v, "__len__") or not hasattr(v, "__iter__"):
            return f"is {type(v).__name__}, expected a list"
        keys = [f.name for f in typ.value_type] if pa.types.is_struct(typ.value_type) else []
        for i, e in enumerate(v):
            if not isinstance(e, Mapping):
                return f"element {i} is {type(e).__name__}, expected a record"
            lack = [k for k in keys if k not in e]
            if lack:
                return f"element {i} lacks {lack}"
        return None
    return None


@dataclass(kw_only=True)
class ClipRow:
    """One row of ``manifest.parquet`` (``MANIFEST_SCHEMA``), typed; fields in the file's column order.

    Rows cross processes and records as plain dicts (JSON completion records, Ray), so the dict
    stays the wire format and this class is the one place that says what a valid row is:
    :meth:`from_dict` checks it (a missing required column or a value of the wrong type is a
    :class:`BiaudioError` naming the clip and the column), :meth:`to_dict` gives the dict back.
    Values are checked, never converted, so a dict that round-trips writes the same bytes.

    Columns the schema does not know (a stage's ``lr_difference_formula``, the ``annotate``
    columns) travel in ``extra`` and are written after the schema's columns. The engine columns
    (``group_id``, ``split``, ``recipe_hash``, ``tool_versions``) are None in a *stage* row, which
    the per-item stages make and the engine completes (``stage=True``); :func:`complete_rows` fills
    them in. Readers of hand-made or partial manifests (review, training, eval) use
    ``strict=False``: absent columns read as None, present ones are still type-checked.
    """

    schema_version: int | None = SCHEMA_VERSION
    clip_id: str
    source_id: str | None = None
    group_id: str | None = None
    source_uri: str | None = None
    split: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    duration_s: float | None = None
    section_start_s: float | None = None
    video_path: str | None = None
    audio_path: str | None = None
    preview_path: str | None = None
    fps: float | None = None
    hfov_deg: float | None = None
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    num_frames: int | None = None
    trajectory: Any = None  # list of {t, yaw, pitch, roll}
    trajectory_mode: str | None = None
    clip_azimuth_deg: float | None = None
    clip_elevation_deg: float | None = None
    window_directions: Any = None  # list of {t, azimuth_deg, elevation_deg, diffuseness, energy_db}
    silence_ratio: float | None = None
    static_ratio: float | None = None
    speech_ratio: float | None = None
    speech_backend: str | None = None
    speech_checkpoint: str | None = None
    lr_difference: float | None = None
    caption: str | None = None
    caption_visible: str | None = None
    caption_invisible: str | None = None
    caption_backend: str | None = None
    foa_convention: str | None = None
    hrir_set: str | None = None
    decoder: str | None = None
    recipe_hash: str | None = None
    tool_versions: str | None = None
    qa_status: str | None = "pending"
    qa_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def columns() -> tuple[str, ...]:
        """The schema's column names, in file order (every one is a field of this class)."""
        return tuple(n for n, _, _ in _COLUMNS)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, stage: bool = False, strict: bool = True) -> ClipRow:
        """A typed row from a dict (a stage's row, a record's, a parquet row); raises BiaudioError
        naming the clip and the column when a required column is missing or a value has the wrong type.

        ``stage``: the engine columns may be missing (a row before :func:`complete_rows`).
        ``strict=False``: any column may be missing (review/eval of hand-made manifests); a float
        NaN (pandas' missing value) in a non-float column reads as None.
        """
        clip = d.get("clip_id")
        missing, wrong, vals = [], [], {}
        for name, typ, nullable in _COLUMNS:
            v = d.get(name)
            if v is not None and not strict and isinstance(v, float) and v != v and not pa.types.is_floating(typ):
                v = None
            if v is None:
                if not (nullable or not strict or (stage and name in ENGINE_COLUMNS)):
                    missing.append(name)
            else:
                problem = _type_problem(typ, v)
                if problem:
                    wrong.append(f"column {name} {problem}")
            if name in d or not strict:  # absent: the default (stage) or None (a partial manifest)
                vals[name] = v
        if missing or wrong or (clip is None and not strict):
            what = "; ".join(([f"missing column(s) {missing}"] if missing else []) + wrong) or "no clip_id"
            raise BiaudioError(None if clip is None else str(clip), "incomplete_row" if missing else "bad_row",
                               f"clip {clip}: {what}")
        extra = {k: v for k, v in d.items() if k not in MANIFEST_SCHEMA.names}
        return cls(**vals, extra=extra)

    def to_dict(self, *, stage: bool = False) -> dict[str, Any]:
        """The row as the writer takes it: the schema's columns in order, then ``extra``.
        ``stage``: without the engine-only columns (the shape of ``ItemResult.rows``)."""
        out = {n: getattr(self, n) for n in self.columns() if not (stage and n in _STAGE_OMITS)}
        out.update(self.extra)
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """A column by name (schema or extra), ``default`` when it is None or absent."""
        v = getattr(self, name, None) if name in MANIFEST_SCHEMA.names else self.extra.get(name)
        return default if v is None else v


@dataclass(frozen=True)
class Reject:
    """One row of ``rejects.parquet`` (``REJECTS_SCHEMA``), typed.

    The counterpart of :class:`ClipRow` for dropped items and clips (fields = ``REJECTS_SCHEMA``'s
    columns, in order; a test keeps the two in step). Unlike a clip row a reject is never refused:
    ``from_dict`` takes the loose dicts the stages and the engine make (``reject_row``, records read
    back from JSON) and normalises them (strings, ``attempt`` >= 1, ``unknown`` for a missing stage
    or reason), because losing the record of *why* something was dropped would be worse than a
    vague one; ``to_dict`` gives the row the writer stores.
    """

    item_id: str
    clip_id: str | None
    stage: str
    reason: str
    detail: str | None
    attempt: int
    source_uri: str | None

    @classmethod
    def from_dict(cls, r: dict) -> Reject:
        def opt(v: Any) -> str | None:
            return None if v is None else str(v)

        return cls(item_id=str(r.get("item_id")), clip_id=opt(r.get("clip_id")),
                   stage=str(r.get("stage") or "unknown"), reason=str(r.get("reason") or "unknown"),
                   detail=opt(r.get("detail")), attempt=int(r.get("attempt") or 1), source_uri=opt(r.get("source_uri")))

    @staticmethod
    def columns() -> tuple[str, ...]:
        """The schema's column names, in file order (every one is a field of this class)."""
        return tuple(REJECTS_SCHEMA.names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sort_key(self) -> tuple[str, str, str, str, str]:
        return (self.item_id, self.clip_id or "", self.stage, self.reason, self.detail or "")


def write_rejects(out_dir: Path, rejects: list[dict]) -> Path:
    """Write ``OUT/rejects.parquet`` atomically, sorted (item, clip, stage, reason) for stable bytes."""
    norm = sorted((Reject.from_dict(r) for r in rejects), key=Reject.sort_key)
    path = Path(out_dir) / REJECTS_NAME
    write_table(pa.Table.from_pylist([r.to_dict() for r in norm], schema=REJECTS_SCHEMA), path)
    return path


def write_stats(out_dir: Path, stats: dict) -> Path:
    path = Path(out_dir) / STATS_NAME
    atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------ reading


def schema_version_of(schema: pa.Schema) -> int | None:
    """The version in the parquet metadata (``biaudio.schema_version``), None when absent."""
    v = (schema.metadata or {}).get(b"biaudio.schema_version")
    try:
        return None if v is None else int(v.decode())
    except ValueError:
        return -1


def check_schema(schema: pa.Schema, where: str) -> list[str]:
    """Problems with a manifest schema: unreadable version, missing columns, wrong types.

    A v1 file is checked against the v1 columns (its v2 columns are derived on read); any version
    other than v1/v2 raises :class:`SchemaVersionError`.
    """
    version = schema_version_of(schema)
    if version is not None and version not in READABLE_SCHEMA_VERSIONS:
        raise SchemaVersionError(
            where,
            "schema_version",
            f"written with manifest schema v{version}; this biaudio reads v1 and v{SCHEMA_VERSION} "
            "(rebuild into a new folder, or use the biaudio release that wrote it)",
        )
    columns = _V1_COLUMNS if version == 1 or (version is None and "group_id" not in schema.names) else _COLUMNS
    problems = []
    for name, typ, _ in columns:
        if name not in schema.names:
            problems.append(f"missing column {name}")
        elif not schema.field(name).type.equals(typ):
            problems.append(f"column {name} has type {schema.field(name).type}, expected {typ}")
    return problems


def _manifest_file(out_dir: Path | str) -> Path:
    p = Path(out_dir)
    return p if p.suffix == ".parquet" else p / MANIFEST_NAME


def _manifest_schema(out_dir: Path | str) -> tuple[Path, pa.Schema]:
    """The manifest's path and parquet schema; BiaudioError when it is missing or unreadable."""
    path = _manifest_file(out_dir)
    if not path.is_file():
        raise BiaudioError(str(path), "no_manifest", "no manifest.parquet here (has the build run?)")
    try:
        return path, pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BiaudioError(str(path), "unreadable_manifest", str(e)) from e


def manifest_version(out_dir: Path | str) -> int | None:
    """Schema version of ``OUT/manifest.parquet`` (metadata, else the rows; None if it has neither).

    Raises BiaudioError when there is no readable manifest."""
    path, schema = _manifest_schema(out_dir)
    v = schema_version_of(schema)
    if v is None and "schema_version" in schema.names:
        vals = {x for x in pq.read_table(path, columns=["schema_version"]).column(0).to_pylist() if x is not None}
        v = max(vals) if vals else None
    return v


def v1_to_v2(table: pa.Table) -> pa.Table:
    """Add the v2 columns a v1 table lacks; returns the table unchanged when it has them.

    ``group_id`` from ``source_id``/``source_uri`` (:func:`biaudio.engine.splits.group_id_from_row`;
    ``clip_id`` when a hand-made table has no ``source_id``). ``section_start_s``: a YouTube source
    whose id is ``<ytid>_<start>`` was a sectioned download; its ``start_s``/``end_s`` were times in
    the section and become times in the video. Works on partial tables (only the columns present
    are used); the columns keep the v2 order when the table has all v1 columns. ``schema_version``
    keeps the file's value, so a caller can tell a converted table.
    """
    names = table.column_names
    if "group_id" in names and "section_start_s" in names:
        return table
    n = table.num_rows
    sid = table.column("source_id").to_pylist() if "source_id" in names else (
        table.column("clip_id").to_pylist() if "clip_id" in names else [None] * n)
    uri = table.column("source_uri").to_pylist() if "source_uri" in names else [None] * n
    if "group_id" not in names:
        groups = [group_id_from_row(str(s), u) if s is not None else None for s, u in zip(sid, uri, strict=True)]
        table = table.append_column(pa.field("group_id", pa.string(), nullable=False), pa.array(groups, pa.string()))
    if "section_start_s" not in table.column_names:
        off = [section_start_from_row(str(s), u) if s is not None else None for s, u in zip(sid, uri, strict=True)]
        for col in ("start_s", "end_s"):
            if col in table.column_names and any(o for o in off):
                vals = table.column(col).to_pylist()
                shifted = [None if v is None else float(v) + (o or 0.0) for v, o in zip(vals, off, strict=True)]
                i = table.column_names.index(col)
                table = table.set_column(i, table.schema.field(i), pa.array(shifted, pa.float64()))
        table = table.append_column(pa.field("section_start_s", pa.float64()), pa.array(off, pa.float64()))
    if all(c in table.column_names for c, _, _ in _COLUMNS):  # the v2 order, extra columns after
        order = [c for c, _, _ in _COLUMNS] + [c for c in table.column_names if c not in MANIFEST_SCHEMA.names]
        table = table.select(order)
    return table


def read_manifest(out_dir: Path | str, columns: list[str] | None = None) -> pa.Table:
    """Read ``OUT/manifest.parquet`` (or a manifest path) as v2, refusing unknown schema versions.

    A v1 file is checked against the v1 schema and gets its v2 columns derived (:func:`v1_to_v2`).
    Raises :class:`SchemaVersionError` for another version, :class:`BiaudioError` for a missing or
    malformed manifest.
    """
    path, schema = _manifest_schema(out_dir)
    problems = check_schema(schema, str(path))
    if problems:
        raise BiaudioError(str(path), "bad_schema", "; ".join(problems))
    need = None
    if columns is not None:
        need = list(dict.fromkeys([*columns, "schema_version"]))
        if "group_id" not in schema.names:  # v1: what the derived columns are made from
            need = list(dict.fromkeys([*need, "source_id", "source_uri", "start_s", "end_s"]))
        need = [c for c in need if c in schema.names]
    table = pq.read_table(path, columns=need)
    versions = set(table.column("schema_version").to_pylist()) if "schema_version" in table.column_names else set()
    if versions - set(READABLE_SCHEMA_VERSIONS):
        raise SchemaVersionError(str(path), "schema_version", f"rows with schema_version {sorted(versions)}")
    table = v1_to_v2(table)
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


def read_manifest_frame(out_dir: Path | str):
    """``manifest.parquet`` as a pandas DataFrame for the model's loaders, v1 or v2 (v2 columns
    derived for v1), tolerant of hand-made manifests that have only some columns.

    Unlike :func:`read_manifest` it checks only the version (a file from an unknown version is
    refused), not the column set: the training and eval code need just the columns they use.
    """
    path = _manifest_file(out_dir)
    if not path.is_file():
        raise BiaudioError(str(path), "no_manifest", "no manifest.parquet here (has the build run?)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BiaudioError(str(path), "unreadable_manifest", str(e)) from e
    version = schema_version_of(table.schema)
    rows_v = set(table.column("schema_version").to_pylist()) - {None} if "schema_version" in table.column_names else set()
    bad = sorted(({version} if version is not None else set()) | rows_v - set(READABLE_SCHEMA_VERSIONS))
    bad = [v for v in bad if v not in READABLE_SCHEMA_VERSIONS]
    if bad:
        raise SchemaVersionError(str(path), "schema_version",
                                 f"manifest schema_version {bad}; this biaudio reads {list(READABLE_SCHEMA_VERSIONS)}")
    return v1_to_v2(table).to_pandas()


def read_rejects(out_dir: Path | str) -> pa.Table:
    path = Path(out_dir) / REJECTS_NAME
    if not path.is_file():
        return REJECTS_SCHEMA.empty_table()
    return pq.read_table(path)


def read_stats(out_dir: Path | str) -> dict:
    path = Path(out_dir) / STATS_NAME
    if not path.is_file():
        raise BiaudioError(str(path), "no_stats", "no stats.json here (has the build run?)")
    return json.loads(path.read_text(encoding="utf-8"))
