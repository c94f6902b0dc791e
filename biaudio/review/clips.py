"""Read a built manifest for review: schema check, clip selection (``--where``, ``--sample``) and
per-clip payloads for the page.

The manifest is read as written (``biaudio.manifest.read_table``, not ``read_manifest``, which
checks every column) so review works on any v1 or v2 manifest, including hand-made or partial
ones: only ``schema_version``, ``clip_id`` and ``video_path`` are required, every other column is
optional and shows up as "n/a" on the page. The versions accepted and the v1 -> v2 conversion for
display (``group_id``, times in the source video) come from ``biaudio.manifest``; ``qa
apply`` writes back the table as read, so a v1 file stays v1 until ``biaudio upgrade``. The
arrow table stays columnar; one row is converted to Python only when the page asks for it, so a
100K-clip manifest with per-frame trajectories does not become millions of dicts at startup.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from biaudio.errors import BiaudioError
from biaudio.manifest import READABLE_SCHEMA_VERSIONS, ClipRow

SUPPORTED_SCHEMA_VERSIONS = frozenset(READABLE_SCHEMA_VERSIONS)
REQUIRED_COLUMNS = ("schema_version", "clip_id", "video_path")
MEDIA_COLUMNS = ("video_path", "audio_path", "preview_path")
# Scalars shown in the score table, in display order (missing columns are simply left out).
SCORE_COLUMNS = (
    "lr_difference",
    "silence_ratio",
    "static_ratio",
    "speech_ratio",
    "clip_azimuth_deg",
    "clip_elevation_deg",
)
INFO_COLUMNS = (
    "source_id",
    "group_id",
    "source_uri",
    "split",
    "start_s",
    "end_s",
    "duration_s",
    "section_start_s",
    "fps",
    "hfov_deg",
    "width",
    "height",
    "sample_rate",
    "trajectory_mode",
    "speech_backend",
    "caption_backend",
    "hrir_set",
    "decoder",
    "qa_status",
    "qa_reason",
)
MAX_PLOT_POINTS = 600


class ManifestError(BiaudioError):
    """The manifest cannot be reviewed (missing, unreadable, wrong schema version, bad --where)."""


def manifest_path(out_dir: Path) -> Path:
    return Path(out_dir) / "manifest.parquet"


def read_manifest_table(out_dir: Path):
    """Read ``OUT/manifest.parquet`` as a pyarrow table and refuse unknown schema versions.

    Refusing (instead of guessing) matters because an old manifest may lack the columns that
    ``qa apply`` rewrites, and a newer one may have changed their meaning.
    """
    from biaudio.manifest import read_table

    path = manifest_path(out_dir)
    if not path.is_file():
        raise ManifestError(
            str(path), "no_manifest", "no manifest.parquet in this folder; run `biaudio build` first"
        )
    try:
        table = read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ManifestError(str(path), "unreadable_manifest", str(exc)) from exc
    if "schema_version" not in table.column_names:
        raise ManifestError(
            str(path),
            "old_schema_version",
            "manifest has no schema_version column (written before schema v1); "
            "rebuild it with this biaudio version",
        )
    versions = sorted({int(v) for v in table.column("schema_version").to_pylist() if v is not None})
    bad = [v for v in versions if v not in SUPPORTED_SCHEMA_VERSIONS]
    if bad:
        newest = max(SUPPORTED_SCHEMA_VERSIONS)
        kind = "old" if max(bad) < newest else "unknown (newer?)"
        raise ManifestError(
            str(path),
            "unsupported_schema_version",
            f"manifest schema_version {bad} is {kind}; this review tool reads version(s) "
            f"{sorted(SUPPORTED_SCHEMA_VERSIONS)}; rebuild the manifest or upgrade biaudio",
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(str(path), "missing_columns", f"manifest lacks required column(s) {missing}")
    return table


def safe_relpath(value: Any) -> str | None:
    """Normalise a manifest media path; ``None`` when empty or when it could leave OUT.

    Manifest paths are relative by contract; an absolute path or one with ``..`` is treated as
    missing rather than served, so a tampered manifest cannot turn the server into a file reader.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().replace("\\", "/")
    if not text:
        return None
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        return None
    parts = [x for x in p.parts if x not in (".", "")]
    return "/".join(parts) or None


