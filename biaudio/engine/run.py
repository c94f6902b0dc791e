"""The build engine's entry point: ``build`` runs (or resumes) one recipe into one output folder.

Why per-item completion records (``OUT/.state/items/<item_id>.json``, written atomically and
*last*, after the item's media files have been renamed into place): they make a build resumable
at item granularity (datatrove's per-task markers lose whole tasks), they are the single source of
truth for the final manifest (rebuilt from all records at the end of every run, so a killed run
loses only its in-flight items and can never duplicate rows), and they say which items failed so
``--retry-failed`` can redo only those.

The same worker function (``engine.worker.run_item``) runs in a ``spawn`` process pool
(``--executor local``) and as a Ray task (``--executor ray``), so both executors produce the same
records and the same manifest. For Ray on a real cluster, OUT must be on a filesystem every node
sees; each record says on which host and Ray node its item ran.

Layout of OUT::

    manifest.parquet rejects.parquet stats.json recipe.yaml
    clips/ previews/            media, written by the stages (temporary name, then rename)
    logs/<item_id>.log          one log per item (appended across attempts)
    sources/                    inputs the build made itself (synthetic scenes)
    .state/build.json           schema version + recipe hash of the folder
    .state/items/<item_id>.json completion records
    .state/lock                 held while a build runs (atomic link; a dead holder's lock is taken over)

The engine's parts: ``items`` (sources -> work items, the plan), ``worker`` (one item -> its
record), ``executors`` (local pool, Ray), ``state`` (records, lock, sweeps), ``assemble``
(records -> manifest, rejects, stats). This module only orchestrates them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from biaudio.engine.assemble import _assemble, read_recipe_split_lists
from biaudio.engine.executors import _run_local, _run_ray
from biaudio.engine.items import PlannedItem, plan_items, resolve_items
from biaudio.engine.state import MEDIA_DIRS, STATE, _Lock, _sweep_temps, check_out_dir
from biaudio.engine.worker import load_item_fn
from biaudio.manifest import (
    SCHEMA_VERSION,
    atomic_write_text,
)
from biaudio.recipe import Recipe, recipe_hash

DEFAULT_ITEM_FN = "biaudio.stages.item:process_item"


EventFn = Callable[[str, dict], None]


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
        return _dry_run(recipe, out, rhash, retry_failed, limit, summary, t0)

    load_item_fn(item_fn)  # fail the whole build early (exit 2) if the stages cannot be imported
    split_lists = read_recipe_split_lists(recipe)  # and if a split list cannot be read
    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out):
        check_out_dir(out, recipe.name, force_out)
        _init_out(out, recipe, rhash)
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
        on_result = _Outcomes(summary, emit, ex.on_write_error)
        if todo:
            if ex.executor == "ray":
                _run_ray(todo, recipe, out, item_fn, rhash, workers, ex.ray_address, on_result)
            else:
                _run_local(todo, recipe, out, item_fn, rhash, workers, on_result)
        _sweep_temps(out, items)  # every worker has finished: leftovers of failed writes go
        emit("assemble", {})
        try:
            _assemble(out, recipe, rhash, items, on_result.transient, summary, time.perf_counter() - t0, workers,
                      split_lists)
        except OSError as e:
            summary.write_errors.append("<manifest>")
            summary.notes.append(f"could not write the manifest: {e}; item records are intact, rerun to assemble")
    summary.wall_s = time.perf_counter() - t0
    return summary


def _dry_run(recipe: Recipe, out: Path, rhash: str, retry_failed: list[str] | None, limit: int | None,
             summary: BuildSummary, t0: float) -> BuildSummary:
    """``build --dry-run``: the plan (what would run, what would be skipped); touches nothing on disk."""
    items, summary.source_errors, summary.notes = resolve_items(recipe, out)
    summary.planned = plan_items(items, out, rhash, retry_failed)
    todo = [p for p in summary.planned if p.action != "skip"]
    summary.planned = todo[: limit if limit is not None else None] + [p for p in summary.planned if p.action == "skip"]
    summary.skipped = sum(p.action == "skip" for p in summary.planned)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _init_out(out: Path, recipe: Recipe, rhash: str) -> None:
    """The folder layout, ``.state/build.json`` (what built this folder) and the resolved ``recipe.yaml``."""
    for d in (*MEDIA_DIRS, "logs", STATE + "/items"):
        (out / d).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STATE / "build.json",
                      json.dumps({"schema_version": SCHEMA_VERSION, "recipe_hash": rhash,
                                  "recipe": recipe.name}, indent=1, sort_keys=True))
    atomic_write_text(out / "recipe.yaml", _recipe_yaml(recipe))


class _Outcomes:
    """The executors' ``on_result``: counts each finished item into the summary, reports it, and
    says whether to go on (False after a write failure with ``execution.on_write_error: stop``).
    ``transient`` keeps the rejects of write failures, which get no completion record."""

    def __init__(self, summary: BuildSummary, emit: EventFn, on_write_error: str) -> None:
        self.summary, self.emit, self.on_write_error = summary, emit, on_write_error
        self.transient: list[dict] = []

    def __call__(self, outcome: dict) -> bool:
        summary, res = self.summary, outcome["result"]
        summary.processed.append(outcome["item_id"])
        summary.run_rejects += len(res["rejects"])
        if outcome["internal"]:
            summary.internal_errors.append(outcome["item_id"])
        if outcome["write_error"]:
            summary.write_errors.append(outcome["item_id"])
            self.transient.extend(res["rejects"])
        self.emit("item", {"item_id": outcome["item_id"], "rows": len(res["rows"]), "rejects": len(res["rejects"]),
                           "internal": outcome["internal"], "write_error": outcome["write_error"],
                           "wall_s": outcome.get("wall_s", 0.0)})
        if outcome["write_error"] and self.on_write_error == "stop":
            summary.stopped = True
            summary.notes.append(f"stopped after a write failure ({outcome['write_error']}) on "
                                 f"{outcome['item_id']}; finished items are kept, rerun to continue")
            return False
        return True


def _recipe_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.dump(), sort_keys=False)
