"""The annotate engine: per-clip completion records, batches, local and Ray workers, manifest version.

Why per-clip records (``OUT/.state/annotate/<stage>/<clip_id>.json``, written atomically right
after the clip's batch): a killed run loses only its in-flight batches, a rerun skips every clip
with a record (no clip annotated twice, none lost), failed clips keep their reason until
``--retry-failed``, and the manifest is rebuilt from the records, never from memory. A record is
valid for one stage *identity* (models, checkpoint hashes, prompts) and one rendering of the clip
(recipe hash, media paths and sizes): a new model or a re-rendered clip is annotated again.

The same :class:`AnnotateWorker` runs in this process (``executor: local``) or as Ray actors, one
per GPU (``executor: ray``), writing the same records; for Ray on several nodes OUT must be on a
filesystem every node sees. Models load once per worker.

The result is a new manifest version: the current ``manifest.parquet`` is kept as
``manifest_versions/manifest.v<N>.parquet`` (the chain ``biaudio qa apply`` uses), then the new
one, with the build's columns untouched and the annotation columns set, replaces it atomically.
The build's recipe hash, media and QA decisions are never changed; only clips still ``pending``
get an automatic ``av_inconsistent`` status from the consistency threshold.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from biaudio.annotate.config import AnnotateConfig
from biaudio.annotate.stages import Stage, make_stages, worker_label
from biaudio.errors import BiaudioError
from biaudio.manifest import MANIFEST_NAME, atomic_write_text, read_manifest
from biaudio.stages.caption import ClipRef

RECORD_VERSION = 1
STATE_DIR = Path(".state") / "annotate"
AV_REASON = "av_inconsistent"
IN_FLIGHT = 2
"""Batches per worker at once: one decoding (CPU, ffmpeg) while the other is on the model."""
_ACTION_STATUS = {"reject": "rejected", "flag": "flagged"}
EventFn = Callable[[str, dict], None]


def record_path(out_dir: Path, stage: str, clip_id: str) -> Path:
    name = clip_id if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", clip_id) else (
        "h-" + __import__("hashlib").sha256(clip_id.encode()).hexdigest()[:32])
    return Path(out_dir) / STATE_DIR / stage / f"{name}.json"


def read_record(out_dir: Path, stage: str, clip_id: str) -> dict | None:
    """A clip's record, or ``None`` (none yet, or unreadable: a torn write is redone, never trusted)."""
    try:
        rec = json.loads(record_path(out_dir, stage, clip_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("record_version") != RECORD_VERSION or rec.get("clip_id") != clip_id:
        return None
    return rec


def _media_key(out: Path, row: dict) -> str:
    sizes = []
    for k in ("video_path", "audio_path"):
        try:
            sizes.append(os.stat(out / row[k]).st_size if row.get(k) else -1)
        except OSError:
            sizes.append(-1)
    return f"{row['recipe_hash']}|{row['video_path']}|{row['audio_path']}|{sizes[0]}|{sizes[1]}"


@dataclass
class AnnotateSummary:
    out_dir: Path
    dry_run: bool = False
    clips: int = 0
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per stage: identity key, planned/skipped/annotated/failed counts of this run, totals."""
    failures: list[dict] = field(default_factory=list)
    """This run's failed clips: clip_id, stage, reason, detail."""
    internal_errors: list[str] = field(default_factory=list)
    manifest: str | None = None
    previous_version: str | None = None
    qa: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 = ran (clips a model could not annotate are data, each with its reason); 1 = worker crashes."""
        return 1 if self.internal_errors else 0

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "dry_run": self.dry_run, "clips": self.clips, "stages": self.stages,
                "failures": self.failures, "internal_errors": self.internal_errors, "manifest": self.manifest,
                "previous_version": self.previous_version, "qa": self.qa, "notes": self.notes,
                "wall_s": round(self.wall_s, 3), "exit_code": self.exit_code}


class AnnotateWorker:
    """One worker: builds the stages, loads their models on the first batch, writes per-clip records.

    Never raises for a clip: a clip's failure is its record. A problem with the stage as a whole
    (a checkpoint that does not load) comes back as ``{"fatal": ...}`` so the driver stops the run
    with that message (exceptions do not survive Ray's pickling with their fields).
    """

    def __init__(self, cfg_json: str, out_dir: str, identities: dict[str, dict]):
        self.cfg = AnnotateConfig.model_validate_json(cfg_json)
        self.out = Path(out_dir)
        self.identities = identities
        self.stages: dict[str, Stage] | None = None
        self.label = worker_label()
        self._init_lock = threading.Lock()

    def _stages(self) -> dict[str, Stage]:
        with self._init_lock:  # two batches may arrive at once (decode of one overlaps the other's forward)
            if self.stages is None:
                stages = {s.name: s for s in make_stages(self.cfg, None, self.identities)}
                for s in stages.values():
                    s.load()
                self.stages = stages
        return self.stages

    def run(self, stage: str, batch: list[dict]) -> dict:
        try:
            st = self._stages()[stage]
            key = st.key()
            t0 = time.perf_counter()
            results = st.run([ClipRef(b["clip_id"], b["source_id"], self.out / b["video_path"],
                                      self.out / b["audio_path"]) for b in batch])
        except BiaudioError as e:
            return {"fatal": {"path": e.path, "reason": e.reason, "detail": e.detail, "stage": e.stage or stage}}
        wall = time.perf_counter() - t0
        done = []
        for b, res in zip(batch, results, strict=True):
            rec = {"record_version": RECORD_VERSION, "stage": stage, "clip_id": b["clip_id"], "annotation_key": key,
                   "media_key": b["media_key"], "attempt": b["attempt"], "worker": self.label,
                   "batch_size": len(batch), "batch_wall_s": round(wall, 4),
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if isinstance(res, BiaudioError):
                rec.update(ok=False, values=None, reason=res.reason, detail=res.detail)
            else:
                rec.update(ok=True, values=res, reason=None, detail=None)
            p = record_path(self.out, stage, b["clip_id"])
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p, json.dumps(rec, sort_keys=True))
            done.append({"clip_id": b["clip_id"], "ok": rec["ok"], "reason": rec["reason"], "detail": rec["detail"]})
        return {"done": done, "worker": self.label, "wall_s": wall}


# ------------------------------------------------------------------ planning


def _plan(out: Path, rows: list[dict], stage: str, key: str, media: list[str],
          retry_failed: list[str] | None) -> tuple[list[dict], Counter]:
    todo, counts = [], Counter()
    for row, mk in zip(rows, media, strict=True):
        rec = read_record(out, stage, row["clip_id"])
        valid = rec is not None and rec.get("annotation_key") == key and rec.get("media_key") == mk
        attempt = 1
        if valid and rec["ok"]:
            counts["done"] += 1
            continue
        if valid:
            wanted = retry_failed is not None and (not retry_failed or rec.get("reason") in retry_failed)
            if not wanted:
                counts["failed_kept"] += 1
                continue
            attempt = int(rec.get("attempt") or 1) + 1
        todo.append({"clip_id": row["clip_id"], "source_id": row["source_id"], "video_path": row["video_path"],
                     "audio_path": row["audio_path"], "media_key": mk, "attempt": attempt})
    return todo, counts


# ------------------------------------------------------------------ running


def _run_local(batches: list[tuple[str, list[dict]]], worker_args: tuple,
               on_batch: Callable[[str, list[dict], dict], bool]) -> None:
    """One worker in this process; two batches in flight, so the next one's clips are decoded
    (ffmpeg, outside the model lock) while the current one is on the model."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    w = AnnotateWorker(*worker_args)
    queue = deque(batches)
    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        running: dict[Any, tuple[str, list[dict]]] = {}
        stop = False
        while queue or running:
            while queue and not stop and len(running) < IN_FLIGHT:
                st, b = queue.popleft()
                running[pool.submit(w.run, st, b)] = (st, b)
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                st, b = running.pop(f)
                if not on_batch(st, b, f.result()):
                    stop = True
                    queue.clear()


def _run_ray(batches: list[tuple[str, list[dict]]], worker_args: tuple, cfg: AnnotateConfig,
             on_batch: Callable[[str, list[dict], dict], bool]) -> int:
    """One actor per GPU (``device: cuda``) or per ``workers``; each keeps ``IN_FLIGHT`` batches (threads)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, **kw)
        else:
            ray.init(num_cpus=max(cfg.workers or 1, 1), object_store_memory=128 * 1024**2, **kw)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus > 0)
        n = cfg.workers or (gpus if gpu else 1)
        if n < 1:
            raise BiaudioError(None, "no_gpu", "device cuda but the Ray cluster has no GPU", "annotate")
        opts = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 1}
        actor_cls = ray.remote(max_restarts=0, max_concurrency=IN_FLIGHT, **opts)(AnnotateWorker)
        actors = [actor_cls.remote(*worker_args) for _ in range(n)]
        queue = deque(batches)
        inflight: dict[Any, tuple[Any, str, list[dict]]] = {}

        def submit(a: Any) -> None:
            if queue:
                st, b = queue.popleft()
                inflight[a.run.remote(st, b)] = (a, st, b)

        for _ in range(IN_FLIGHT):
            for a in actors:
                submit(a)
        stop = False
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            a, st, b = inflight.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - the actor died: its batch has no records, a rerun redoes it
                res = {"crash": f"{type(e).__name__}: {str(e)[:300]}"}
                a = None
            if not on_batch(st, b, res):
                stop = True
            if stop:
                for r in inflight:
                    ray.cancel(r)
                queue.clear()
            elif a is not None:
                submit(a)
        return n
    finally:
        if started_here:
            ray.shutdown()


# ------------------------------------------------------------------ the run


def _plan_batches(out: Path, rows: list[dict], stages: list[Stage], keys: dict[str, str],
                  identities: dict[str, dict], media: list[str], retry_failed: list[str] | None, limit: int | None,
                  batch_size: int, summary: AnnotateSummary) -> list[tuple[str, list[dict]]]:
    """Per stage, the clips to annotate this run (``limit`` per stage) cut into batches; each
    stage's plan counts go into ``summary.stages``."""
    batches = []
    for s in stages:
        key = keys[s.name]
        todo, counts = _plan(out, rows, s.name, key, media, retry_failed)
        if limit is not None:
            todo = todo[:limit]
        summary.stages[s.name] = {"key": key, "identity": identities[s.name], "planned": len(todo),
                                  "already_done": counts["done"], "failed_kept": counts["failed_kept"],
                                  "annotated": 0, "failed": 0}
        batches += [(s.name, todo[i:i + batch_size]) for i in range(0, len(todo), batch_size)]
    return batches


class _BatchOutcomes:
    """The executors' ``on_batch``: counts a finished batch into the summary and reports it;
    False (stop) on a fatal error (kept in ``fatal``: a model that does not load fails the run)."""

    def __init__(self, summary: AnnotateSummary, emit: EventFn) -> None:
        self.summary, self.emit = summary, emit
        self.fatal: list[dict] = []

    def __call__(self, stage: str, batch: list[dict], res: dict) -> bool:
        summary = self.summary
        if "fatal" in res:
            self.fatal.append(res["fatal"])
            return False
        if "crash" in res:
            summary.internal_errors += [f"{stage}:{b['clip_id']}" for b in batch]
            summary.notes.append(f"a worker died on a batch of {len(batch)} ({res['crash']}); rerun to redo it")
            self.emit("batch", {"stage": stage, "n": len(batch), "failed": len(batch)})
            return True
        st = summary.stages[stage]
        for d in res["done"]:
            if d["ok"]:
                st["annotated"] += 1
            else:
                st["failed"] += 1
                summary.failures.append({"stage": stage, **d})
        self.emit("batch", {"stage": stage, "n": len(batch), "failed": sum(not d["ok"] for d in res["done"])})
        return True


def annotate(out_dir: Path | str, cfg: AnnotateConfig, *, retry_failed: list[str] | None = None,
             limit: int | None = None, dry_run: bool = False, on_event: EventFn | None = None) -> AnnotateSummary:
    """Annotate every clip of the built dataset in ``out_dir`` with the stages ``cfg`` turns on.

    ``retry_failed``: None = clips that failed keep their reason; [] = redo every failed clip;
    [reasons...] = redo only those. ``limit``: at most N clips per stage this run.
    Raises :class:`BiaudioError` for a problem with the run as a whole (no manifest, no stage turned
    on, a checkpoint that is missing or does not load, the folder locked by a build).
    """
    from biaudio.engine.state import _Lock

    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    emit = on_event or (lambda kind, info: None)
    summary = AnnotateSummary(out, dry_run=dry_run)
    base = read_manifest(out, columns=["clip_id", "source_id", "video_path", "audio_path", "recipe_hash"])
    rows = base.to_pylist()
    summary.clips = len(rows)
    state = out / STATE_DIR
    stages = make_stages(cfg, None if dry_run else state / "checkpoints.json")
    if not stages:
        raise BiaudioError(str(out), "nothing_to_annotate",
                           "no annotation turned on: set captions.backend (--captions) or "
                           "av_consistency.model_path (--av-model)", "annotate")
    identities = {s.name: s.identity() for s in stages}
    keys = {s.name: s.key() for s in stages}
    media = [_media_key(out, r) for r in rows]

    def plan() -> list[tuple[str, list[dict]]]:
        return _plan_batches(out, rows, stages, keys, identities, media, retry_failed, limit, cfg.batch_size, summary)

    if dry_run:
        plan()
        summary.wall_s = time.perf_counter() - t0
        return summary
    state.mkdir(parents=True, exist_ok=True)
    with _Lock(out):
        batches = plan()
        emit("plan", {"clips": len(rows), "batches": len(batches),
                      "stages": {k: v["planned"] for k, v in summary.stages.items()}})
        on_batch = _BatchOutcomes(summary, emit)
        fatal = on_batch.fatal
        worker_args = (cfg.model_dump_json(), str(out), identities)
        if batches:
            if cfg.executor == "ray":
                n = _run_ray(batches, worker_args, cfg, on_batch)
                summary.notes.append(f"ray: {n} actor(s)")
            else:
                _run_local(batches, worker_args, on_batch)
        if fatal:
            f = fatal[0]
            raise BiaudioError(f["path"], f["reason"], f["detail"], f["stage"])
        emit("assemble", {})
        _write_version(out, stages, keys, media, cfg, summary)
    summary.wall_s = time.perf_counter() - t0
    return summary


# ------------------------------------------------------------------ the manifest version


def carry_annotations(out_dir: Path, rows: list[dict]) -> None:
    """Called by the build when it writes the manifest again (a resumed or extended build): every row
    whose clip has a valid annotation record (the identity the current manifest was annotated with,
    the same rendering) gets its annotation columns back, so a rebuild never drops captions."""
    from biaudio.annotate.stages import AVConsistencyStage, CaptionStage

    out = Path(out_dir)
    if not (out / MANIFEST_NAME).is_file() or not (out / STATE_DIR).is_dir():
        return
    try:
        from biaudio.manifest import read_schema

        meta = read_schema(out / MANIFEST_NAME).metadata or {}
        annotations = json.loads(meta.get(b"biaudio.annotations", b"{}").decode())
    except (OSError, ValueError, pa.ArrowInvalid):
        return
    for stage in (CaptionStage, AVConsistencyStage):
        info = annotations.get(stage.name)
        if not info:
            continue
        for r in rows:
            rec = read_record(out, stage.name, str(r["clip_id"]))
            if rec is None or rec.get("annotation_key") != info.get("key") or rec.get("media_key") != _media_key(out, r):
                continue
            for c in stage.value_columns:
                r[c] = rec["values"].get(c) if rec["ok"] else None
            r[stage.error_column] = None if rec["ok"] else (
                f"{rec['reason']}: {rec['detail']}" if rec.get("detail") else rec["reason"])


def _set_column(table: pa.Table, name: str, values: list, typ: pa.DataType) -> pa.Table:
    arr = pa.array(values, type=typ)
    if name in table.column_names:
        i = table.column_names.index(name)
        return table.set_column(i, table.schema.field(i).with_type(typ), arr)
    return table.append_column(pa.field(name, typ, nullable=True), arr)


def _write_version(out: Path, stages: list[Stage], keys: dict[str, str], media: list[str], cfg: AnnotateConfig,
                   summary: AnnotateSummary) -> None:
    """Annotation columns from the records -> a new manifest version (only when something changed)."""
    from biaudio import manifest as mf

    old = read_manifest(out)
    table = old
    ids = [str(c) for c in table.column("clip_id").to_pylist()]
    meta = dict(table.schema.metadata or {})
    try:
        annotations = json.loads(meta.get(b"biaudio.annotations", b"{}").decode())
    except ValueError:
        annotations = {}
    before = json.loads(json.dumps(annotations))
    for s in stages:
        cols = {c: (table.column(c).to_pylist() if c in table.column_names else [None] * len(ids))
                for c in [*s.value_columns, s.error_column]}
        totals = Counter()
        for i, cid in enumerate(ids):
            rec = read_record(out, s.name, cid)
            if rec is None or rec.get("annotation_key") != keys[s.name] or rec.get("media_key") != media[i]:
                totals["not_annotated"] += 1
                continue
            if rec["ok"]:
                totals["annotated"] += 1
                for c in s.value_columns:
                    cols[c][i] = rec["values"].get(c)
                cols[s.error_column][i] = None
            else:
                totals["failed"] += 1
                for c in s.value_columns:
                    cols[c][i] = None
                cols[s.error_column][i] = f"{rec['reason']}: {rec['detail']}" if rec.get("detail") else rec["reason"]
        for c, typ in {**s.value_columns, s.error_column: pa.string()}.items():
            table = _set_column(table, c, cols[c], typ)
        summary.stages[s.name]["totals"] = dict(totals)
        annotations[s.name] = {"key": keys[s.name], "identity": s.identity(), "columns": [*s.value_columns, s.error_column],
                               "totals": dict(totals)}
        if s.name == "av_consistency":
            table = _apply_threshold(table, cfg, summary)
            annotations[s.name].update(threshold=cfg.av_consistency.threshold, action=cfg.av_consistency.action)
    same_meta = all((annotations.get(s.name) or {}).get(k) == (before.get(s.name) or {}).get(k)
                    for s in stages for k in ("key", "threshold", "action"))
    if table.equals(old) and same_meta:
        summary.notes.append("every clip already had these annotations: the manifest is unchanged")
        summary.manifest = str(out / MANIFEST_NAME)
        return
    previous = mf.keep_version(out)
    meta[b"biaudio.annotations"] = json.dumps(annotations, sort_keys=True).encode()
    meta[b"biaudio.annotate"] = json.dumps({"previous_version": previous.name,
                                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
    table = table.replace_schema_metadata(meta)
    mf.write_table(table, out / MANIFEST_NAME)
    mf.read_schema(out / MANIFEST_NAME)  # fail loudly here, not in a reader, if the write went wrong
    summary.manifest = str(out / MANIFEST_NAME)
    summary.previous_version = str(previous)


def _apply_threshold(table: pa.Table, cfg: AnnotateConfig, summary: AnnotateSummary) -> pa.Table:
    """Clips still ``pending`` (or marked by an earlier threshold) below the threshold get the action;
    marks of an earlier threshold that no longer apply go back to ``pending``. Human decisions win."""
    a = cfg.av_consistency
    scores = table.column("av_score").to_pylist()
    status = table.column("qa_status").to_pylist()
    reason = table.column("qa_reason").to_pylist()
    counts = Counter()
    for i, s in enumerate(scores):
        ours = status[i] in _ACTION_STATUS.values() and str(reason[i] or "").startswith(AV_REASON)
        if status[i] != "pending" and not ours:
            continue
        if a.threshold is not None and s is not None and s < a.threshold:
            status[i] = _ACTION_STATUS[a.action]
            reason[i] = f"{AV_REASON}: score {s:.4f} < threshold {a.threshold:g}"
            counts[status[i]] += 1
        elif ours:
            status[i], reason[i] = "pending", None
            counts["reset_to_pending"] += 1
    summary.qa = dict(counts)
    table = _set_column(table, "qa_status", status, pa.string())
    return _set_column(table, "qa_reason", reason, pa.string())
