"""Where items run: a local ``spawn`` process pool or Ray tasks, both calling ``worker.run_item``
and handing each outcome to the orchestrator's ``on_result`` (which may ask them to stop).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from biaudio.engine.types import ItemResult, WorkItem, reject_row
from biaudio.engine.worker import run_item, warm_worker
from biaudio.recipe import Recipe


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
            "result": ItemResult(it.item_id, rejects=[reject_row(it.item_id, "internal", "worker_died",
                                                                 f"{type(e).__name__}: {e}", attempt=it.attempt,
                                                                 source_uri=it.source_uri)]).to_dict()}
