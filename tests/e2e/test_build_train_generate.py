"""End to end: demo manifest -> tiny training (session fixture `tiny_run`) -> `visaudio generate` on
held-out test clips -> stereo files of the right length whose L/R level follows the side of the
synthetic source (azimuth relative to the camera, from the manifest's window directions and the
camera trajectory) better than chance."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from biaudio.spatial.angles import world_to_camera_dir
from visaudio.eval.metrics import block_ild_db

torch.set_num_threads(1)


def camera_azimuth(row: pd.Series, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source azimuth relative to the camera (deg, +left) at ``times`` and a reliability mask
    (direct-sound dominated windows: diffuseness < 0.5)."""
    wd = row["window_directions"]
    wt = np.array([w["t"] for w in wd])
    az = np.rad2deg(np.unwrap(np.deg2rad([w["azimuth_deg"] for w in wd])))
    el = np.array([w["elevation_deg"] for w in wd])
    dif = np.array([w["diffuseness"] for w in wd])
    tr = row["trajectory"]
    tt = np.array([p["t"] for p in tr])
    yaw = np.interp(times, tt, np.rad2deg(np.unwrap(np.deg2rad([p["yaw"] for p in tr]))))
    pitch = np.interp(times, tt, [p["pitch"] for p in tr])
    roll = np.interp(times, tt, [p["roll"] for p in tr])
    az_c, _ = world_to_camera_dir(np.interp(times, wt, az), np.interp(times, wt, el), yaw, pitch, roll)
    return az_c, np.interp(times, wt, dif) < 0.5


def side_follow_stats(audio: np.ndarray, sr: int, row: pd.Series, frame_s: float = 0.1) -> dict[str, float]:
    ild, energy = block_ild_db(audio, sr, frame_s)
    times = (np.arange(len(ild)) + 0.5) * frame_s
    az, ok = camera_azimuth(row, times)
    lateral = np.sin(np.deg2rad(az))
    m = ok & (np.abs(lateral) > 0.25) & (energy > energy.max() - 30)
    return {"ild": ild[m], "lateral": lateral[m]}


