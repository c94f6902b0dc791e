"""`biaudio doa` and `biaudio render` end to end on small generated files and real test data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from biaudio.cli import app
from biaudio.spatial import direction as D
from biaudio.spatial import foa

SR = 48000
runner = CliRunner()


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _fuma_wav(tmp_path, az, el, dur=1.0):
    s = np.random.default_rng(0).standard_normal(int(SR * dur))
    x = foa.from_ambix(foa.encode(s, az, el) * 0.2, "fuma")
    p = tmp_path / "fuma.wav"
    sf.write(p, x.T.astype(np.float32), SR, subtype="FLOAT")
    return p


def test_doa_json_fuma_file(tmp_path):
    p = _fuma_wav(tmp_path, -120, 25)
    r = runner.invoke(app, ["doa", str(p), "--convention", "fuma", "--json", "--window", "0.25"])
    assert r.exit_code == 0, r.output
    lines = _json_lines(r.stdout)
    assert len(lines) == 5 and lines[-1]["clip"] is True
    assert set(lines[0]) == {"t", "azimuth_deg", "elevation_deg", "diffuseness"}
    assert D.angular_error_deg(lines[-1]["azimuth_deg"], lines[-1]["elevation_deg"], -120, 25) < 1
    assert all(D.angular_error_deg(w["azimuth_deg"], w["elevation_deg"], -120, 25) < 1 for w in lines[:-1])
    # read as ambiX (wrong convention) the same file gives another direction: the flag matters
    r2 = runner.invoke(app, ["doa", str(p), "--convention", "ambix", "--json"])
    last = _json_lines(r2.stdout)[-1]
    assert D.angular_error_deg(last["azimuth_deg"], last["elevation_deg"], -120, 25) > 10
    r3 = runner.invoke(app, ["doa", str(p), "--convention", "fuma"])  # rich table
    assert r3.exit_code == 0 and "clip direction" in r3.stdout


def test_doa_tau_clip(testdata_dir):
    r = runner.invoke(app, ["doa", str(testdata_dir / "tau2019-seld-foa" / "split1_ir0_ov1_1.wav"), "--json", "--window", "0.1"])
    assert r.exit_code == 0, r.output
    last = _json_lines(r.stdout)[-1]
    assert D.angular_error_deg(last["azimuth_deg"], last["elevation_deg"], -10, -10) < 15


def test_doa_bad_input(tmp_path):
    st = tmp_path / "stereo.wav"
    sf.write(st, np.zeros((1000, 2), np.float32), SR)
    r = runner.invoke(app, ["doa", str(st), "--json"])
    assert r.exit_code == 1
    assert _json_lines(r.stdout)[-1]["error"] == "not_4_channels"
    p = _fuma_wav(tmp_path, 0, 0, dur=0.2)
    r = runner.invoke(app, ["doa", str(p), "--convention", "quad", "--json"])
    assert r.exit_code == 1 and _json_lines(r.stdout)[-1]["error"] == "unknown_convention"
    r = runner.invoke(app, ["doa", str(tmp_path / "missing.wav"), "--json"])
    assert r.exit_code == 1


@pytest.fixture(scope="module")
def tiny_360(tmp_path_factory):
    """2 s, 256x128 equirect with a red disc at world (az 30, el 10) and FOA from the same direction."""
    import cv2

    from biaudio.media import VideoWriter, mux_foa
    from biaudio.spatial.projection import equirect_pixel

    d = tmp_path_factory.mktemp("tiny360")
    W, H, fps = 256, 128, 10
    eq = np.full((H, W, 3), 40, np.uint8)
    x, y = equirect_pixel(30, 10, W, H)
    cv2.circle(eq, (int(round(float(x))), int(round(float(y)))), 5, (255, 0, 0), -1)
    vid = d / "v.mp4"
    with VideoWriter(vid, W, H, fps) as w:
        for _ in range(2 * fps):
            w.write(eq)
    s = np.random.default_rng(1).standard_normal(2 * SR) * 0.1
    out = d / "scene.mp4"
    mux_foa(vid, foa.encode(s, 30, 10).astype(np.float32), SR, out)
    return out


@pytest.mark.parametrize("yaw, side", [(0, "left"), (60, "right")])
def test_render_marker_and_ear_agree(tiny_360, tmp_path, yaw, side):
    from biaudio.media import decode_audio, iter_frames, probe

    out = tmp_path / "r.mp4"
    r = runner.invoke(app, ["render", str(tiny_360), "--out", str(out), "--yaw", str(yaw), "--size", "160x90",
                            "--decoder", "cube", "--json"])
    assert r.exit_code == 0, r.output
    summary = _json_lines(r.stdout)[-1]
    assert summary["frames"] == 20
    info = probe(out)
    assert (info.width, info.height, info.audio_channels) == (160, 90, 2)
    b, _ = decode_audio(out)
    ild = 10 * np.log10(np.sum(b[0] ** 2) / np.sum(b[1] ** 2))
    frame = next(iter_frames(out))
    m = (frame[..., 0].astype(int) > 150) & (frame[..., 1] < 100)
    xs = np.nonzero(m)[1]
    assert xs.size > 0
    if side == "left":
        assert xs.mean() < 80 and ild > 2
    else:
        assert xs.mean() > 80 and ild < -2


def test_render_trajectory_and_bad_input(tiny_360, tmp_path):
    traj = tmp_path / "traj.json"
    traj.write_text(json.dumps([{"t": 0, "yaw": 170, "pitch": 0, "roll": 0}, {"t": 2, "yaw": -170, "pitch": 10, "roll": 0}]))
    out = tmp_path / "t.mp4"
    r = runner.invoke(app, ["render", str(tiny_360), "--out", str(out), "--trajectory", str(traj), "--size", "64x36", "--json"])
    assert r.exit_code == 0, r.output
    from biaudio.cli.core import load_trajectory, sample_trajectory

    y, p, _ = sample_trajectory(load_trajectory(traj), np.array([0.0, 1.0, 2.0]))
    assert np.allclose(np.abs(y), [170, 180, 170]) and np.allclose(p, [0, 5, 10])  # through ±180, not through 0
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"t\": 1}, {\"t\": 0}]")
    r = runner.invoke(app, ["render", str(tiny_360), "--out", str(tmp_path / "x.mp4"), "--trajectory", str(bad), "--json"])
    assert r.exit_code == 1 and _json_lines(r.stdout)[-1]["error"] == "bad_trajectory"
    wav = _fuma_wav(tmp_path, 0, 0, dur=0.2)
    r = runner.invoke(app, ["render", str(wav), "--out", str(tmp_path / "y.mp4"), "--json"])
    assert r.exit_code == 1 and _json_lines(r.stdout)[-1]["error"] == "no_video"


def test_render_refuses_non_equirect(tmp_path):
    from biaudio.media import VideoWriter, mux_foa

    vid = tmp_path / "flat.mp4"
    with VideoWriter(vid, 64, 48, 10) as w:  # 4:3, no spherical metadata
        for _ in range(5):
            w.write(np.zeros((48, 64, 3), np.uint8))
    src = tmp_path / "flat_foa.mp4"
    mux_foa(vid, foa.encode(np.ones(SR // 2) * 0.1, 0, 0).astype(np.float32), SR, src, spatial_metadata=False)
    r = runner.invoke(app, ["render", str(src), "--out", str(tmp_path / "o.mp4"), "--json"])
    assert r.exit_code == 1 and _json_lines(r.stdout)[-1]["error"] == "not_equirect"
