"""The build engine: per-item work units, completion records, resume, local process pool and Ray.

Why per-item completion records (``OUT/.state/items/<item_id>.json``, written atomically and
*last*, after the item's media files have been renamed into place): they make a build resumable
at item granularity (datatrove's per-task markers lose whole tasks), they are the single source of
truth for the final manifest (rebuilt from all records at the end of every run, so a killed run
loses only its in-flight items and can never duplicate rows), and they say which items failed so
``--retry-failed`` can redo only those.

The same worker function (``run_item``) runs in a ``spawn`` process pool (``--executor local``) and
as a Ray task (``--executor ray``), so both executors produce the same records and the same
manifest. For Ray on a real cluster, OUT must be on a filesystem every node sees; each record says
on which host and Ray node its item ran.

Layout of OUT::

    manifest.parquet rejects.parquet stats.json recipe.yaml
    clips/ previews/            media, written by the stages (temporary name, then rename)
    logs/<item_id>.log          one log per item (appended across attempts)
    sources/                    inputs the build made itself (synthetic scenes)
    .state/build.json           schema version + recipe hash of the folder
    .state/items/<item_id>.json completion records
    .state/lock                 held while a build runs (atomic link; a dead holder's lock is taken over)

A completion record names the input it was made from (kind, uri, section; size and mtime of a
local file; the parameters of a scene the build makes) and counts as done only while that is still
the item's input: ids may move between inputs (a list edited by hand) and files may be replaced in
place, and neither may leave a record standing in for another input.

The build deletes only what it wrote: temporaries by their names, and orphaned media that a
completion record lists as the build's own. It refuses an OUT that is not empty and not a build
folder, or that holds another recipe's build, unless told to (``force_out``).

On a shared network filesystem correctness rests on atomic renames and ``link()`` only, never on
``flock`` or ``O_APPEND``: records, manifests and archive entries are whole files renamed into
place, and the lock is a file created by ``link()``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from biaudio.build.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SchemaVersionError,
    atomic_write_text,
    complete_rows,
    read_manifest,
    tool_versions,
    write_manifest,
    write_rejects,
    write_stats,
)
from biaudio.build.recipe import Recipe, SynthSource, recipe_hash, resolve_source_entry
from biaudio.build.types import TEMP_MARKER, ItemResult, WorkItem, is_temp_name, safe_item_id, source_field
from biaudio.errors import BiaudioError

DEFAULT_ITEM_FN = "biaudio.build.pipeline:process_item"
RECORD_VERSION = 1
STATE = ".state"
MEDIA_DIRS = ("clips", "previews")
# OSError errnos that mean "the output cannot be written" (not a bug, not bad data)
_WRITE_ERRNOS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EFBIG: "disk_full",
                 errno.EROFS: "write_error", errno.EACCES: "write_error", errno.EPERM: "write_error",
                 errno.EIO: "write_error"}

EventFn = Callable[[str, dict], None]


class BuildLockedError(BiaudioError):
    """Another build holds OUT's lock."""


@dataclass
class PlannedItem:
    item: WorkItem
    action: str  # "run" (never done / stale), "retry" (--retry-failed), "skip" (done)
    why: str = ""