def test_train_generate_follows_source_side(tiny_run: Path, demo_build: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from visaudio.cli import app

    df = pd.read_parquet(demo_build / "manifest.parquet")
    test = df[df.split == "test"].reset_index(drop=True)
    assert len(test) > 0
    gen_ild, ref_ild, lat = [], [], []
    mir_ild, mir_lat = [], []
    secs = []
    from visaudio.data import read_video_frames
    from visaudio.generate import Synthesizer, video_duration

    syn = Synthesizer.from_run(tiny_run)
    for _, row in test.iterrows():
        video = demo_build / row["video_path"]
        out = tmp_path / f"{row['clip_id']}.mp4"
        t0 = time.time()
        r = CliRunner().invoke(app, ["generate", str(video), "--ckpt", str(tiny_run), "--out", str(out),
                                     "--steps", "25", "--cfg", "4.5", "--seed", "0"])
        secs.append(time.time() - t0)
        assert r.exit_code == 0, r.output
        audio, sr = sf.read(str(out.with_suffix(".flac")), always_2d=True)
        audio = audio.T
        assert audio.shape[0] == 2 and sr == 16000
        assert abs(audio.shape[1] - row["duration_s"] * sr) <= sr / row["fps"] + 1  # right length (<= 1 frame)
        pr = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,channels",
                             "-of", "json", str(out)], capture_output=True, text=True)
        streams = json.loads(pr.stdout)["streams"]
        assert {s["codec_type"] for s in streams} == {"video", "audio"}
        assert [s["channels"] for s in streams if s["codec_type"] == "audio"] == [2]
        g = side_follow_stats(audio, sr, row)
        ref, rsr = sf.read(str(demo_build / row["audio_path"]), always_2d=True)
        rf = side_follow_stats(ref.T, rsr, row)
        k = min(len(g["ild"]), len(rf["ild"]))
        gen_ild.append(g["ild"][:k])
        ref_ild.append(rf["ild"][:k])
        lat.append(g["lateral"][:k])
        # the same clip with the picture mirrored: the source is now on the other side, so a model
        # that reads the picture (not a bias towards the split's majority side) flips its ILD
        d = syn.config.data
        total = video_duration(video)
        frames = read_video_frames(video, d.sync_fps, d.width, d.height, 0.0, total)[:, :, ::-1]
        ma, msr = syn._generate_sync_frames(np.ascontiguousarray(frames), total, None, 25, 4.5, 0)
        mg = side_follow_stats(ma, msr, row)
        mir_ild.append(mg["ild"])
        mir_lat.append(-mg["lateral"])
    gi, ri, la = np.concatenate(gen_ild), np.concatenate(ref_ild), np.concatenate(lat)
    assert len(gi) >= 20, "too few lateral, direct-sound frames in the demo test split"
    agree = float((np.sign(gi) == np.sign(la)).mean())
    corr = float(np.corrcoef(gi, la)[0, 1])
    ref_agree = float((np.sign(ri) == np.sign(la)).mean())
    ref_corr = float(np.corrcoef(ri, la)[0, 1])
    print(f"\n[e2e] {len(test)} held-out clips, {len(gi)} lateral frames: generated ILD sign agrees with the "
          f"source side {100 * agree:.1f}% (chance 50%), corr(ILD, sin az_cam) = {corr:.3f}; "
          f"reference audio: {100 * ref_agree:.1f}%, corr {ref_corr:.3f}; "
          f"generation {np.mean(secs):.2f} s per {test.duration_s.mean():.1f}-s clip (25 steps, cfg 4.5, CPU)")
    # The measurement itself must work: the reference binaural audio follows the source side.
    assert ref_agree > 0.75 and ref_corr > 0.25, (ref_agree, ref_corr)
    # "Better than chance" for the model: ILD sign agreement above 50 % by a one-sided binomial
    # test (frames are correlated, so p is optimistic; it still rules out a coin toss) AND a
    # positive correlation with the source's lateral position.
    from scipy.stats import binomtest

    p_sign = binomtest(int((np.sign(gi) == np.sign(la)).sum()), len(gi), 0.5, alternative="greater").pvalue
    print(f"[e2e] one-sided binomial p for sign agreement > 50 %: {p_sign:.3g}")
    # Issue 6: the tiny config learns this in the fixture's 300 steps since the side-dependent
    # skip gain, the lateral spacetime pooling and the side-weighted loss (visaudio/configs/
    # tiny.yaml). H100 sweep at this exact budget (benchmarks/gpu_side_sweep.py): 12/12 seeds
    # pass, sign agreement 0.84-0.95, corr 0.30-0.55, p <= 2e-20; mirrored video flips the ILD.
    assert p_sign < 0.01 and corr > 0.0, (
        f"side not learnt: sign agreement {100 * agree:.1f}% (p={p_sign:.2g}), corr {corr:.3f}")
    mi, ml = np.concatenate(mir_ild), np.concatenate(mir_lat)
    m_agree = float((np.sign(mi) == np.sign(ml)).mean())
    m_corr = float(np.corrcoef(mi, ml)[0, 1])
    p_mir = binomtest(int((np.sign(mi) == np.sign(ml)).sum()), len(mi), 0.5, alternative="greater").pvalue
    print(f"[e2e] mirrored video: ILD sign agrees with the mirrored side {100 * m_agree:.1f}% (p={p_mir:.2g}), "
          f"corr {m_corr:.3f}")
    assert p_mir < 0.01 and m_corr > 0.0, "the ILD does not follow the picture when it is mirrored (a side bias?)"


def test_generate_rejects_too_short_video(tiny_run: Path, tmp_path: Path):
    from tests._support.model import _write_mp4
    from visaudio.data import VideoTooShortError
    from visaudio.generate import Synthesizer

    syn = Synthesizer.from_run(tiny_run)
    v = tmp_path / "short.mp4"
    _write_mp4(v, np.zeros((8, 48, 64, 3), np.uint8), 16.0)  # 0.5 s < 2-s window
    with pytest.raises(VideoTooShortError, match="shorter than the model window"):
        syn.generate(v)
    with pytest.raises(VideoTooShortError):
        syn.generate_frames(np.zeros((4, 48, 64, 3), np.uint8), fps=8.0)
    # any size / frame rate: resampled to the model's
    a, sr = syn.generate_frames(np.zeros((60, 90, 120, 3), np.uint8), fps=25.0, steps=2, cfg=1.0)
    assert a.shape == (2, int(round(60 / 25.0 * sr))) and a.dtype == np.float32
