"""Records -> ``manifest.parquet``, ``rejects.parquet`` and ``stats.json``, at the end of every run.

Built from every valid completion record on disk, never from in-memory state, so a killed or
partial run still assembles exactly what is finished.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from biaudio.engine.items import _record_mismatch
from biaudio.engine.state import _read_record, _sweep_orphans
from biaudio.engine.types import WorkItem
from biaudio.errors import BiaudioError
from biaudio.manifest import (
    MANIFEST_NAME,
    ClipRow,
    complete_rows,
    read_manifest,
    tool_versions,
    write_manifest,
    write_rejects,
    write_stats,
)
from biaudio.recipe import Recipe, resolve_source_entry

if TYPE_CHECKING:
    from biaudio.engine.run import BuildSummary


def read_recipe_split_lists(recipe: Recipe) -> list:
    """The recipe's ``split.lists`` read now (relative paths like sources: next to the recipe first),
    so an unreadable list stops the build before any work; raises BiaudioError naming the file."""
    from biaudio.engine.splits import read_split_list

    return [read_split_list(split, resolve_source_entry(path, recipe.base_dir))
            for split, path in sorted(recipe.split.lists.items())]


def _assemble(out: Path, recipe: Recipe, rhash: str, items: list[WorkItem], transient: list[dict],
              summary: BuildSummary, wall_s: float, workers: int, split_lists: list | None = None) -> None:
    """Manifest, rejects and stats from every valid completion record (never from in-memory state)."""
    from biaudio.engine.splits import group_id_for
    from biaudio.engine.stats import compute_stats

    records = []
    for it in items:
        rec = _read_record(out, it.item_id)
        if rec is not None and rec.get("recipe_hash") == rhash and _record_mismatch(rec, it) is None:
            records.append(rec)
    rows: list[dict] = []
    rejects: list[dict] = list(summary.source_errors) + transient
    for rec in records:
        gid = group_id_for(rec.get("source") or {}, recipe.split.group_pattern)
        rows.extend(replace(ClipRow.from_dict(r, stage=True), group_id=gid).to_dict() for r in rec["result"]["rows"])
        src_uri = str(rec.get("source", {}).get("uri") or "")
        for r in rec["result"]["rejects"]:
            rejects.append({**r, "attempt": r.get("attempt", rec["attempt"]), "source_uri": r.get("source_uri", src_uri)})
    split_report: dict = {}
    rows = complete_rows(rows, recipe_hash=rhash,
                         split_fractions=(recipe.split.val_fraction, recipe.split.test_fraction),
                         salt=recipe.split.salt, versions=tool_versions(),
                         lists=split_lists if split_lists is not None else read_recipe_split_lists(recipe),
                         repair=recipe.split.repair, report=split_report)
    conflicts = split_report.get("conflicts", [])
    for c in conflicts[:10]:
        summary.notes.append(f"split lists put video {c['group_id']} in {'/'.join(c['entries'])}: "
                             + (f"moved whole to {c['moved_to']}" if c["moved_to"] else "kept (split.repair is off: "
                                "biaudio validate will refuse the leak)"))
    if len(conflicts) > 10:
        summary.notes.append(f"... and {len(conflicts) - 10} more videos in two splits (stats.json: split.conflicts)")
    _keep_qa(out, rows, rhash)
    from biaudio.annotate.engine import carry_annotations

    carry_annotations(out, rows)  # a rebuild keeps what `biaudio annotate` added (from its records)
    write_manifest(out, rows)
    write_rejects(out, rejects)
    referenced = {r[k] for r in rows for k in ("video_path", "audio_path", "preview_path") if r.get(k)}
    _sweep_orphans(out, records, referenced)
    summary.kept_clips = len(rows)
    summary.total_rejects = len(rejects)
    stats = compute_stats(records, rows, rejects, n_items=len(items), rhash=rhash)
    stats["split"] = split_report
    stats["last_run"] = {"processed": len(summary.processed), "skipped": summary.skipped,
                         "wall_s": round(wall_s, 3), "executor": recipe.execution.executor, "workers": workers,
                         "internal_errors": len(summary.internal_errors), "write_errors": len(summary.write_errors),
                         "stopped": summary.stopped,
                         "items_per_node": _items_per_node(records, set(summary.processed))}
    write_stats(out, stats)


def _items_per_node(records: list[dict], processed: set[str]) -> dict[str, int]:
    """Items of this run per node (the Ray node id, else the host): how the work was spread."""
    counts: dict[str, int] = {}
    for rec in records:
        if rec["item_id"] in processed:
            node = rec.get("node") or {}
            label = str(node.get("ray_node_id") or node.get("host") or "?")
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def _keep_qa(out: Path, rows: list[dict], rhash: str) -> None:
    """Carry QA decisions already applied to the manifest over to the rebuilt one (same recipe)."""
    if not (out / MANIFEST_NAME).is_file():
        return
    try:
        old = read_manifest(out, columns=["clip_id", "recipe_hash", "qa_status", "qa_reason"]).to_pylist()
    except BiaudioError:
        return
    decided = {r["clip_id"]: r for r in old if r["qa_status"] != "pending" and r["recipe_hash"] == rhash}
    for r in rows:
        d = decided.get(r["clip_id"])
        if d is not None:
            r["qa_status"], r["qa_reason"] = d["qa_status"], d["qa_reason"]
