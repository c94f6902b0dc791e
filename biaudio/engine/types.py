"""The data that crosses the line between the build engine (executor) and the per-item stages.

These are plain dataclasses, not pydantic models, because they travel to worker processes
(``spawn`` pickles them) and to Ray tasks (cloudpickle): the fewer moving parts in a pickled
object, the fewer surprises on a remote node.

Contract with ``biaudio.stages.item.process_item(item, recipe, out_dir, log) -> ItemResult``:

* ``ItemResult.rows`` are manifest rows *without* ``group_id``, ``split``, ``schema_version``,
  ``recipe_hash`` and ``tool_versions``; the engine adds those when it assembles
  ``manifest.parquet`` (``group_id`` from the item's source, the split per group). Their
  ``start_s``/``end_s`` are times in the source video (``section_start_s`` added).
* ``ItemResult.rejects`` are dicts ``{item_id, stage, reason, detail}`` (optionally ``clip_id``),
  made by :func:`reject_row` / :func:`reject_from_error`; the engine adds ``attempt`` and ``source_uri``.
* ``ItemResult.stats`` maps stage name -> seconds spent.
* ``process_item`` raises nothing for item-level failures; anything it does raise is recorded by
  the engine as a reject with ``stage="internal"`` (a bug, which makes the build exit non-zero).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from biaudio.atomic import TEMP_MARKER, temp_path  # noqa: F401  (the one naming of temporaries, re-exported)


def is_temp_name(name: str) -> bool:
    """True for names written by ``temp_path`` or other common partial-file conventions."""
    return name.startswith(".") or TEMP_MARKER in name or name.endswith((".part", ".tmp"))


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_item_id(source_id: str) -> str:
    """A file-name-safe item id (used for ``.state/items/<id>.json`` and ``logs/<id>.log``).

    Sphere360 ids (``<ytid>_<start>``) and file stems pass through unchanged; anything else has
    unsafe characters replaced, so a source id can never name a path outside OUT.
    """
    s = _SAFE.sub("_", source_id).strip("._") or "item"
    return s[:150]


@dataclass
class WorkItem:
    """One unit of work: one source item (one source video), at a given attempt (1 = first)."""

    item_id: str
    source: Any  # biaudio.ingest.sources.SourceItem, or a dict with source_id/kind/uri/section
    attempt: int = 1
    # Work the engine does in the worker before process_item, e.g. {"synth": {...}} makes the
    # synthetic scene ``source.uri`` (so scene generation is parallel and resumable like the rest).
    prepare: dict | None = None

    @property
    def source_id(self) -> str:
        return str(_get(self.source, "source_id", self.item_id))

    @property
    def source_uri(self) -> str:
        return str(_get(self.source, "uri", ""))


@dataclass
class ItemResult:
    """What one work item produced: kept clips (rows), dropped ones (rejects), timings, bytes."""

    item_id: str
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    bytes_written: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def reject_row(item_id: str, stage: str, reason: str, detail: str, **extra: Any) -> dict:
    """One reject as records and ``rejects.parquet`` carry it: the one place such dicts are made.
    ``extra``: ``clip_id`` for a window, ``attempt`` / ``source_uri`` where the engine knows them."""
    return {"item_id": item_id, "stage": stage, "reason": reason, "detail": detail, **extra}


def reject_from_error(item_id: str, e: Any, default_stage: str, detail: str | None = None, **extra: Any) -> dict:
    """A reject from a :class:`biaudio.errors.BiaudioError`, which already carries stage, reason and
    detail (``default_stage`` where it names none; ``detail`` defaults to its detail, else its text)."""
    return reject_row(item_id, e.stage or default_stage, e.reason, (e.detail or str(e)) if detail is None else detail,
                      **extra)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def source_field(source: Any, name: str, default: Any = None) -> Any:
    """Read a field of a SourceItem or of its dict stand-in (the engine accepts both)."""
    return _get(source, name, default)
