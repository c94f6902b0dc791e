"""Manifest schema v1: ``manifest.parquet`` (one row per kept clip), ``rejects.parquet``, ``stats.json``.

The schema is a fixed pyarrow schema (not inferred from the rows) so that every build, whatever
its content, writes the same column types, and readers (pandas, pyarrow, duckdb, the model's data
loader) can rely on it. ``manifests/README.md`` documents it; a test keeps the two in step.

Reproducibility: rows are sorted by ``clip_id`` and written with fixed writer options, so the same
inputs give a byte-identical file (the resume tests compare bytes). Every file is written to a
temporary name and renamed, so a reader never sees half a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from biaudio.build.types import temp_path
from biaudio.errors import BiaudioError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.parquet"
REJECTS_NAME = "rejects.parquet"
STATS_NAME = "stats.json"
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

# (name, type, nullable): the v1 columns, in file order
_COLUMNS: list[tuple[str, pa.DataType, bool]] = [
    ("schema_version", pa.int32(), False),
    ("clip_id", pa.string(), False),
    ("source_id", pa.string(), False),
    ("source_uri", pa.string(), False),
    ("split", pa.string(), False),
    ("start_s", pa.float64(), False),
    ("end_s", pa.float64(), False),
    ("duration_s", pa.float64(), False),
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
ENGINE_COLUMNS = ("schema_version", "split", "recipe_hash", "tool_versions", "qa_status", "qa_reason")
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


def assign_split(source_id: str, fractions: tuple[float, float], salt: str) -> str:
    """``train``/``val``/``test`` from a hash of the *source* id (never the clip id).

    ``fractions`` = (val_fraction, test_fraction). The hash maps the source to a uniform number in
    [0, 1); the low ``test`` part is test, the next ``val`` part is val. Every clip of one source
    video lands in the same split, and adding sources never moves existing ones.
    """
    val, test = fractions
    h = hashlib.sha256(f"{salt}\x00{source_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


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
    try:
        first = subprocess.run(
            ["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.splitlines()
        out["ffmpeg"] = first[0].split()[2] if first and len(first[0].split()) > 2 else None
    except (OSError, subprocess.SubprocessError):
        out["ffmpeg"] = None
    return json.dumps(out, sort_keys=True)


# ------------------------------------------------------------------ writing


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    tmp = temp_path(path)
    try:
        pq.write_table(table, tmp, **_WRITE_OPTS)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync, rename: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def complete_rows(
    rows: Iterable[dict],
    *,
    recipe_hash: str,
    split_fractions: tuple[float, float],
    salt: str,
    versions: str | None = None,
) -> list[dict]:
    """Add the engine's columns (split, schema_version, recipe_hash, tool_versions, QA) to stage rows."""
    versions = tool_versions() if versions is None else versions
    out = []
    for r in rows:
        r = dict(r)
        r["schema_version"] = SCHEMA_VERSION
        r["split"] = assign_split(str(r["source_id"]), split_fractions, salt)
        r["recipe_hash"] = recipe_hash
        r["tool_versions"] = versions
        r.setdefault("qa_status", "pending")
        r.setdefault("qa_reason", None)
        out.append(r)
    return out


def manifest_table(rows: list[dict]) -> pa.Table:
    """Rows -> table with the v1 schema, sorted by clip_id; extra keys become extra columns.

    Extra columns (a stage may add some) are appended after the v1 columns, sorted by name, with
    inferred types; the v1 columns are never reordered or retyped.
    """
    rows = sorted(rows, key=lambda r: str(r["clip_id"]))
    ids = [r["clip_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BiaudioError(None, "duplicate_clip_id", f"clip ids appear twice: {dup[:5]}")
    for r in rows:
        missing = [n for n, _, nullable in _COLUMNS if not nullable and r.get(n) is None]
        if missing:
            raise BiaudioError(None, "incomplete_row", f"clip {r.get('clip_id')}: missing {missing}")
    try:
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise BiaudioError(None, "bad_row", f"manifest rows do not fit schema v1: {e}") from e
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
    _atomic_write_table(manifest_table(rows), path)
    return path


def write_rejects(out_dir: Path, rejects: list[dict]) -> Path:
    """Write ``OUT/rejects.parquet`` atomically, sorted (item, clip, stage, reason) for stable bytes."""
    norm = [
        {
            "item_id": str(r.get("item_id")),
            "clip_id": None if r.get("clip_id") is None else str(r.get("clip_id")),
            "stage": str(r.get("stage") or "unknown"),
            "reason": str(r.get("reason") or "unknown"),
            "detail": None if r.get("detail") is None else str(r.get("detail")),
            "attempt": int(r.get("attempt") or 1),
            "source_uri": None if r.get("source_uri") is None else str(r.get("source_uri")),
        }
        for r in rejects
    ]
    norm.sort(key=lambda r: (r["item_id"], r["clip_id"] or "", r["stage"], r["reason"], r["detail"] or ""))
    path = Path(out_dir) / REJECTS_NAME
    _atomic_write_table(pa.Table.from_pylist(norm, schema=REJECTS_SCHEMA), path)
    return path


def write_stats(out_dir: Path, stats: dict) -> Path:
    path = Path(out_dir) / STATS_NAME
    atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------ reading


def check_schema(schema: pa.Schema, where: str) -> list[str]:
    """Problems with a manifest schema: wrong version, missing v1 columns, wrong types."""
    meta = schema.metadata or {}
    version = meta.get(b"biaudio.schema_version")
    if version is not None and version.decode() != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            where,
            "schema_version",
            f"written with manifest schema v{version.decode()}; this biaudio reads v{SCHEMA_VERSION} "
            "(rebuild into a new folder, or use the biaudio release that wrote it)",
        )
    problems = []
    for name, typ, _ in _COLUMNS:
        if name not in schema.names:
            problems.append(f"missing column {name}")
        elif not schema.field(name).type.equals(typ):
            problems.append(f"column {name} has type {schema.field(name).type}, expected {typ}")
    return problems


def read_manifest(out_dir: Path | str, columns: list[str] | None = None) -> pa.Table:
    """Read ``OUT/manifest.parquet`` (or a manifest path), refusing another schema version.

    Raises :class:`SchemaVersionError` for another version, :class:`BiaudioError` for a missing or
    malformed manifest.
    """
    p = Path(out_dir)
    path = p if p.suffix == ".parquet" else p / MANIFEST_NAME
    if not path.is_file():
        raise BiaudioError(str(path), "no_manifest", "no manifest.parquet here (has the build run?)")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BiaudioError(str(path), "unreadable_manifest", str(e)) from e
    problems = check_schema(schema, str(path))
    if problems:
        raise BiaudioError(str(path), "bad_schema", "; ".join(problems))
    table = pq.read_table(path, columns=columns)
    versions = set(table.column("schema_version").to_pylist()) if "schema_version" in table.column_names else set()
    if versions - {SCHEMA_VERSION}:
        raise SchemaVersionError(str(path), "schema_version", f"rows with schema_version {sorted(versions)}")
    return table


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
