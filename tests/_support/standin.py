"""A fast, controllable stand-in for ``biaudio.stages.item.process_item`` (no tests in here).

The engine tests inject it with the recipe hook ``execution.item_fn =
"<this file>:process_item"``, so resume/kill/retry/executor behaviour is tested in seconds, with
real processes, real files and real renames, independently of the per-clip stages.

It is driven by the environment variable ``BIAUDIO_STANDIN`` (JSON), which reaches spawned
workers and Ray workers alike:

- ``template``: folder with ``t.mp4`` (1 s video+audio), ``t.flac``, ``t.jpg`` (copied per clip)
- ``sleep``: seconds per item (to kill a build half-way)
- ``fail``: {source_id: reason} -> a reject at stage ``fetch``
- ``fail_once``: {source_id: reason} -> rejected only on attempt 1
- ``crash``: [source_id] -> raises (an internal error)
- ``big``: {source_id: n_bytes} -> also writes a file that size (fills a tiny disk)
- ``calls``: a file to which every call appends ``<item_id> <attempt>`` (proves what ran)
- ``n_clips``: {source_id: n} -> only the first n of the usual two clips
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

from biaudio.engine.types import ItemResult, WorkItem, temp_path


def _cfg() -> dict:
    return json.loads(os.environ.get("BIAUDIO_STANDIN", "{}"))


def trajectory_for(clip_id: str, n: int, fps: float) -> list[dict]:
    """Deterministic per clip id (like the real paper trajectory: seeded by the clip id)."""
    rng = random.Random(int(hashlib.sha256(clip_id.encode()).hexdigest()[:12], 16))
    yaw0, rate = rng.uniform(-180, 180), rng.uniform(-20, 20)
    return [{"t": i / fps, "yaw": yaw0 + rate * i / fps, "pitch": rng.uniform(-5, 5), "roll": 0.0} for i in range(n)]


def _put(src: Path, dst: Path) -> int:
    tmp = temp_path(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst.stat().st_size


def process_item(item: WorkItem, recipe, out_dir: Path, log: logging.Logger) -> ItemResult:
    cfg = _cfg()
    sid = item.source_id
    if cfg.get("calls"):
        with open(cfg["calls"], "a") as f:
            f.write(f"{item.item_id} {item.attempt}\n")
    log.info("stand-in processing %s", sid)
    time.sleep(float(cfg.get("sleep", 0)))
    if sid in cfg.get("crash", []):
        raise RuntimeError(f"stand-in crash for {sid}")
    reason = cfg.get("fail", {}).get(sid) or (cfg.get("fail_once", {}).get(sid) if item.attempt == 1 else None)
    if reason:
        return ItemResult(item.item_id, rejects=[{"item_id": item.item_id, "stage": "fetch", "reason": reason,
                                                  "detail": "stand-in failure"}])
    tmpl = Path(cfg["template"])
    out_dir = Path(out_dir)
    rows, written = [], 0
    if sid in cfg.get("big", {}):
        big = out_dir / "clips" / f"{sid}_big.bin"
        tmp = temp_path(big)
        with open(tmp, "wb") as f:
            f.write(b"\0" * int(cfg["big"][sid]))
        os.replace(tmp, big)
    for k, start_ms in enumerate((0, 1000)[: int(cfg.get("n_clips", {}).get(sid, 2))]):
        clip_id = f"{sid}_{start_ms}"
        written += _put(tmpl / "t.mp4", out_dir / "clips" / f"{clip_id}.mp4")
        written += _put(tmpl / "t.flac", out_dir / "clips" / f"{clip_id}.flac")
        written += _put(tmpl / "t.jpg", out_dir / "previews" / f"{clip_id}.jpg")
        fps, n = 10.0, 10
        rows.append({
            "clip_id": clip_id, "source_id": sid, "source_uri": item.source_uri,
            "start_s": start_ms / 1000, "end_s": start_ms / 1000 + 1.0, "duration_s": 1.0,
            "video_path": f"clips/{clip_id}.mp4", "audio_path": f"clips/{clip_id}.flac",
            "preview_path": f"previews/{clip_id}.jpg",
            "fps": fps, "hfov_deg": 90.0, "width": 64, "height": 36, "sample_rate": 16000, "num_frames": n,
            "trajectory": trajectory_for(clip_id, n, fps), "trajectory_mode": "paper",
            "clip_azimuth_deg": 10.0 * k, "clip_elevation_deg": 0.0,
            "window_directions": [{"t": 0.5, "azimuth_deg": 10.0 * k, "elevation_deg": 0.0, "diffuseness": 0.2,
                                   "energy_db": -20.0}],
            "silence_ratio": 0.0, "static_ratio": 0.0, "speech_ratio": 0.0, "speech_backend": "none",
            "speech_checkpoint": None, "lr_difference": 0.2, "caption": None, "caption_visible": None,
            "caption_invisible": None, "caption_backend": "none", "foa_convention": "ambix", "hrir_set": "kemar",
            "decoder": "magls",
        })
    return ItemResult(item.item_id, rows=rows, rejects=[], stats={"render": 0.01}, bytes_written=written)
