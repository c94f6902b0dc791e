"""Render stage: marker side, louder ear and preview agree with the camera-frame direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biaudio.spatial.angles import world_to_camera_dir
from biaudio.stages.render import RenderConfig, output_fps, render_clip, view_outline
from biaudio.stages.trajectory import Trajectory, TrajectoryConfig, make_trajectory
from tests._support.scenes import small_scene

SRC_AZ, SRC_EL = 30.0, 10.0
CFG = RenderConfig(width=192, height=108, preview_width=320)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from biaudio.media.audio import decode_audio
    from biaudio.media.probe import probe
    from biaudio.synth import load_truth

    d = tmp_path_factory.mktemp("scene")
    paths = small_scene(d, "s30", seed=3, duration=2.0, ambience=False, static_source=(SRC_AZ, SRC_EL))
    foa, sr = decode_audio(paths.video, sr=48000)
    truth = load_truth(paths.truth_json)
    return paths.video, probe(paths.video), foa, sr, np.array(truth["sources"][0]["color"], float)


def _static(yaw: float, n: int, fps: float) -> Trajectory:
    t = np.arange(n) / fps
    return Trajectory(t, np.full(n, yaw), np.zeros(n), np.zeros(n), "static")


def _marker_x(frame: np.ndarray, color: np.ndarray) -> float | None:
    m = np.linalg.norm(frame.astype(float) - color, axis=2) < 80
    return None if m.sum() < 5 else float(np.nonzero(m)[1].mean())


def _frame_ild(binaural: np.ndarray, sr: int, fps: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    hop = int(round(sr / fps))
    e = np.array([(binaural[:, k * hop:(k + 1) * hop].astype(float) ** 2).sum(1) for k in range(n)])  # (n, 2)
    ild = 10 * np.log10((e[:, 0] + 1e-20) / (e[:, 1] + 1e-20))
    tot = e.sum(1)
    loud = tot > tot.max() * 10 ** (-30 / 10)
    return ild, loud


@pytest.mark.parametrize("yaw,side", [(0.0, "left"), (60.0, "right")])
def test_static_camera_marker_and_ear_side(scene, tmp_path: Path, yaw, side):
    from biaudio.media.video import iter_frames

    video, info, foa, sr, color = scene
    fps = output_fps(info.fps, CFG)
    n = int(round(2.0 * fps))
    r = render_clip(video, 0.0, 2.0, foa, sr, _static(yaw, n, fps), CFG, tmp_path, "c", info)
    assert r.video_path.exists() and r.audio_path.exists() and r.preview_path.exists()
    frames = list(iter_frames(r.video_path))
    assert len(frames) == n == r.num_frames and frames[0].shape == (108, 192, 3)
    xs = [_marker_x(f, color) for f in frames]
    assert all(x is not None for x in xs)
    centre = 192 / 2
    if side == "left":
        assert all(x < centre - 10 for x in xs)
        assert np.mean(r.binaural[0] ** 2) > 2 * np.mean(r.binaural[1] ** 2)
    else:
        assert all(x > centre + 10 for x in xs)
        assert np.mean(r.binaural[1] ** 2) > 2 * np.mean(r.binaural[0] ** 2)
    # the mp4 carries the binaural soundtrack, and the flac the same signal
    import soundfile as sf

    flac, fsr = sf.read(r.audio_path, always_2d=True)
    assert fsr == 48000 and flac.shape[1] == 2
    assert np.allclose(flac.T, r.binaural, atol=1e-4)
    import json
    import subprocess

    pr = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                         "stream=codec_type,codec_name,channels,sample_rate,duration", "-of", "json", str(r.video_path)],
                        capture_output=True, text=True, check=True)
    st = {s["codec_type"]: s for s in json.loads(pr.stdout)["streams"]}
    assert st["video"]["codec_name"] == "h264"
    assert (st["audio"]["codec_name"], st["audio"]["channels"], st["audio"]["sample_rate"]) == ("aac", 2, "48000")
    assert abs(float(st["audio"]["duration"]) - 2.0) < 0.05 and abs(float(st["video"]["duration"]) - 2.0) < 1.5 / fps
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(r.video_path), "-map", "0:a:0", "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    aac = np.frombuffer(dec, np.float32).reshape(-1, 2).T
    louder = 0 if side == "left" else 1
    assert np.mean(aac[louder] ** 2) > 2 * np.mean(aac[1 - louder] ** 2)  # the AAC track keeps the ear side


def test_moving_camera_marker_and_ild_follow_camera_frame_direction(scene, tmp_path: Path):
    """A paper-mode camera sweeping fast: per frame, the marker side and the louder ear match the
    side predicted by the source direction in camera coordinates (>= 90 % of loud frames)."""
    from biaudio.media.video import iter_frames

    video, info, foa, sr, color = scene
    fps = output_fps(info.fps, CFG)
    tcfg = TrajectoryConfig(yaw_offset_deg=(-20, -20), pitch_offset_deg=(0, 0), yaw_drift_deg_per_s=60,
                            n_breakpoints=(0, 0))
    traj = make_trajectory("sweep_0", 2.0, fps, (SRC_AZ, SRC_EL), None, tcfg, 5)
    assert np.ptp(traj.yaw) > 20  # really moves
    r = render_clip(video, 0.0, 2.0, foa, sr, traj, CFG, tmp_path, "m", info)
    az_cam, _ = world_to_camera_dir(SRC_AZ, SRC_EL, traj.yaw, traj.pitch, traj.roll)
    lateral = (np.abs(az_cam) > 8) & (np.abs(az_cam) < 172)
    ild, loud = _frame_ild(r.binaural, 48000, fps, len(traj))
    sel = lateral & loud
    assert sel.sum() >= 5
    assert np.mean(np.sign(ild[sel]) == np.sign(az_cam[sel])) >= 0.9
    frames = list(iter_frames(r.video_path))
    agree = total = 0
    for k, f in enumerate(frames):
        x = _marker_x(f, color)
        if x is None or not lateral[k] or abs(az_cam[k]) < 8:
            continue
        total += 1
        agree += (x < 96) == (az_cam[k] > 0)  # az > 0 (left) -> left half of the image
    assert total >= 5 and agree / total >= 0.9


def test_preview_draws_path_where_the_camera_looks(scene, tmp_path: Path, monkeypatch):
    import cv2

    video, info, foa, sr, _ = scene
    fps = output_fps(info.fps, CFG)
    n = int(round(2.0 * fps))
    t = np.arange(n) / fps
    traj = Trajectory(t, np.linspace(-90.0, -60.0, n), np.zeros(n), np.zeros(n), "paper")
    import biaudio.stages.render as render_mod
    from biaudio.spatial.projection import Projector

    # only the viewed rectangle is decoded; the whole-frame preview comes from the same decode
    assert Projector(CFG.width, CFG.height, CFG.hfov_deg, info.width, info.height).source_crop(
        traj.yaw, traj.pitch, traj.roll) is not None
    monkeypatch.setattr(render_mod, "_last_full_thumb", lambda *a, **k: pytest.fail("preview decoded separately"))
    r = render_clip(video, 0.0, 2.0, foa, sr, traj, CFG, tmp_path, "p", info,
                    directions=(np.full(5, SRC_AZ), np.full(5, SRC_EL)), clip_dir=(SRC_AZ, SRC_EL))
    img = cv2.cvtColor(cv2.imread(str(r.preview_path)), cv2.COLOR_BGR2RGB).astype(float)
    assert img.shape[1] == 320 and img.shape[0] > 160  # thumbnail + legend strip

    def near(x: float, y: float, rgb) -> bool:
        patch = img[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4]
        return bool((np.linalg.norm(patch - rgb, axis=2) < 90).any())

    # start dot (green) at yaw -90, the path (yellow) at yaw -75, clip direction (red cross) at az 30
    assert near((0.5 + 90 / 360) * 320, 80, [0, 230, 0])
    assert near((0.5 + 75 / 360) * 320, 80, [255, 220, 0])
    assert not near((0.5 + 75 / 360) * 320, 40, [255, 220, 0])
    assert near((0.5 - SRC_AZ / 360) * 320, (0.5 - SRC_EL / 180) * 160, [255, 60, 60])
    # the start view rectangle spans ±45° of azimuth around yaw -90
    v = view_outline(-90.0, 0.0, 0.0, CFG)
    az = np.degrees(np.arctan2(v[:, 1], v[:, 0]))
    assert az.min() == pytest.approx(-135, abs=0.5) and az.max() == pytest.approx(-45, abs=0.5)


def test_failed_render_leaves_no_files(scene, tmp_path: Path):
    from biaudio.errors import BiaudioError

    video, info, foa, sr, _ = scene
    bad = _static(0.0, 3, 10.0)  # wrong number of poses
    with pytest.raises(BiaudioError):
        render_clip(video, 0.0, 2.0, foa, sr, bad, CFG, tmp_path, "x", info)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.testdata
def test_real_sphere360_camera_turned_away_right_ear_louder(testdata_dir: Path, tmp_path: Path):
    """JUN314mwb90_49: flute player at the image centre. Camera yawed +60° (looking left): the player
    is on the camera's right, so the right ear is louder on average; the preview is written."""
    from biaudio.media.audio import decode_audio
    from biaudio.media.probe import probe
    from biaudio.spatial.direction import DirectionConfig, estimate

    src = testdata_dir / "sphere360-erp-foa" / "JUN314mwb90_49.webm"
    info = probe(src)
    start, dur = 2.0, 3.0
    foa, sr = decode_audio(src, sr=48000)
    foa = foa[:, int(start * sr):int((start + dur) * sr)]
    d = estimate(foa, sr, DirectionConfig())
    assert abs(d.clip_azimuth_deg) < 25  # performer near the front
    cfg = RenderConfig(width=320, height=180, preview_width=480)
    fps = output_fps(info.fps, cfg)
    tcfg = TrajectoryConfig(mode="static", yaw_offset_deg=(60, 60), pitch_offset_deg=(0, 0))
    traj = make_trajectory("JUN314mwb90_49_2000", dur, fps, (0.0, 0.0), None, tcfg)
    assert traj.yaw[0] == pytest.approx(60.0)
    r = render_clip(src, start, dur, foa, sr, traj, cfg, tmp_path, "JUN314mwb90_49_2000", info,
                    directions=(d.azimuth_deg, d.elevation_deg), clip_dir=(d.clip_azimuth_deg, d.clip_elevation_deg))
    el, er = (float(np.mean(r.binaural[i].astype(float) ** 2)) for i in (0, 1))
    assert er > el * 1.2, (el, er)
    assert r.preview_path.exists() and r.preview_path.stat().st_size > 5000
    assert r.num_frames == len(traj) and r.fps == pytest.approx(min(info.fps, 30.0))
