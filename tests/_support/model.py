"""Model-area helpers behind the fixtures ``toy_manifest`` (tests/visaudio/conftest.py),
``tiny_run`` (tests/conftest.py) and ``tiny_mono_run`` (tests/visaudio/eval/conftest.py).

* :func:`make_toy_manifest`: a small hand-made manifest (no build pipeline needed): each clip shows
  a coloured disc on the left or right of the picture (some clips move across) and the audio is a
  tone panned to the same side with a level (ILD) and a time (ITD) difference.
* ``TINY_STEPS`` / ``TINY_OVERRIDES``: how the tiny config is trained for the session runs.
  :func:`tiny_run_dir`: where a session run lives; set ``VISAUDIO_TINY_RUN_DIR`` to keep the runs
  between sessions (training resumes, so a finished run is reused instantly).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

TINY_STEPS = int(os.environ.get("VISAUDIO_TINY_STEPS", "300"))
TINY_OVERRIDES = ["train.batch_size=8", "train.val_every=100000", "train.ckpt_every=100", "train.warmup_steps=20",
                  "train.lr=1e-3", "train.ema_decay=0.99",
                  f"train.num_threads={os.environ.get('VISAUDIO_TEST_THREADS', '1')}"]


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    h, w = frames.shape[1:3]
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "10", "-pix_fmt", "yuv444p",
           str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def source_side_track(side0: float, side1: float, n: int) -> np.ndarray:
    """Azimuth (deg, camera frame, +left) moving linearly from side0 to side1 over n samples."""
    return np.linspace(side0, side1, n)


def make_toy_manifest(out: Path, n_train: int = 8, n_val: int = 2, n_test: int = 2, duration: float = 3.0,
                      sr: int = 16000, size: tuple[int, int] = (96, 64), fps: float = 16.0, seed: int = 0, noise: float = 0.001) -> Path:
    """Write clips/*.mp4 + clips/*.flac + manifest.parquet (manifest v1 column names)."""
    import pandas as pd
    import soundfile as sf

    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    W, H = size
    nf = int(round(duration * fps))
    T = int(round(duration * sr))
    rows = []
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        cid = f"toy{i:02d}_0"
        moving = i % 3 == 2
        a0 = float(rng.choice([-60.0, 60.0]))
        a1 = -a0 if moving else a0
        az_f = source_side_track(a0, a1, nf)
        color = rng.integers(80, 255, 3)
        yy, xx = np.mgrid[0:H, 0:W]
        frames = np.full((nf, H, W, 3), 30, np.uint8)
        for k in range(nf):
            cx = W / 2 - az_f[k] / 90.0 * (W / 2 - 8)  # +az (left) -> left of the picture
            cy = H / 2 + 4 * np.sin(k / 3)
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < (H / 6) ** 2
            frames[k][m] = color
        _write_mp4(out / "clips" / f"{cid}.mp4", frames, fps)
        t = np.arange(T) / sr
        f0 = float(rng.uniform(300, 900))
        env = 0.6 + 0.4 * np.sin(2 * np.pi * 2.0 * t)
        s = 0.3 * env * np.sin(2 * np.pi * f0 * t) + noise * rng.standard_normal(T)
        az_s = np.interp(t, np.arange(nf) / fps, az_f)
        pan = np.sin(np.deg2rad(az_s))  # +1 left
        gl, gr = 0.55 + 0.45 * pan, 0.55 - 0.45 * pan
        itd = (0.0006 * pan * sr).astype(int)  # far ear delayed
        idx = np.arange(T)
        left = gl * s[np.clip(idx + np.minimum(itd, 0), 0, T - 1)]
        right = gr * s[np.clip(idx - np.maximum(itd, 0), 0, T - 1)]
        sf.write(str(out / "clips" / f"{cid}.flac"), np.stack([left, right], 1), sr, subtype="PCM_24")
        side = "left" if a0 > 0 else "right"
        rows.append({
            "schema_version": 1, "clip_id": cid, "source_id": f"toy{i:02d}", "split": split,
            "start_s": 0.0, "end_s": duration, "duration_s": duration,
            "video_path": f"clips/{cid}.mp4", "audio_path": f"clips/{cid}.flac", "fps": fps, "hfov_deg": 90.0,
            "width": W, "height": H, "sample_rate": sr, "num_frames": nf,
            "trajectory": [{"t": k / fps, "yaw": 0.0, "pitch": 0.0, "roll": 0.0} for k in range(nf)],
            "window_directions": [{"t": k / fps, "azimuth_deg": float(az_f[k]), "elevation_deg": 0.0,
                                   "diffuseness": 0.1, "energy_db": -20.0} for k in range(0, nf, 2)],
            "caption": f"a beeping disc on the {side}", "qa_status": "accepted",
        })
    pd.DataFrame(rows).to_parquet(out / "manifest.parquet")
    return out


def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """``$VISAUDIO_TINY_RUN_DIR/<name>`` when set (kept between sessions), else a fresh temp folder."""
    fixed = os.environ.get("VISAUDIO_TINY_RUN_DIR")
    return Path(fixed) / name if fixed else tmp_path_factory.mktemp(name) / "run"
