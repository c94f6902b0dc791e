"""``biaudio validate OUT``: is this build folder a dataset others can trust?

Checks what downstream users silently depend on: the schema version and column types, unique
clip ids, media paths that are relative and stay inside OUT (a manifest must be movable and must
never point a training job at ``/etc`` or ``../``), files present and non-empty, media durations
matching the manifest (ffprobe), per-frame trajectories of the right length, and splits that are
disjoint by *group* (the original video, ``group_id``): Sphere360 cuts many items out of one
YouTube video, so splits disjoint by item can still put one video in train and test.
No source video may appear under two source ids (built twice, e.g. after ids moved between inputs).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from biaudio.engine.splits import leaking_groups
from biaudio.errors import BiaudioError
from biaudio.manifest import QA_STATUSES, SCHEMA_VERSION, SPLITS, manifest_version, read_manifest
from biaudio.media.ffprobe import duration as media_duration


@dataclass
class Problem:
    check: str
    detail: str
    clip_id: str | None = None

    def to_dict(self) -> dict:
        return {"check": self.check, "clip_id": self.clip_id, "detail": self.detail}


@dataclass
class ValidationReport:
    out_dir: str
    n_clips: int = 0
    n_files_checked: int = 0
    schema_version: int | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "ok": self.ok, "n_clips": self.n_clips, "schema_version": self.schema_version,
                "n_files_checked": self.n_files_checked, "problems": [p.to_dict() for p in self.problems],
                "notes": self.notes}


def ffprobe_duration(path: Path) -> float | None:
    """Container duration in seconds (None when ffprobe cannot read the file)."""
    return media_duration(path)


def _inside(out: Path, rel: str) -> tuple[bool, str]:
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("\\") or (len(rel) > 1 and rel[1] == ":"):
        return False, "absolute path"
    if ".." in p.parts:
        return False, "path contains '..'"
    try:
        (out / rel).resolve().relative_to(out.resolve())
    except ValueError:
        return False, "resolves outside OUT (symlink?)"
    return True, ""


def _one_source_many_ids(out: Path, rows: list[dict]) -> list[tuple[str, list[str]]]:
    """Inputs that appear under more than one source id (the same video built twice).

    An input is what its completion record says it was built from (kind, uri, section), else, for a
    local file, its path; a URL without a record is skipped, since several sections of one video
    are legitimately several sources.
    """
    recs: dict[str, dict] = {}
    items = out / ".state" / "items"
    for f in sorted(items.glob("*.json")) if items.is_dir() else ():
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            recs[str((rec.get("source") or {}).get("source_id"))] = rec
        except (OSError, ValueError, AttributeError):
            continue
    by_input: dict[str, set[str]] = {}
    for r in rows:
        sid, uri = str(r["source_id"]), str(r.get("source_uri") or "")
        rec = recs.get(sid)
        if rec is not None and (rec.get("fingerprint") or {}).get("key"):
            key = json.dumps(rec["fingerprint"]["key"])
        elif rec is not None:
            src = rec.get("source") or {}
            key = json.dumps([src.get("kind"), src.get("uri"), src.get("section")])
        elif uri and "://" not in uri:
            key = json.dumps(["file", uri, None])
        else:
            continue
        by_input.setdefault(key, set()).add(sid)
    out_list = []
    for key, ids in sorted(by_input.items()):
        if len(ids) > 1:
            k = json.loads(key)
            what = k[1] if k and k[0] != "prepare" else f"(generated scene {k[1] if len(k) > 1 else '?'})"
            out_list.append((str(what), sorted(ids)))
    return out_list


def validate(out_dir: Path | str, *, tolerance_s: float = 0.15, check_media: bool = True, jobs: int = 4) -> ValidationReport:
    """Check a build folder; returns a report (``ok`` is False when anything is wrong)."""
    out = Path(out_dir)
    rep = ValidationReport(str(out))
    try:
        table = read_manifest(out)
        rep.schema_version = manifest_version(out)
    except BiaudioError as e:
        rep.problems.append(Problem("schema", str(e)))
        return rep
    upgrade = f"`biaudio upgrade {out}`"
    if rep.schema_version != SCHEMA_VERSION:
        rep.notes.append(f"manifest schema v{rep.schema_version} (read as v{SCHEMA_VERSION}: group_id and video times "
                         f"derived on read); {upgrade} rewrites it as v{SCHEMA_VERSION}, splits assigned per video")
    rows = table.to_pylist()
    rep.n_clips = len(rows)

    ids = [r["clip_id"] for r in rows]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        rep.problems.append(Problem("unique_clip_id", "clip id appears more than once", dup))

    media: list[tuple[str, str, Path, float]] = []  # (clip_id, column, path, expected duration)
    for r in rows:
        cid = r["clip_id"]
        if r["split"] not in SPLITS:
            rep.problems.append(Problem("split", f"split {r['split']!r} not one of {SPLITS}", cid))
        if not r.get("group_id"):
            rep.problems.append(Problem("group_id", "group_id is empty", cid))
        if r["qa_status"] not in QA_STATUSES:
            rep.problems.append(Problem("qa_status", f"qa_status {r['qa_status']!r} not one of {QA_STATUSES}", cid))
        if abs((r["end_s"] - r["start_s"]) - r["duration_s"]) > 1e-3 or r["duration_s"] <= 0:
            rep.problems.append(Problem("times", f"start {r['start_s']} end {r['end_s']} duration {r['duration_s']}", cid))
        traj = r["trajectory"] or []
        if len(traj) != r["num_frames"]:
            rep.problems.append(Problem("trajectory", f"{len(traj)} trajectory points for {r['num_frames']} frames", cid))
        expect_frames = r["duration_s"] * r["fps"]
        if abs(r["num_frames"] - expect_frames) > 1.5:
            rep.problems.append(Problem("num_frames", f"{r['num_frames']} frames, duration x fps = {expect_frames:.1f}", cid))
        for col in ("video_path", "audio_path", "preview_path"):
            rel = r.get(col)
            if rel is None:
                if col != "preview_path":
                    rep.problems.append(Problem("path", f"{col} is empty", cid))
                continue
            ok, why = _inside(out, rel)
            if not ok:
                rep.problems.append(Problem("path_outside", f"{col} {rel!r}: {why}", cid))
                continue
            p = out / rel
            if not p.is_file():
                rep.problems.append(Problem("missing_file", f"{col} {rel} does not exist", cid))
            elif p.stat().st_size == 0:
                rep.problems.append(Problem("empty_file", f"{col} {rel} is empty", cid))
            elif col != "preview_path":
                media.append((cid, col, p, float(r["duration_s"])))

    leaks = leaking_groups(r for r in rows if r.get("group_id"))
    per = Counter((r["group_id"], r["split"]) for r in rows if r.get("group_id") in leaks)
    for gid, splits in leaks.items():
        n = {s: per[(gid, s)] for s in splits}
        fix = (f"; {upgrade} reassigns splits per video" if rep.schema_version != SCHEMA_VERSION
               else "; rebuild with split.repair: true (the default) or fix split.lists")
        rep.problems.append(Problem("split_leak", f"video (group) {gid} is in {', '.join(splits)} "
                                                  f"({', '.join(f'{k} {v} clips' for k, v in n.items())}){fix}"))
    for what, ids in _one_source_many_ids(out, rows):
        rep.problems.append(Problem("source_two_ids", f"source {what} is in the manifest under {len(ids)} ids "
                                                      f"({', '.join(ids)}): built twice, maybe in two splits"))

    if check_media and media:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            durations = list(pool.map(lambda m: ffprobe_duration(m[2]), media))
        for (cid, col, p, expect), got in zip(media, durations, strict=True):
            rep.n_files_checked += 1
            if got is None:
                rep.problems.append(Problem("unreadable_media", f"{col} {p.name}: ffprobe cannot read it", cid))
            elif abs(got - expect) > tolerance_s:
                rep.problems.append(Problem("duration", f"{col} {p.name}: {got:.3f} s, manifest {expect:.3f} s "
                                                        f"(tolerance {tolerance_s} s)", cid))
    return rep
