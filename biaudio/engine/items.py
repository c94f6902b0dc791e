"""Recipe sources -> work items (one per source video), and the plan: run, retry or skip each.

Ids and identities are a function of the input alone, so a record made from another input (ids
moved in a hand-edited list, a file replaced in place) never stands in for the current one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from biaudio.engine.state import _read_record
from biaudio.engine.types import WorkItem, reject_row, safe_item_id, source_field
from biaudio.recipe import Recipe, SynthSource, resolve_source_entry


@dataclass
class PlannedItem:
    item: WorkItem
    action: str  # "run" (never done / stale), "retry" (--retry-failed), "skip" (done)
    why: str = ""


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
        errors.extend(reject_row(safe_item_id(str(e.path or "source")), "sources", e.reason, e.detail, attempt=1,
                                 source_uri=e.path) for e in res.errors)
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
        src = SourceItem(scene_id, "file", str(folder / f"{scene_id}.mp4"), None, f"synth seed={p.seed} index={i}",
                         group=scene_id)  # every scene is its own video (scene_0001 is no section of "scene")
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