@dataclass
class BuildSummary:
    """What one ``build`` call did; ``exit_code`` is what the CLI returns."""

    out_dir: Path
    recipe_hash: str
    dry_run: bool = False
    planned: list[PlannedItem] = field(default_factory=list)
    processed: list[str] = field(default_factory=list)
    skipped: int = 0
    kept_clips: int = 0
    run_rejects: int = 0
    total_rejects: int = 0
    internal_errors: list[str] = field(default_factory=list)
    write_errors: list[str] = field(default_factory=list)
    source_errors: list[dict] = field(default_factory=list)
    stopped: bool = False
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: the build ran (item rejects are data). 1: internal errors or write failures."""
        return 1 if (self.internal_errors or self.write_errors or self.stopped) else 0

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "recipe_hash": self.recipe_hash,
            "dry_run": self.dry_run,
            "planned": [{"item_id": p.item.item_id, "action": p.action, "why": p.why,
                         "source_uri": p.item.source_uri} for p in self.planned],
            "processed": self.processed,
            "skipped": self.skipped,
            "kept_clips": self.kept_clips,
            "run_rejects": self.run_rejects,
            "total_rejects": self.total_rejects,
            "internal_errors": self.internal_errors,
            "write_errors": self.write_errors,
            "source_errors": self.source_errors,
            "stopped": self.stopped,
            "wall_s": round(self.wall_s, 3),
            "notes": self.notes,
            "exit_code": self.exit_code,
        }


# ------------------------------------------------------------------ the worker side


def load_item_fn(spec: str) -> Callable[..., ItemResult]:
    """``module:function`` or ``/path/to/file.py:function`` -> the callable."""
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise BiaudioError(spec, "bad_item_fn", "expected 'module:function' or '/path/file.py:function'")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        name = "biaudio_item_fn_" + re.sub(r"\W", "_", path.stem)
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise BiaudioError(spec, "bad_item_fn", "cannot load that file")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(mod_name)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise BiaudioError(spec, "bad_item_fn", f"{fn_name} is not a function of {mod_name}")
    return fn


def _item_logger(out_dir: Path, item: WorkItem) -> tuple[logging.Logger, logging.Handler]:
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"biaudio.item.{item.item_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(log_dir / f"{item.item_id}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, handler


def _cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def record_path(out_dir: Path, item_id: str) -> Path:
    return Path(out_dir) / STATE / "items" / f"{item_id}.json"


def run_item(item: WorkItem, recipe: Recipe, out_dir: str, item_fn: str, rhash: str) -> dict:
    """Process one item and write its completion record (the worker side of both executors).

    Never raises: every failure becomes a reject. Write failures (disk full, read-only) are
    *transient*: no completion record is written for them, so a plain rerun redoes the item once
    there is space again.
    """
    out = Path(out_dir)
    started_at = time.time()
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    outcome: dict[str, Any] = {"item_id": item.item_id, "attempt": item.attempt, "internal": False,
                               "write_error": None, "record_written": False}
    log, handler = None, None
    _limit_threads(recipe.execution.threads_per_worker)  # applied on call; a worker runs only items
    fingerprint = source_fingerprint(item)  # before the work: a file changed meanwhile is redone next run
    try:
        log, handler = _item_logger(out, item)
        log.info("attempt %d of item %s (%s)", item.attempt, item.item_id, item.source_uri)
    except OSError as e:
        result = ItemResult(item.item_id, rejects=[_write_reject(item, "logs", e)])
        outcome["write_error"] = result.rejects[0]["reason"]
        return _finish(outcome, result, item, wall0, cpu0)
    try:
        t_prep = time.perf_counter()
        try:
            _prepare(item, log)
        except BiaudioError as e:
            raise _PrepareFailed(e) from e
        prep_s = time.perf_counter() - t_prep
        fn = load_item_fn(item_fn)
        result = fn(item, recipe, out, log)
        if not isinstance(result, ItemResult):
            raise TypeError(f"{item_fn} returned {type(result).__name__}, not ItemResult")
        if item.prepare:
            result.stats["prepare"] = result.stats.get("prepare", 0.0) + prep_s
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            log.error("write failure: %s", e)
            _remove_own_temps(out)
            result = ItemResult(item.item_id, rejects=[_write_reject(item, "write", e)])
            outcome["write_error"] = result.rejects[0]["reason"]
        else:
            result = _internal(item, e, log)
            outcome["internal"] = True
    except _PrepareFailed as pf:
        e = pf.error
        log.warning("preparing the input failed: %s", e)
        result = ItemResult(item.item_id, rejects=[{"item_id": item.item_id, "stage": e.stage or "sources",
                                                     "reason": e.reason, "detail": e.detail or str(e)}])
    except BiaudioError as e:  # the stages should turn these into rejects themselves; tolerate it
        log.warning("stage raised %s", e)
        result = ItemResult(item.item_id, rejects=[{"item_id": item.item_id, "stage": e.stage or "pipeline",
                                                     "reason": e.reason, "detail": e.detail or str(e)}])
    except Exception as e:  # noqa: BLE001 - a bug in a stage: record it, keep the build going
        result = _internal(item, e, log)
        outcome["internal"] = True
    for r in result.rejects:
        r.setdefault("item_id", item.item_id)
        r["attempt"] = item.attempt
        r.setdefault("source_uri", item.source_uri)
        if r.get("stage") == "internal":
            outcome["internal"] = True
    if outcome["write_error"] is None:
        record = {
            "record_version": RECORD_VERSION,
            "schema_version": SCHEMA_VERSION,
            "item_id": item.item_id,
            "recipe_hash": rhash,
            "attempt": item.attempt,
            "source": _source_dict(item.source),
            "fingerprint": fingerprint,
            "result": result.to_dict(),
            "files": _owned_files(out, item.item_id, result),
            "wall_s": round(time.perf_counter() - wall0, 4),
            "cpu_s": round(_cpu_seconds() - cpu0, 4),
            "started_at": round(started_at, 3),
            "finished_at": round(time.time(), 3),
            "pid": os.getpid(),
            "node": _node(),
            # peaks so far of this worker process and of its largest child (ffmpeg), MiB
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "child_max_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        }
        try:
            path = record_path(out, item.item_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, sort_keys=True, default=_json_default))
            outcome["record_written"] = True
        except OSError as e:
            rej = _write_reject(item, "record", e)
            result.rejects.append(rej)
            outcome["write_error"] = rej["reason"]
        except (TypeError, ValueError) as e:  # rows that are not JSON-serialisable: a stage bug
            result = _internal(item, e, log)
            outcome["internal"] = True
    if log is not None:
        log.info("done: %d clips, %d rejects", len(result.rows), len(result.rejects))
        log.removeHandler(handler)
        handler.close()
    return _finish(outcome, result, item, wall0, cpu0)


def _node() -> dict:
    """Where the item ran: the host, and the Ray node when it ran as a Ray task."""
    import socket
    import sys

    node: dict[str, Any] = {"host": socket.gethostname()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            node["ray_node_id"] = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - only information
            pass
    return node


def _rows_files(result: dict) -> set[str]:
    return {r[k] for r in result.get("rows", []) for k in ("video_path", "audio_path", "preview_path") if r.get(k)}


def _owned_files(out: Path, item_id: str, result: ItemResult) -> list[str]:
    """Media files this build folder's runs of the item wrote (this run's rows plus what earlier
    records of the item listed): the only files the build may later delete as orphans."""
    files = _rows_files(result.to_dict())
    try:
        old = json.loads(record_path(out, item_id).read_text(encoding="utf-8"))
        files |= set(old.get("files") or ()) | _rows_files(old.get("result") or {})
    except (OSError, ValueError, AttributeError):
        pass
    return sorted(files)


class _PrepareFailed(Exception):
    def __init__(self, error: BiaudioError):
        super().__init__(str(error))
        self.error = error


_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def _limit_threads(n: int) -> Any:
    """Cap the math libraries' threads in this worker: env vars for libraries loaded later, and
    threadpoolctl / torch / cv2 for those already loaded (Ray reuses worker processes)."""
    import sys

    for k in _THREAD_ENV:
        os.environ[k] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n)


def _remove_own_temps(out: Path) -> None:
    """After a write failure free the space this worker's temporaries hold (a worker runs one item
    at a time, and ``temp_path`` names carry the pid), so a full disk does not stay full."""
    tag = f"{TEMP_MARKER}{os.getpid()}"
    for d in MEDIA_DIRS:
        folder = out / d
        for p in folder.iterdir() if folder.is_dir() else ():
            if tag in p.name:
                p.unlink(missing_ok=True)


def _finish(outcome: dict, result: ItemResult, item: WorkItem, wall0: float, cpu0: float) -> dict:
    outcome["result"] = json.loads(json.dumps(result.to_dict(), default=_json_default))
    outcome["wall_s"] = time.perf_counter() - wall0
    outcome["cpu_s"] = _cpu_seconds() - cpu0
    return outcome


def _write_reject(item: WorkItem, where: str, e: OSError) -> dict:
    return {"item_id": item.item_id, "stage": "write", "reason": _WRITE_ERRNOS.get(e.errno or 0, "write_error"),
            "detail": f"{where}: {e}", "attempt": item.attempt, "source_uri": item.source_uri}


def _internal(item: WorkItem, e: BaseException, log: logging.Logger | None) -> ItemResult:
    if log is not None:
        log.error("internal error:\n%s", "".join(traceback.format_exception(e)))
    return ItemResult(item.item_id, rejects=[{"item_id": item.item_id, "stage": "internal",
                                              "reason": type(e).__name__, "detail": str(e)[:2000]}])


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _source_dict(source: Any) -> dict:
    if isinstance(source, dict):
        return dict(source)
    if hasattr(source, "to_dict"):
        return source.to_dict()
    return {k: source_field(source, k) for k in ("source_id", "kind", "uri", "section")}


# ------------------------------------------------------------------ sources


def resolve_items(recipe: Recipe, out_dir: Path) -> tuple[list[WorkItem], list[dict], list[str]]:
    """Recipe sources -> work items (one per source video), source errors, notes.

    Nothing is written: synthetic scenes become items whose worker makes the scene first.
    """
    from biaudio.ingest.sources import read_sources

    items: list[Any] = []
    prepares: dict[str, dict] = {}
    errors: list[dict] = []
    notes: list[str] = []
    plain: list[str] = []
    for entry in recipe.sources:
        if isinstance(entry, SynthSource):
            for src, prep in _synth_items(entry, out_dir):
                items.append(src)
                prepares[src.source_id] = prep
        else:
            plain.append(resolve_source_entry(entry, recipe.base_dir))
    if plain:
        res = read_sources(plain)
        items.extend(res.items)
        errors.extend({"item_id": safe_item_id(str(e.path or "source")), "stage": "sources", "reason": e.reason,
                       "detail": e.detail, "attempt": 1, "source_uri": e.path} for e in res.errors)
    # Ids must be a function of the input alone, never of its place in the list: when two different
    # inputs (a synthetic scene and a file, or two ids that differ only in unsafe characters) map
    # to the same item id, every one of them gets the id plus a hash of its identity.
    by_id: dict[str, dict[tuple, Any]] = {}
    for it in items:
        sid = str(source_field(it, "source_id"))
        key = _identity(it, prepares.get(sid))
        if key in by_id.setdefault(safe_item_id(sid), {}):
            notes.append(f"duplicate source {sid}: listed twice, built once")
            continue
        by_id[safe_item_id(sid)][key] = it
    work: dict[str, WorkItem] = {}
    for iid, group in by_id.items():
        for key, it in group.items():
            sid = str(source_field(it, "source_id"))
            name = iid if len(group) == 1 else safe_item_id(f"{iid}-{hashlib.sha1(repr(key).encode()).hexdigest()[:6]}")
            work[name] = WorkItem(name, it, 1, prepares.get(sid))
    return [work[k] for k in sorted(work)], errors, notes


def _identity(source: Any, prepare: dict | None) -> tuple:
    """What makes two inputs the same input: the build's own recipe for a scene it makes, else the
    kind, uri and section of the source (not its id, which is derived from these)."""
    if prepare:
        return ("prepare", _prepare_hash(prepare))
    section = source_field(source, "section")
    return (str(source_field(source, "kind")), str(source_field(source, "uri")),
            None if section is None else tuple(float(x) for x in section))


def _prepare_hash(prepare: dict) -> str:
    """The parameters of a scene the build makes, without where OUT is (a moved folder stays done)."""
    spec = {k: {kk: vv for kk, vv in v.items() if kk != "folder"} if isinstance(v, dict) else v
            for k, v in prepare.items()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_fingerprint(item: WorkItem) -> dict:
    """Identity and state of an item's input, stored in its completion record and compared on every
    later run: a record made from another input (ids moved) or from an older version of the same
    file (replaced in place: size or mtime differ) does not count as done."""
    key = _identity(item.source, item.prepare)
    fp: dict[str, Any] = {"key": json.loads(json.dumps(list(key)))}
    if key[0] == "file":
        try:
            st = os.stat(key[1])
            fp.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        except OSError:
            fp.update(size=None, mtime_ns=None)
    return fp


def _record_mismatch(rec: dict, item: WorkItem) -> str | None:
    """Why ``rec`` is not the record of ``item``'s current input (None: it is)."""
    old = rec.get("fingerprint")
    now = source_fingerprint(item)
    if old is None:  # a record from before fingerprints: compare what it says its source was
        src = rec.get("source") or {}
        same = item.prepare is not None or (str(src.get("uri")) == item.source_uri
                                            and str(src.get("kind")) == str(source_field(item.source, "kind")))
        return None if same else f"record is for another source ({src.get('uri')})"
    if old.get("key") != now["key"]:
        return f"record is for another source ({old.get('key', ['', '?'])[1]})"
    if "size" in now and now["size"] is None:
        return None  # the file is gone: keep what was built from it (it cannot be rebuilt anyway)
    if (old.get("size"), old.get("mtime_ns")) != (now.get("size"), now.get("mtime_ns")):
        return "source file changed (size or mtime)"
    return None


