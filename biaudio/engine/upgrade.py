"""``biaudio upgrade OUT``: rewrite a schema-v1 build folder as v2 without rebuilding any media.

Why a command and not only the read-time conversion: the readers already derive ``group_id`` and
video times for a v1 manifest, but a v1 folder's *splits* were assigned per item, so a Sphere360
folder has videos in train and test, and the folder cannot be extended by a v2 build. The upgrade
writes what a v2 build of the same recipe would have written: ``group_id``, ``section_start_s``,
times in the source video, splits per group (the folder's own ``recipe.yaml`` ``split`` section,
so the salt and fractions stay), and stamps the state as v2.

Safety: the previous manifest is kept as ``manifest_versions/manifest.v<N>.parquet`` (the same
history ``biaudio qa apply`` keeps), every file is written to a temporary name and renamed, and
each step can be rerun: a crash half-way leaves a folder that ``biaudio upgrade`` finishes. QA
decisions and every other column are kept. The completion records are stamped v2 but keep their
v1 recipe hash, so a later ``biaudio build`` into the folder redoes their items (the v2 recipe has
more keys, hence another hash) instead of mixing v1 rows into a v2 manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biaudio.engine.splits import SPLITS, assign_splits, leaking_groups
from biaudio.errors import BiaudioError
from biaudio.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    VERSIONS_DIR,
    SchemaVersionError,
    atomic_write_text,
    keep_version,
    manifest_table,
    manifest_version,
    read_manifest,
    read_rejects,
    read_schema,
    write_rejects,
    write_table,
)

STATE = ".state"


def _split_config(out: Path) -> tuple[Any, str]:
    """The folder's split settings (``recipe.yaml``), or the defaults when it has none."""
    import yaml

    from biaudio.recipe import SplitConfig

    path = out / "recipe.yaml"
    if not path.is_file():
        return SplitConfig(), "defaults (no recipe.yaml in the folder)"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return SplitConfig.model_validate(data.get("split") or {}), "recipe.yaml"
    except Exception as e:  # noqa: BLE001 - yaml or pydantic errors: say which file
        raise BiaudioError(str(path), "bad_recipe", f"cannot read its split section: {e}") from None


def upgrade(out_dir: Path | str, *, dry_run: bool = False) -> dict:
    """Rewrite ``OUT`` from manifest schema v1 to v2 (see the module docstring); returns a report.

    Raises BiaudioError when there is no manifest, :class:`SchemaVersionError` for a version this
    biaudio cannot read, and ``BuildLockedError`` while a build writes the folder.
    """
    from biaudio.engine.state import _Lock

    out = Path(out_dir)
    version = manifest_version(out)
    report: dict[str, Any] = {"out_dir": str(out), "from_version": version, "to_version": SCHEMA_VERSION,
                              "dry_run": dry_run, "changed": False}
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaVersionError(str(out), "schema_version", f"manifest schema v{version} is newer than this biaudio")
    cfg, cfg_from = _split_config(out)
    report["split_settings"] = cfg_from
    if version != SCHEMA_VERSION:
        table = read_manifest(out)  # v1 read as v2: group_id, section_start_s and video times derived
        rows = table.to_pylist()
        before = {r["clip_id"]: r["split"] for r in rows}
        leaks = leaking_groups(rows)
        split_report = assign_splits(rows, fractions=(cfg.val_fraction, cfg.test_fraction), salt=cfg.salt)
        for r in rows:
            r["schema_version"] = SCHEMA_VERSION
        report.update(clips=len(rows), groups=len({r["group_id"] for r in rows}), leaking_groups_before=len(leaks),
                      leaking_groups_examples=sorted(leaks)[:10],
                      clips_moved=sum(1 for r in rows if before[r["clip_id"]] != r["split"]),
                      shifted_to_video_time=sum(1 for r in rows if r.get("section_start_s")),
                      by_split={s: sum(1 for r in rows if r["split"] == s) for s in SPLITS})
    else:
        rows, split_report = None, None
        report["manifest"] = "already v2"
    state_files = _state_files_to_stamp(out)
    report["state_files_to_stamp"] = len(state_files)
    if dry_run:
        return report
    with _Lock(out):
        if rows is not None:
            report["previous_manifest"] = str(_write_manifest_v2(out, rows))
            report["changed"] = True
        _rewrite_rejects(out)
        _update_stats(out, split_report)
        for p in state_files:
            rec = json.loads(p.read_text(encoding="utf-8"))
            rec["schema_version"], rec["upgraded_from"] = SCHEMA_VERSION, rec.get("schema_version")
            atomic_write_text(p, json.dumps(rec, sort_keys=True) if p.parent.name == "items"
                              else json.dumps(rec, indent=1, sort_keys=True))
            report["changed"] = True
    return report


def _state_files_to_stamp(out: Path) -> list[Path]:
    """Completion records and ``build.json`` still stamped v1 (``build.json`` last: it is what a
    build checks first, so a crash before it leaves the folder marked as not yet upgraded)."""
    items = sorted((out / STATE / "items").glob("*.json")) if (out / STATE / "items").is_dir() else []
    todo = []
    for p in [*items, out / STATE / "build.json"]:
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            v = json.loads(p.read_text(encoding="utf-8")).get("schema_version")
        except (OSError, ValueError):
            continue
        if v != SCHEMA_VERSION:
            todo.append(p)
    return todo


def _write_manifest_v2(out: Path, rows: list[dict]) -> Path:
    path = out / MANIFEST_NAME
    old_meta = dict(read_schema(path).metadata or {})
    previous = keep_version(out)
    table = manifest_table(rows)
    meta = dict(table.schema.metadata or {})
    for k, v in old_meta.items():  # keep e.g. biaudio.qa_apply; the version key is the new one
        if k.startswith(b"biaudio.") and k not in meta:
            meta[k] = v
    meta[b"biaudio.upgraded_from"] = json.dumps({"schema_version": 1, "previous": f"{VERSIONS_DIR}/{previous.name}"}).encode()
    write_table(table.replace_schema_metadata(meta), path)
    return previous


def _rewrite_rejects(out: Path) -> None:
    if (out / "rejects.parquet").is_file():
        meta = read_schema(out / "rejects.parquet").metadata or {}
        if meta.get(b"biaudio.schema_version") != str(SCHEMA_VERSION).encode():
            write_rejects(out, read_rejects(out).to_pylist())


def _update_stats(out: Path, split_report: dict | None) -> None:
    path = out / "stats.json"
    if not path.is_file():
        return
    stats = json.loads(path.read_text(encoding="utf-8"))
    if stats.get("schema_version") == SCHEMA_VERSION and split_report is None:
        return
    rows = read_manifest(out, columns=["source_id", "group_id", "split"]).to_pylist()
    clips = stats.setdefault("clips", {})
    clips["by_split"] = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
    clips["sources_by_split"] = {s: len({r["source_id"] for r in rows if r["split"] == s}) for s in SPLITS}
    clips["groups_by_split"] = {s: len({r["group_id"] for r in rows if r["split"] == s}) for s in SPLITS}
    if split_report is not None:
        stats["split"] = split_report
    stats["upgraded_from"] = stats.get("schema_version")
    stats["schema_version"] = SCHEMA_VERSION
    atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