def _clean(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _thin(points: list, limit: int = MAX_PLOT_POINTS) -> list:
    if len(points) <= limit:
        return points
    step = math.ceil(len(points) / limit)
    return points[::step]


@dataclass
class ClipSet:
    """The manifest plus the ordered selection of rows one review pass walks through."""

    out_dir: Path
    table: Any  # pyarrow.Table
    rows: list[int]  # manifest row indices, in review order
    clip_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        ids = self.table.column("clip_id").to_pylist()
        self.clip_ids = [str(ids[r]) for r in self.rows]
        self._index = {cid: i for i, cid in enumerate(self.clip_ids)}

    def __len__(self) -> int:
        return len(self.rows)

    def index_of(self, clip_id: str) -> int | None:
        return self._index.get(clip_id)

    def allowed_media(self) -> set[str]:
        """Every media path (relative to OUT) the server may serve: those listed in the manifest."""
        allowed: set[str] = set()
        for col in MEDIA_COLUMNS:
            if col in self.table.column_names:
                for v in self.table.column(col).to_pylist():
                    rel = safe_relpath(v)
                    if rel:
                        allowed.add(rel)
        return allowed

    def media_file(self, rel: str | None) -> Path | None:
        """The file for a manifest path if it exists and stays inside OUT after resolving links."""
        if not rel:
            return None
        root = self.out_dir.resolve()
        p = (root / rel).resolve()
        if not p.is_relative_to(root) or not p.is_file():
            return None
        return p

    def clip_payload(self, i: int) -> dict[str, Any]:
        """Everything the page shows for clip ``i`` of the selection (JSON-ready)."""
        row = self.table.slice(self.rows[i], 1).to_pylist()[0]
        clip = ClipRow.from_dict(row, strict=False)  # columns a partial manifest lacks read as None
        media: dict[str, Any] = {}
        for col in MEDIA_COLUMNS:
            key = col.removesuffix("_path")
            rel = safe_relpath(clip.get(col))
            present = self.media_file(rel) is not None
            media[key] = {"path": rel, "raw": clip.get(col), "present": present}
        traj = clip.trajectory or []
        wins = clip.window_directions or []
        plot = {
            "t": [],
            "yaw": [],
            "win_t": [],
            "win_az": [],
            "win_energy_db": [],
        }
        for p in _thin(traj):
            if p and p.get("t") is not None and p.get("yaw") is not None:
                plot["t"].append(_clean(float(p["t"])))
                plot["yaw"].append(_clean(float(p["yaw"])))
        for w in _thin(wins):
            if w and w.get("t") is not None and w.get("azimuth_deg") is not None:
                plot["win_t"].append(_clean(float(w["t"])))
                plot["win_az"].append(_clean(float(w["azimuth_deg"])))
                e = w.get("energy_db")
                plot["win_energy_db"].append(_clean(float(e)) if e is not None else None)
        return {
            "index": i,
            "total": len(self.rows),
            "clip_id": clip.clip_id,
            "media": media,
            "caption": clip.caption,
            "caption_visible": clip.caption_visible,
            "caption_invisible": clip.caption_invisible,
            # only the columns the manifest has (a partial one shows fewer, not a row of nulls)
            "scores": {c: _clean(clip.get(c)) for c in SCORE_COLUMNS if c in row},
            "info": {c: _clean(clip.get(c)) for c in INFO_COLUMNS if c in row},
            "plot": plot,
        }


def select_rows(table, where: str | None = None, sample: int | None = None, seed: int = 0) -> list[int]:
    """Row indices for a pass: ``--where`` (a duckdb SQL predicate over the manifest columns), then
    ``--sample K`` drawn with ``random.Random(seed)`` from the matching rows sorted by clip_id.

    Sorting before sampling makes the sample depend only on the set of clips, not on the order the
    build wrote them; the sample is presented in the drawn order (shuffled), so an audit pass is not
    biased by source grouping. Without ``--sample`` the manifest order is kept.
    """
    rows = list(range(table.num_rows))
    if where:
        import duckdb
        import pyarrow as pa

        t = table.append_column("__row", pa.array(rows, type=pa.int64()))
        con = duckdb.connect(":memory:")
        try:
            con.register("manifest", t)
            try:
                # Nothing outside the registered table is reachable from a --where expression.
                con.execute("SET enable_external_access = false")
            except Exception:
                pass
            try:
                res = con.execute(f"SELECT __row FROM manifest WHERE ({where}) ORDER BY __row").fetchall()
            except Exception as exc:
                raise ManifestError(None, "bad_where", f"--where {where!r}: {exc}") from exc
        finally:
            con.close()
        rows = [int(r[0]) for r in res]
    if sample is not None:
        if sample < 0:
            raise ManifestError(None, "bad_sample", "--sample must be >= 0")
        ids = table.column("clip_id").to_pylist()
        rows.sort(key=lambda r: str(ids[r]))
        rows = random.Random(seed).sample(rows, min(sample, len(rows)))
    return rows


def load_clipset(
    out_dir: Path, where: str | None = None, sample: int | None = None, seed: int = 0
) -> ClipSet:
    from biaudio.manifest import v1_to_v2

    table = v1_to_v2(read_manifest_table(out_dir))  # a v1 file shows its derived group and video times
    return ClipSet(Path(out_dir), table, select_rows(table, where, sample, seed))