def _synth_items(entry: SynthSource, out_dir: Path) -> list[tuple[Any, dict]]:
    """One item per synthetic scene ``scene_NNNN`` (same ids and seeds as ``synth.make_scenes``); the
    scene itself is made by the worker (``_prepare``) into ``OUT/sources/synth-<params hash>/``."""
    from biaudio.ingest.sources import SourceItem
    from biaudio.synth import scene_name

    p = entry.synth
    params = p.model_dump(mode="json")
    if params.get("world") == "demo":
        params.pop("world")  # same folder as before the option existed
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    folder = out_dir / "sources" / f"synth-{tag}"
    out = []
    for i in range(p.scenes):
        scene_id = scene_name(i)
        src = SourceItem(scene_id, "file", str(folder / f"{scene_id}.mp4"), None, f"synth seed={p.seed} index={i}")
        out.append((src, {"synth": {**params, "index": i, "scene_id": scene_id, "folder": str(folder)}}))
    return out


def _prepare(item: WorkItem, log: logging.Logger) -> None:
    """Make the item's input if the recipe says the build makes it (synthetic scenes)."""
    spec = (item.prepare or {}).get("synth")
    if spec is None:
        return
    folder = Path(spec["folder"])
    video, truth = folder / f"{spec['scene_id']}.mp4", folder / f"{spec['scene_id']}.json"
    if video.is_file() and truth.is_file():  # synth writes the truth JSON last (atomically)
        return
    from biaudio.synth import make_scene, scene_seed

    folder.mkdir(parents=True, exist_ok=True)
    log.info("making synthetic scene %s (seed %s, index %s)", spec["scene_id"], spec["seed"], spec["index"])
    make_scene(folder, spec["scene_id"], scene_seed(spec["seed"], spec["index"]), duration=spec["duration"],
               size=tuple(spec["size"]), fps=spec["fps"], world=spec.get("world", "demo"), index=spec["index"])


