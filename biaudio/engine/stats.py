"""``OUT/stats.json``: what a build kept and dropped, and where its time went.

Counts per stage and reason are the first thing to look at after a build ("why did 40 % of the
clips go?"); they are computed from the completion records, like the manifest, so they always
describe the whole folder, not only the last run.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from biaudio.errors import BiaudioError
from biaudio.manifest import SCHEMA_VERSION, SPLITS, read_manifest, read_stats


def compute_stats(records: list[dict], rows: list[dict], rejects: list[dict], *, n_items: int, rhash: str) -> dict:
    """Summary dict of a build folder (see ``manifests/README.md`` for the keys)."""
    seconds: Counter[str] = Counter()
    for rec in records:
        for stage, s in rec["result"].get("stats", {}).items():
            if isinstance(s, (int, float)):
                seconds[stage] += float(s)
    by_stage = Counter(str(r.get("stage")) for r in rejects)
    by_reason = Counter(str(r.get("reason")) for r in rejects)
    by_pair = Counter(f"{r.get('stage')}/{r.get('reason')}" for r in rejects)
    durations = [float(r["duration_s"]) for r in rows]
    split_counts = Counter(r["split"] for r in rows)
    split_sources = {s: len({r["source_id"] for r in rows if r["split"] == s}) for s in SPLITS}
    split_groups = {s: len({r["group_id"] for r in rows if r["split"] == s}) for s in SPLITS}
    failed_items = sum(1 for rec in records if rec["result"].get("rejects") and not rec["result"].get("rows"))
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe_hash": rhash,
        "items": {
            "total": n_items,
            "done": len(records),
            "pending": n_items - len(records),
            "with_clips": sum(1 for rec in records if rec["result"].get("rows")),
            "without_clips": failed_items,
        },
        "clips": {
            "kept": len(rows),
            "by_split": {s: split_counts.get(s, 0) for s in SPLITS},
            "sources_by_split": split_sources,
            "groups_by_split": split_groups,
            "duration_s_total": round(sum(durations), 3),
            "duration_s_mean": round(sum(durations) / len(durations), 3) if durations else 0.0,
        },
        "rejects": {
            "total": len(rejects),
            "by_stage": dict(sorted(by_stage.items())),
            "by_reason": dict(sorted(by_reason.items())),
            "by_stage_reason": dict(sorted(by_pair.items())),
        },
        "seconds_by_stage": {k: round(v, 3) for k, v in sorted(seconds.items())},
        "cpu_s_total": round(sum(float(rec.get("cpu_s", 0.0)) for rec in records), 3),
        "wall_s_items_total": round(sum(float(rec.get("wall_s", 0.0)) for rec in records), 3),
        "bytes": int(sum(int(rec["result"].get("bytes_written", 0)) for rec in records)),
    }


def load(out_dir: Path | str) -> dict[str, Any]:
    """stats.json of a build folder, with the current QA counts of its manifest.

    Raises BiaudioError when there is no stats.json, and when the manifest is missing or unreadable:
    stats.json describes the manifest the last build wrote, so without a readable manifest its
    figures would be stale (the old clip counts of a folder whose data is gone or damaged)."""
    try:
        stats = read_stats(out_dir)
    except (ValueError, UnicodeDecodeError) as e:
        raise BiaudioError(str(Path(out_dir) / "stats.json"), "unreadable_stats",
                           f"{e}; rerun `biaudio build` on this folder to rewrite it") from e
    mpath = Path(out_dir) / "manifest.parquet"
    try:  # the manifest may have been edited by QA since: report its current QA counts
        table = read_manifest(out_dir, columns=["qa_status"])
    except Exception as e:  # noqa: BLE001 - any reason (missing, truncated, other schema) means stale figures
        raise BiaudioError(str(mpath), "unreadable_manifest",
                           f"{e}; stats.json would show stale figures: restore the manifest, or rerun "
                           "`biaudio build` on this folder (finished items are reused)") from e
    stats["qa"] = dict(sorted(Counter(table.column("qa_status").to_pylist()).items()))
    return stats


def render(stats: dict, console: Any) -> None:
    """Rich tables for ``biaudio stats``."""
    from rich.table import Table

    it, cl, rj = stats["items"], stats["clips"], stats["rejects"]
    t = Table(title=f"build {stats.get('recipe_hash', '')}", show_header=False)
    t.add_row("items", f"{it['done']}/{it['total']} done, {it['pending']} pending, "
                       f"{it['with_clips']} with clips, {it['without_clips']} without")
    t.add_row("clips kept", f"{cl['kept']}  (train {cl['by_split']['train']}, val {cl['by_split']['val']}, "
                            f"test {cl['by_split']['test']})")
    t.add_row("sources per split", ", ".join(f"{k} {v}" for k, v in cl["sources_by_split"].items()))
    if "groups_by_split" in cl:
        t.add_row("videos (groups) per split", ", ".join(f"{k} {v}" for k, v in cl["groups_by_split"].items()))
    for c in (stats.get("split") or {}).get("conflicts", []):
        t.add_row("split conflict", f"{c['group_id']} listed in {', '.join(c['entries'])}"
                                    + (f" -> moved to {c['moved_to']}" if c.get("moved_to") else " (not repaired)"))
    t.add_row("clip duration", f"{cl['duration_s_total']:.1f} s total, {cl['duration_s_mean']:.2f} s mean")
    t.add_row("bytes written", _human_bytes(stats["bytes"]))
    t.add_row("CPU time (items)", f"{stats['cpu_s_total']:.1f} s")
    if "qa" in stats:
        t.add_row("QA status", ", ".join(f"{k} {v}" for k, v in stats["qa"].items()))
    console.print(t)
    if rj["by_stage_reason"]:
        r = Table(title=f"rejects ({rj['total']})")
        r.add_column("stage")
        r.add_column("reason")
        r.add_column("count", justify="right")
        for key, n in sorted(rj["by_stage_reason"].items(), key=lambda kv: -kv[1]):
            stage, _, reason = key.partition("/")
            r.add_row(stage, reason, str(n))
        console.print(r)
    if stats.get("seconds_by_stage"):
        s = Table(title="time by stage")
        s.add_column("stage")
        s.add_column("seconds", justify="right")
        for k, v in sorted(stats["seconds_by_stage"].items(), key=lambda kv: -kv[1]):
            s.add_row(k, f"{v:.2f}")
        console.print(s)


def _human_bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:.1f} {unit}" if unit != "B" else f"{int(x)} B"
        x /= 1024
    return f"{n} B"
