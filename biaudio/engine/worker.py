"""The worker side of both executors: one item in, one completion record and an outcome dict out.

``run_item`` never raises: every failure becomes a reject, so one bad input cannot stop a build.
"""

from __future__ import annotations

import errno
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
from pathlib import Path
from typing import Any

from biaudio.engine.items import _prepare, source_fingerprint
from biaudio.engine.state import MEDIA_DIRS, RECORD_VERSION, _json_default, _rows_files, record_path
from biaudio.engine.types import (
    TEMP_MARKER,
    ItemResult,
    WorkItem,
    reject_from_error,
    reject_row,
    source_field,
)
from biaudio.errors import BiaudioError
from biaudio.manifest import (
    SCHEMA_VERSION,
    atomic_write_text,
)
from biaudio.recipe import Recipe

# OSError errnos that mean "the output cannot be written" (not a bug, not bad data)
_WRITE_ERRNOS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EFBIG: "disk_full",
                 errno.EROFS: "write_error", errno.EACCES: "write_error", errno.EPERM: "write_error",
                 errno.EIO: "write_error"}


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
    result = _run_stages(item, recipe, out, item_fn, log, outcome)
    for r in result.rejects:
        r.setdefault("item_id", item.item_id)
        r["attempt"] = item.attempt
        r.setdefault("source_uri", item.source_uri)
        if r.get("stage") == "internal":
            outcome["internal"] = True
    if outcome["write_error"] is None:
        result = _write_record(out, item, rhash, fingerprint, result, (wall0, cpu0, started_at), outcome, log)
    if log is not None:
        log.info("done: %d clips, %d rejects", len(result.rows), len(result.rejects))
        log.removeHandler(handler)
        handler.close()
    return _finish(outcome, result, item, wall0, cpu0)


def _run_stages(item: WorkItem, recipe: Recipe, out: Path, item_fn: str, log: logging.Logger,
                outcome: dict[str, Any]) -> ItemResult:
    """Prepare the input (a synthetic scene) and run the item function; every failure becomes the
    item's reject here (``outcome`` notes write failures and bugs), so nothing escapes."""
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
        result = ItemResult(item.item_id, rejects=[reject_from_error(item.item_id, e, "sources")])
    except BiaudioError as e:  # the stages should turn these into rejects themselves; tolerate it
        log.warning("stage raised %s", e)
        result = ItemResult(item.item_id, rejects=[reject_from_error(item.item_id, e, "pipeline")])
    except Exception as e:  # noqa: BLE001 - a bug in a stage: record it, keep the build going
        result = _internal(item, e, log)
        outcome["internal"] = True
    return result


def _write_record(out: Path, item: WorkItem, rhash: str, fingerprint: dict, result: ItemResult,
                  started: tuple[float, float, float], outcome: dict[str, Any], log: logging.Logger) -> ItemResult:
    """The completion record (what was made, from what input, at what cost), written atomically
    after the item's media; returns the result (an internal reject instead when the rows cannot be
    stored). A write failure leaves no record, so a rerun redoes the item."""
    wall0, cpu0, started_at = started
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
    return result


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
    return reject_row(item.item_id, "write", _WRITE_ERRNOS.get(e.errno or 0, "write_error"), f"{where}: {e}",
                      attempt=item.attempt, source_uri=item.source_uri)


def _internal(item: WorkItem, e: BaseException, log: logging.Logger | None) -> ItemResult:
    if log is not None:
        log.error("internal error:\n%s", "".join(traceback.format_exception(e)))
    return ItemResult(item.item_id, rejects=[reject_row(item.item_id, "internal", type(e).__name__, str(e)[:2000])])


def _source_dict(source: Any) -> dict:
    if isinstance(source, dict):
        return dict(source)
    if hasattr(source, "to_dict"):
        return source.to_dict()
    return {k: source_field(source, k) for k in ("source_id", "kind", "uri", "section")}


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
