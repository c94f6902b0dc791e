"""Exact ground truth of synthetic clips: scene type and each source's camera-frame direction.

Why: on a synthetic build (``biaudio synth`` worlds, built by ``biaudio build``) the truth JSON
beside each source scene says where every source is in the world, whether it is drawn and whether
it sounds; with the clip's camera trajectory from the manifest that gives the per-frame direction
of every source *in the camera frame*, including whether it is in view. ``visaudio eval`` uses it
to report each scene type separately and writes it to ``camera_truth.parquet`` (the side file of
the evaluated split). Real data has no truth JSON: every function here then returns None/empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from biaudio.manifest import ClipRow


def find_truth(manifest_dir: Path, row: ClipRow) -> dict | None:
    """The truth JSON of the clip's source scene, or None (real data, or the scene folder is gone).

    Looked up beside the manifest's ``source_uri`` (``<scene>.mp4`` -> ``<scene>.json``), then in
    ``<manifest_dir>/sources/*/<source_id>.json`` (a build folder that was moved)."""
    cands = []
    uri = row.source_uri
    if isinstance(uri, str) and uri:
        cands.append(Path(uri).with_suffix(".json"))
    sid = row.source_id
    if isinstance(sid, str) and sid:
        cands += sorted((Path(manifest_dir) / "sources").glob(f"*/{sid}.json"))
    for c in cands:
        try:
            d = json.loads(c.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and "sources" in d and "fps" in d:
            return d
    return None


def scene_type(truth: dict | None) -> str | None:
    """``scene_type`` of a spatial-bench scene; ``"demo"`` for a demo-world scene; None without truth."""
    if truth is None:
        return None
    return truth.get("scene_type") or "demo"


def _records(v) -> list[dict]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    return [dict(r) for r in list(v)]


def camera_truth(row: ClipRow, truth: dict, times: np.ndarray) -> pd.DataFrame:
    """One row per (source, time): world and camera-frame direction, ``in_view``, ``visible``,
    ``sounding`` and the source's level (dB) at clip times ``times`` (seconds from the clip start).

    The truth's per-frame world directions are at source time ``start_s + t``; the camera pose is
    the manifest trajectory (both interpolated, azimuths unwrapped first)."""
    from biaudio.spatial.angles import unwrap_deg, world_to_camera_dir, wrap_deg

    traj = _records(row.trajectory)
    if not traj:
        return pd.DataFrame()
    start = float(row.start_s or 0.0)
    hfov = float(row.hfov_deg or 90.0)
    w, h = float(row.width or 16.0), float(row.height or 9.0)
    vfov = float(np.rad2deg(2 * np.arctan(np.tan(np.deg2rad(hfov) / 2) * h / w)))
    tt = np.array([r["t"] for r in traj], dtype=float)
    yaw = np.interp(times, tt, unwrap_deg([r["yaw"] for r in traj]))
    pitch = np.interp(times, tt, [r.get("pitch", 0.0) for r in traj])
    roll = np.interp(times, tt, [r.get("roll", 0.0) for r in traj])
    out = []
    for s in truth["sources"]:
        fr = s["frames"]
        ts = np.array([x["t"] for x in fr], dtype=float)
        az_w = np.interp(start + times, ts, unwrap_deg([x["azimuth_deg"] for x in fr]))
        el_w = np.interp(start + times, ts, [x["elevation_deg"] for x in fr])
        lvl = np.interp(start + times, ts, [x["rms_db"] for x in fr])
        az_c, el_c = world_to_camera_dir(az_w, el_w, yaw, pitch, roll)
        x = np.tan(np.deg2rad(np.clip(az_c, -89.9, 89.9)))
        in_view = (np.abs(az_c) < 90) & (np.abs(x) <= np.tan(np.deg2rad(hfov / 2))) & (np.abs(el_c) <= vfov / 2)
        out.append(pd.DataFrame({
            "clip_id": row.clip_id, "source": s["name"], "t": times, "azimuth_world_deg": wrap_deg(az_w),
            "elevation_world_deg": el_w, "azimuth_cam_deg": az_c, "elevation_cam_deg": el_c,
            "in_view": in_view & bool(s.get("visible", True)), "visible": bool(s.get("visible", True)),
            "sounding": bool(s.get("sounding", True)), "level_db": lvl,
        }))
    return pd.concat(out, ignore_index=True)