# ------------------------------------------------------------------ state


def _read_record(out_dir: Path, item_id: str) -> dict | None:
    path = record_path(out_dir, item_id)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent; a torn record cannot exist (atomic rename), an unreadable one is redone
    if rec.get("record_version") != RECORD_VERSION or rec.get("schema_version") != SCHEMA_VERSION:
        raise SchemaVersionError(str(path), "schema_version",
                                 f"completion record from schema v{rec.get('schema_version')}; this biaudio "
                                 f"writes v{SCHEMA_VERSION}: build into a new folder")
    return rec


class OutDirError(BiaudioError):
    """OUT holds something a build must not take over without being told to."""


def check_out_dir(out_dir: Path, recipe_name: str | None = None, force: bool = False) -> None:
    """Refuse an OUT the build must not write into.

    Always: a folder written by another schema version (its records and manifest cannot be mixed).
    Unless ``force``: a non-empty folder that no build wrote (its files are someone else's), and a
    build folder of another recipe (its manifest would be replaced). ``recipe_name=None`` checks
    only the schema version.
    """
    state = out_dir / STATE / "build.json"
    if state.is_file():
        try:
            info = json.loads(state.read_text())
        except ValueError:
            info = {}
        v = info.get("schema_version")
        if v != SCHEMA_VERSION:
            raise SchemaVersionError(str(out_dir), "schema_version",
                                     f"this folder was built with manifest schema v{v}; this biaudio writes "
                                     f"v{SCHEMA_VERSION}. Build into a new --out folder.")
        other = info.get("recipe")
        if recipe_name is not None and not force and other and other != recipe_name:
            raise OutDirError(str(out_dir), "other_recipe",
                              f"this folder holds a build of recipe {other!r}; building {recipe_name!r} into it "
                              "would replace its manifest. Use another --out, or --force-out to build here anyway")
    elif recipe_name is not None and not force and out_dir.is_dir():
        # a run killed before it wrote build.json leaves only .state/ (the lock): still ours
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name != STATE)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutDirError(str(out_dir), "not_a_build_folder",
                              f"the folder is not empty ({len(foreign)} {'entry' if len(foreign) == 1 else 'entries'}: {shown}) "
                              "and no biaudio build "
                              "wrote it. Use a new or empty --out, or --force-out to build here anyway")
    if (out_dir / MANIFEST_NAME).is_file():
        read_manifest(out_dir, columns=["clip_id"])  # raises SchemaVersionError for another version


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` (clock ticks since boot), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Lock:
    """OUT/.state/lock: held while a build runs.

    Taken with an atomic ``link()`` of a file that names this process (host, boot id, pid, its
    start time, a random token): the link either creates the name or fails, on a local disk and on
    NFS alike, where ``flock`` may be local to one client or a silent no-op. A lock whose holder is
    dead -- same host and boot, process gone -- is taken over (a SIGKILLed build does not block the
    next one). A lock held from another host cannot be checked and is refused, naming its holder;
    remove the file when that build is known to be dead.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / STATE / "lock"
        self.token: str | None = None

    def __enter__(self) -> _Lock:
        import socket
        import uuid

        self.path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        me = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid, "proc_start": _proc_start(pid),
              "token": uuid.uuid4().hex, "since": round(time.time(), 3)}
        tmp = self.path.with_name(f".lock-{me['token']}{TEMP_MARKER}{pid}")
        tmp.write_text(json.dumps(me, sort_keys=True))
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    pass
                holder = self._holder()
                if holder.get("token") == me["token"]:  # also when NFS reported EEXIST for our own link
                    self.token = me["token"]
                    return self
                if holder and not self._dead(holder, me):
                    where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                    raise BuildLockedError(str(self.path.parent.parent), "locked",
                                           f"another build ({where}) is writing this folder; if it is dead, "
                                           f"remove {self.path}")
                self._break(holder)
            raise BuildLockedError(str(self.path.parent.parent), "locked", "could not take the lock (contended)")
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> dict:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return {}
        try:
            info = json.loads(text)
            return info if isinstance(info, dict) else {"legacy": text}
        except ValueError:
            return {"legacy": text}  # an older biaudio's flock'ed "pid" file

    def _dead(self, holder: dict, me: dict) -> bool:
        if "legacy" in holder:  # older builds held it with flock: free when flock can be taken
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                return False
            finally:
                os.close(fd)
        if holder.get("host") != me["host"] or holder.get("boot_id") != me["boot_id"]:
            return bool(holder.get("boot_id")) and holder.get("host") == me["host"]  # same host, rebooted
        pid = int(holder.get("pid", -1))
        return not _pid_alive(pid) or (holder.get("proc_start") is not None and _proc_start(pid) != holder["proc_start"])

    def _break(self, holder: dict) -> None:
        """Move a dead holder's lock away; if a live build took the lock meanwhile, put its lock back."""
        aside = self.path.with_name(f".lock-stale-{os.getpid()}{TEMP_MARKER}{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text(errors="replace"))
        except (OSError, ValueError):
            moved = {}
        if isinstance(moved, dict) and moved.get("token") and moved.get("token") != holder.get("token"):
            try:
                os.link(aside, self.path)  # not the dead one: give it back
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        if self.token is not None and self._holder().get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None


def _sweep_temps(out_dir: Path, items: list[WorkItem] | None = None) -> int:
    """Delete temporary files left by a killed run (they are never part of a finished output).

    Only names the build itself gives its temporaries are touched, so a folder shared with other
    tools (or a user's hidden files) loses nothing: in .state/items/ (the build's own) every hidden
    or ``.tmp-`` file; in clips/ and previews/ hidden files tagged ``.tmp-`` and the stages'
    ``.<clip id>-XXXX`` temporaries of the build's items; in OUT itself only ``.tmp-`` names.
    """
    ids = sorted({i for it in items or () for i in (it.item_id, safe_item_id(it.source_id))}, key=len, reverse=True)
    clip_temp = re.compile(rf"^\.(?:{'|'.join(re.escape(i) for i in ids)})_\d+[-.]") if ids else None
    n = 0
    for d in (*MEDIA_DIRS, STATE + "/items", ""):
        folder = out_dir / d
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if d == STATE + "/items":
                ours = is_temp_name(p.name)
            elif d:
                ours = p.name.startswith(".") and (TEMP_MARKER in p.name
                                                   or (clip_temp is not None and bool(clip_temp.match(p.name))))
            else:
                ours = TEMP_MARKER in p.name
            if p.is_file() and ours:
                p.unlink(missing_ok=True)
                n += 1
    return n


def _sweep_orphans(out_dir: Path, records: list[dict], referenced: set[str]) -> int:
    """Delete media the build wrote for an item that no manifest row references any more (an item
    redone with fewer clips, a clip dropped after rendering): only files a completion record lists
    as the build's own are candidates, so a file the build did not write is never deleted, whatever
    its name."""
    n = 0
    for rec in records:
        for rel in set(rec.get("files") or ()) | _rows_files(rec.get("result") or {}):
            parts = Path(rel).parts
            if rel in referenced or len(parts) != 2 or parts[0] not in MEDIA_DIRS or parts[1].startswith("."):
                continue
            p = out_dir / rel
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                n += 1
    return n


# ------------------------------------------------------------------ planning


def plan_items(items: list[WorkItem], out_dir: Path, rhash: str, retry_failed: list[str] | None) -> list[PlannedItem]:
    """Decide for each item: run (no valid record), retry (failed and --retry-failed), or skip."""
    plan = []
    for it in items:
        rec = _read_record(out_dir, it.item_id)
        if rec is None:
            plan.append(PlannedItem(replace(it, attempt=1), "run", "new"))
        elif rec.get("recipe_hash") != rhash:
            plan.append(PlannedItem(replace(it, attempt=int(rec.get("attempt", 1)) + 1), "run",
                                    "recipe changed"))
        elif (why := _record_mismatch(rec, it)) is not None:
            plan.append(PlannedItem(replace(it, attempt=1), "run", why))
        else:
            rejects = rec["result"].get("rejects", [])
            wanted = [r for r in rejects if retry_failed is not None
                      and (not retry_failed or r.get("reason") in retry_failed or r.get("stage") in retry_failed)]
            if wanted:
                why = ", ".join(sorted({str(r.get("reason")) for r in wanted}))
                plan.append(PlannedItem(replace(it, attempt=int(rec.get("attempt", 1)) + 1), "retry", why))
            else:
                plan.append(PlannedItem(replace(it, attempt=int(rec.get("attempt", 1))), "skip", "done"))
    return plan


# ------------------------------------------------------------------ executors


def warm_worker(recipe: Recipe, item_fn: str) -> None:
    """Pool initializer: pay the per-process costs once per worker, not in the first item's time:
    the stage modules' imports, OpenCV, and the recipe's binaural decoder (per-process cache,
    backed by the on-disk filter cache). Heavy optional models (torch for a speech filter) stay
    lazy unless the item function's module offers ``warm_up(recipe)``, which is then called here
    (it should load only what the recipe uses). Never raises: a failure here shows up, with its
    reason, in the item that needs the thing."""
    try:
        _limit_threads(recipe.execution.threads_per_worker)
        fn = load_item_fn(item_fn)
        import cv2  # noqa: F401

        render = getattr(recipe, "render", None)
        if render is not None:
            from biaudio.spatial.decoders import get_decoder

            get_decoder(str(render.hrtf), str(render.decoder), int(render.sample_rate))
        hook = (getattr(fn, "__globals__", None) or {}).get("warm_up")  # the module the function came from
        if callable(hook):
            hook(recipe)
    except Exception:  # noqa: BLE001 - only an optimisation
        pass


def _run_local(todo: list[WorkItem], recipe: Recipe, out_dir: Path, item_fn: str, rhash: str, workers: int,
               on_result: Callable[[dict], bool]) -> None:
    """A ``spawn`` process pool: workers are fresh interpreters (no forked threads or locks), and one
    item's crash or memory never leaks into the next build step."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=warm_worker, initargs=(recipe, item_fn))
    futures = {pool.submit(run_item, it, recipe, str(out_dir), item_fn, rhash): it for it in todo}
    stop = False
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                it = futures[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool as e:  # a worker died (OOM-killed, segfault)
                    outcome = _crash_outcome(it, e)
                except Exception as e:  # noqa: BLE001 - e.g. pickling failure
                    outcome = _crash_outcome(it, e)
                if not on_result(outcome) and not stop:
                    stop = True
                    for f in pending:
                        f.cancel()
            pending = {f for f in pending if not f.cancelled()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(todo: list[WorkItem], recipe: Recipe, out_dir: Path, item_fn: str, rhash: str, workers: int,
             address: str | None, on_result: Callable[[dict], bool]) -> None:
    """Ray tasks calling the same ``run_item``: a local cluster (``num_cpus=workers``) or ``address``."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, object_store_memory=128 * 1024**2, **kwargs)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_item)
        refs = {task.remote(it, recipe, str(out_dir), item_fn, rhash): it for it in todo}
        stop = False
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                it = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - worker died, task cancelled
                    outcome = _crash_outcome(it, e)
                if not on_result(outcome) and not stop:
                    stop = True
                    for r in refs:
                        ray.cancel(r)
    finally:
        if started_here:
            ray.shutdown()


def _crash_outcome(it: WorkItem, e: BaseException) -> dict:
    """A worker process died (not an exception inside process_item): no record, counted internal."""
    return {"item_id": it.item_id, "attempt": it.attempt, "internal": True, "write_error": None,
            "record_written": False, "wall_s": 0.0, "cpu_s": 0.0,
            "result": ItemResult(it.item_id, rejects=[{"item_id": it.item_id, "stage": "internal",
                                                       "reason": "worker_died", "detail": f"{type(e).__name__}: {e}",
                                                       "attempt": it.attempt, "source_uri": it.source_uri}]).to_dict()}


# ------------------------------------------------------------------ the build


def build(
    recipe: Recipe,
    out_dir: Path | str,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    retry_failed: list[str] | None = None,
    on_event: EventFn | None = None,
    force_out: bool = False,
) -> BuildSummary:
    """Run (or resume) a build of ``recipe`` into ``out_dir``; see the module docstring.

    ``retry_failed``: None = failed items stay as they are; [] = redo every item whose record has
    rejects; [reasons/stages...] = redo only items with a reject of those reasons (or stages).
    Raises :class:`BiaudioError` for problems with the build as a whole (lock held, another schema
    version, no sources, item function not importable, OUT not empty and not a build folder or
    built by another recipe -- unless ``force_out``); item failures are rejects, not exceptions.
    """
    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    emit = on_event or (lambda kind, info: None)
    rhash = recipe_hash(recipe)
    ex = recipe.execution
    item_fn = ex.item_fn or DEFAULT_ITEM_FN
    summary = BuildSummary(out, rhash, dry_run=dry_run)
    if out.exists():
        check_out_dir(out, recipe.name, force_out)

    if dry_run:  # touches nothing on disk
        items, summary.source_errors, summary.notes = resolve_items(recipe, out)
        summary.planned = plan_items(items, out, rhash, retry_failed)
        todo = [p for p in summary.planned if p.action != "skip"]
        summary.planned = todo[: limit if limit is not None else None] + [p for p in summary.planned if p.action == "skip"]
        summary.skipped = sum(p.action == "skip" for p in summary.planned)
        summary.wall_s = time.perf_counter() - t0
        return summary

    load_item_fn(item_fn)  # fail the whole build early (exit 2) if the stages cannot be imported
    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out):
        check_out_dir(out, recipe.name, force_out)
        for d in (*MEDIA_DIRS, "logs", STATE + "/items"):
            (out / d).mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / STATE / "build.json",
                          json.dumps({"schema_version": SCHEMA_VERSION, "recipe_hash": rhash,
                                      "recipe": recipe.name}, indent=1, sort_keys=True))
        atomic_write_text(out / "recipe.yaml", _recipe_yaml(recipe))
        emit("sources", {"recipe": recipe.name})
        items, summary.source_errors, summary.notes = resolve_items(recipe, out)
        _sweep_temps(out, items)
        summary.planned = plan_items(items, out, rhash, retry_failed)
        todo = [p.item for p in summary.planned if p.action != "skip"]
        if limit is not None:
            todo = todo[:limit]
        summary.skipped = len(items) - len(todo)
        workers = max(1, min(ex.workers or os.cpu_count() or 1, max(1, len(todo))))
        emit("plan", {"total": len(todo), "skipped": summary.skipped, "items": len(items), "workers": workers,
                      "executor": ex.executor})
        transient: list[dict] = []

        def on_result(outcome: dict) -> bool:
            res = outcome["result"]
            summary.processed.append(outcome["item_id"])
            summary.run_rejects += len(res["rejects"])
            if outcome["internal"]:
                summary.internal_errors.append(outcome["item_id"])
            if outcome["write_error"]:
                summary.write_errors.append(outcome["item_id"])
                transient.extend(res["rejects"])
            emit("item", {"item_id": outcome["item_id"], "rows": len(res["rows"]), "rejects": len(res["rejects"]),
                          "internal": outcome["internal"], "write_error": outcome["write_error"],
                          "wall_s": outcome.get("wall_s", 0.0)})
            if outcome["write_error"] and ex.on_write_error == "stop":
                summary.stopped = True
                summary.notes.append(f"stopped after a write failure ({outcome['write_error']}) on "
                                     f"{outcome['item_id']}; finished items are kept, rerun to continue")
                return False
            return True

        if todo:
            if ex.executor == "ray":
                _run_ray(todo, recipe, out, item_fn, rhash, workers, ex.ray_address, on_result)
            else:
                _run_local(todo, recipe, out, item_fn, rhash, workers, on_result)
        _sweep_temps(out, items)  # every worker has finished: leftovers of failed writes go
        emit("assemble", {})
        try:
            _assemble(out, recipe, rhash, items, transient, summary, time.perf_counter() - t0, workers)
        except OSError as e:
            summary.write_errors.append("<manifest>")
            summary.notes.append(f"could not write the manifest: {e}; item records are intact, rerun to assemble")
    summary.wall_s = time.perf_counter() - t0
    return summary


def _recipe_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.dump(), sort_keys=False)


def _assemble(out: Path, recipe: Recipe, rhash: str, items: list[WorkItem], transient: list[dict],
              summary: BuildSummary, wall_s: float, workers: int) -> None:
    """Manifest, rejects and stats from every valid completion record (never from in-memory state)."""
    from biaudio.build.stats import compute_stats

    records = []
    for it in items:
        rec = _read_record(out, it.item_id)
        if rec is not None and rec.get("recipe_hash") == rhash and _record_mismatch(rec, it) is None:
            records.append(rec)
    rows: list[dict] = []
    rejects: list[dict] = list(summary.source_errors) + transient
    for rec in records:
        rows.extend(rec["result"]["rows"])
        src_uri = str(rec.get("source", {}).get("uri") or "")
        for r in rec["result"]["rejects"]:
            rejects.append({**r, "attempt": r.get("attempt", rec["attempt"]), "source_uri": r.get("source_uri", src_uri)})
    rows = complete_rows(rows, recipe_hash=rhash,
                         split_fractions=(recipe.split.val_fraction, recipe.split.test_fraction),
                         salt=recipe.split.salt, versions=tool_versions())
    _keep_qa(out, rows, rhash)
    write_manifest(out, rows)
    write_rejects(out, rejects)
    referenced = {r[k] for r in rows for k in ("video_path", "audio_path", "preview_path") if r.get(k)}
    _sweep_orphans(out, records, referenced)
    summary.kept_clips = len(rows)
    summary.total_rejects = len(rejects)
    stats = compute_stats(records, rows, rejects, n_items=len(items), rhash=rhash)
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
