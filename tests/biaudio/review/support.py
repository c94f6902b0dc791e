"""A tiny hand-built OUT folder for the review/QA tests (no dependency on the build pipeline).

Real media made with ffmpeg lavfi (H.264 + stereo AAC mp4, FLAC, JPEG previews) and a manifest
written with the v1 columns from docs/ARCHITECTURE.md, so the server and the browser see exactly
what a build produces, only smaller. The module also holds small HTTP helpers shared by the tests.
"""

from __future__ import annotations

import http.client
import json
import math
import subprocess
from pathlib import Path
from typing import Any

FPS = 15
DUR = 2.0


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True, timeout=60)


def make_media(out: Path, clip_id: str, k: int, preview: bool = True) -> None:
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    mp4 = clips / f"{clip_id}.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size=160x90:rate={FPS}:duration={DUR}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={300 + 100 * k}:duration={DUR}:sample_rate=48000",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={500 + 100 * k}:duration={DUR}:sample_rate=48000",
        "-filter_complex",
        "[1:a][2:a]amerge=inputs=2[a]",
        "-map",
        "0:v",
        "-map",
        "[a]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "15",
        "-c:a",
        "aac",
        "-ac",
        "2",
        "-b:a",
        "64k",
        "-movflags",
        "+faststart",
        str(mp4),
    )
    _ffmpeg("-i", str(mp4), "-vn", "-c:a", "flac", str(clips / f"{clip_id}.flac"))
    if preview:
        (out / "previews").mkdir(exist_ok=True)
        _ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=256x128:rate=1:duration=1",
            "-frames:v",
            "1",
            str(out / "previews" / f"{clip_id}.jpg"),
        )


def manifest_rows(n: int, previews: bool = True) -> list[dict[str, Any]]:
    rows = []
    for k in range(n):
        cid = f"src{k // 2}_{(k % 2) * 8000}"
        traj = [
            {
                "t": f / FPS,
                "yaw": ((40 * k + 60 * f / FPS * 1.5) + 180) % 360 - 180,
                "pitch": 0.0,
                "roll": 0.0,
            }
            for f in range(int(DUR * FPS))
        ]
        wins = [
            {
                "t": 0.1 + 0.2 * w,
                "azimuth_deg": 30.0 * k - 20 + 10 * math.sin(w),
                "elevation_deg": 5.0,
                "diffuseness": 0.3,
                "energy_db": -20.0 - w,
            }
            for w in range(10)
        ]
        rows.append(
            {
                "schema_version": 1,
                "clip_id": cid,
                "source_id": f"src{k // 2}",
                "source_uri": f"file:///data/src{k // 2}.mp4",
                "split": "train",
                "start_s": (k % 2) * 8.0,
                "end_s": (k % 2) * 8.0 + DUR,
                "duration_s": DUR,
                "video_path": f"clips/{cid}.mp4",
                "audio_path": f"clips/{cid}.flac",
                "preview_path": f"previews/{cid}.jpg" if previews else None,
                "fps": float(FPS),
                "hfov_deg": 90.0,
                "width": 160,
                "height": 90,
                "sample_rate": 48000,
                "num_frames": int(DUR * FPS),
                "trajectory": traj,
                "trajectory_mode": "paper",
                "clip_azimuth_deg": 30.0 * k - 20,
                "clip_elevation_deg": 5.0,
                "window_directions": wins,
                "silence_ratio": 0.05 * k,
                "static_ratio": 0.1,
                "speech_ratio": 0.1 * k,
                "speech_backend": "silero",
                "speech_checkpoint": None,
                "lr_difference": 0.02 + 0.05 * k,
                "caption": f"Visible sound: a test tone {k}. Invisible sound: none.",
                "caption_visible": f"a test tone {k}",
                "caption_invisible": "none",
                "caption_backend": "file",
                "foa_convention": "ambix",
                "hrir_set": "kemar",
                "decoder": "magls",
                "recipe_hash": "abc123",
                "tool_versions": "{}",
                "qa_status": "pending",
                "qa_reason": None,
            }
        )
    return rows


def write_manifest(out: Path, rows: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from biaudio.manifest import MANIFEST_SCHEMA

    # The v1 column types from the real schema; the writer itself stays permissive so tests can
    # drop columns or plant an old schema_version, which the real writer refuses.
    types = {f.name: f.type for f in MANIFEST_SCHEMA}
    cols = [c for c in rows[0] if c not in drop]
    arrays, fields = [], []
    for c in cols:
        typ = types.get(c)
        if typ is None:
            sample = next((r[c] for r in rows if r[c] is not None), "")
            typ = pa.float64() if isinstance(sample, float) else pa.string()
        arrays.append(pa.array([r[c] for r in rows], type=typ))
        fields.append(pa.field(c, typ))
    path = out / "manifest.parquet"
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), path)
    return path


def build_mini_out(out: Path, n: int = 4, previews: bool = True, drop: tuple[str, ...] = ()) -> Path:
    """OUT with ``n`` clips (two per source), real media, manifest v1."""
    out.mkdir(parents=True, exist_ok=True)
    rows = manifest_rows(n, previews)
    for k, r in enumerate(rows):
        make_media(out, r["clip_id"], k, preview=previews)
    write_manifest(out, rows, drop)
    return out


# -- raw HTTP helpers (http.client sends the path exactly as given: no normalisation) -----------


def raw_request(
    port: int, method: str, path: str, body: Any = None, headers: dict | None = None, host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        data = None if body is None else json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        if host is not None:
            con.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            con.putheader("Host", host)
            for k, v in h.items():
                con.putheader(k, v)
            if data is not None:
                con.putheader("Content-Length", str(len(data)))
            con.endheaders(data)
        else:
            con.request(method, path, body=data, headers=h)
        r = con.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        con.close()
