"""Synthetic 360° scenes: determinism, markers at the truth directions, FOA at the truth
directions, our probe reads them as 360° FOA, the scene options, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from biaudio.media import decode_audio, decode_foa, iter_frames, probe
from biaudio.spatial.angles import dir_to_vec, vec_to_dir
from biaudio.synth import load_truth, make_scene, make_scenes, truth_directions

SIZE = (480, 240)


def _equirect_px(az: float, el: float, W: int, H: int) -> tuple[int, int]:
    """conventions §2 (docs/ARCHITECTURE.md) (pixel centres at integers)."""
    x = (0.5 - az / 360.0) * W - 0.5
    y = (0.5 - el / 180.0) * H - 0.5
    return int(round(x)) % W, int(np.clip(round(y), 0, H - 1))


def _ang(az1, el1, az2, el2) -> np.ndarray:
    d = np.sum(dir_to_vec(az1, el1) * dir_to_vec(az2, el2), axis=-1)
    return np.rad2deg(np.arccos(np.clip(d, -1, 1)))


@pytest.fixture(scope="module")
def scene3(tmp_path_factory):
    d = tmp_path_factory.mktemp("s3")
    return make_scene(d, "three", seed=7, duration=2.0, size=SIZE, n_sources=3, static_source=(179.0, 5.0))


def test_determinism(tmp_path: Path) -> None:
    kw = dict(duration=1.0, size=SIZE, n_sources=2)
    a = make_scene(tmp_path / "a", "s", seed=11, **kw)
    b = make_scene(tmp_path / "b", "s", seed=11, **kw)
    c = make_scene(tmp_path / "c", "s", seed=12, **kw)
    video, truth = a  # the contract's two-field form
    assert (video, truth) == (a.video, a.truth_json)
    assert a.video.read_bytes() == b.video.read_bytes()
    assert a.truth_json.read_bytes() == b.truth_json.read_bytes()
    assert a.video.read_bytes() != c.video.read_bytes()
    assert load_truth(a.truth_json)["sources"] != load_truth(c.truth_json)["sources"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["s.json", "s.mp4"]  # no temp leftovers


def test_probe_reads_synth_as_360_foa(scene3) -> None:
    info = probe(scene3.video)
    assert info.projection == "equirectangular" and info.foa_hint == "ambix"
    assert info.sa3d["channel_ordering"] == "ACN" and info.sa3d["normalization"] == "SN3D"
    assert (info.audio_channels, info.sample_rate, info.video_codec, info.audio_codec) == (
        4,
        48000,
        "h264",
        "aac",
    )
    assert (info.width, info.height, info.n_frames) == (*SIZE, 60)
    assert abs(info.duration_s - 2.0) < 0.05


def test_truth_json_fields(scene3) -> None:
    tr = load_truth(scene3.truth_json)
    assert tr["fps"] == 30 and tr["sr"] == 48000 and tr["size"] == list(SIZE) and tr["seed"] == 7
    assert tr["duration_s"] == 2.0 and tr["cuts"] == [] and tr["foa_convention"] == "ambix"
    assert len(tr["sources"]) == 3 and len({s["kind"] for s in tr["sources"]}) == 3
    assert len({tuple(s["color"]) for s in tr["sources"]}) == 3
    for s in tr["sources"]:
        assert len(s["frames"]) == 60 and s["frames"][1]["t"] == pytest.approx(1 / 30, abs=1e-5)
        el = np.array([f["elevation_deg"] for f in s["frames"]])
        assert np.all(np.abs(el) <= 40)
    t, az, el = truth_directions(tr, 0)
    assert tr["sources"][0]["static"] and np.all(az == 179.0) and np.all(el == 5.0)


def test_markers_at_truth_directions(scene3) -> None:
    """The marker colour is found at each source's truth pixel, also across the ±180 seam."""
    tr = load_truth(scene3.truth_json)
    W, H = SIZE
    checked = 0
    for k, frame in enumerate(iter_frames(scene3.video)):
        if k not in (0, 29, 59):
            continue
        for s in tr["sources"]:
            f = s["frames"][k]
            x, y = _equirect_px(f["azimuth_deg"], f["elevation_deg"], W, H)
            got = frame[y, x].astype(int)
            assert np.abs(got - np.array(s["color"])).max() < 60, (k, s["name"], got, s["color"])
            # and 2 radii away in azimuth along the same row it is background, not marker
            far = _equirect_px(
                f["azimuth_deg"] + 2.5 * s["radius_deg"] / np.cos(np.deg2rad(f["elevation_deg"])),
                f["elevation_deg"],
                W,
                H,
            )
            assert np.abs(frame[far[1], far[0]].astype(int) - np.array(s["color"])).max() > 60
            checked += 1
        # the static source at az 179 straddles the seam: its colour is at both frame edges
        row = _equirect_px(179.0, 5.0, W, H)[1]
        red = np.array(tr["sources"][0]["color"])
        assert (
            np.abs(frame[row, 0].astype(int) - red).max() < 60
            and np.abs(frame[row, W - 1].astype(int) - red).max() < 60
        )
    assert checked == 9


def _intensity_dirs(x: np.ndarray, sr: int, win_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = int(win_s * sr)
    k = x.shape[1] // n
    b = x[:, : k * n].reshape(4, k, n)
    i = np.einsum("kn,ckn->kc", b[0], b[1:])  # (k, 3) in ACN order Y, Z, X
    az, el = vec_to_dir(np.stack([i[:, 2], i[:, 0], i[:, 1]], -1))
    return (np.arange(k) + 0.5) * win_s, az, el


def test_foa_direction_matches_truth_single_moving_source(tmp_path: Path) -> None:
    p = make_scene(tmp_path, "one", seed=3, duration=3.0, size=SIZE, n_sources=1, ambience=False)
    tr = load_truth(p.truth_json)
    x, sr = decode_foa(p.video)
    tc, az, el = _intensity_dirs(x, sr, 0.1)
    t, taz, tel = truth_directions(tr, 0)
    s = tr["sources"][0]
    paz = np.interp(tc, t, np.unwrap(np.deg2rad(taz)))
    err = _ang(az, el, np.rad2deg(paz), np.interp(tc, t, tel))
    loud = np.array([np.mean(x[0, int(a * sr) : int((a + 0.1) * sr)] ** 2) for a in tc - 0.05]) > 1e-6
    assert loud.sum() >= 10, s["kind"]
    assert np.median(err[loud]) < 2.0 and np.max(err[loud]) < 6.0, (s["kind"], err[loud])


@pytest.mark.parametrize("az,el", [(30.0, 10.0), (-120.0, -35.0)])
def test_foa_direction_static_source(tmp_path: Path, az: float, el: float) -> None:
    p = make_scene(
        tmp_path, "st", seed=5, duration=1.0, size=SIZE, n_sources=1, ambience=False, static_source=(az, el)
    )
    x, sr = decode_audio(p.video)
    i = (x[0] * x[1:]).mean(axis=1)
    eaz, eel = vec_to_dir(np.array([i[2], i[0], i[1]]))
    assert float(_ang(eaz, eel, az, el)) < 1.5


def test_options_silent_frozen_cut_ambience(tmp_path: Path) -> None:
    sil = make_scene(tmp_path, "sil", seed=1, duration=1.0, size=SIZE, n_sources=2, silent=True)
    x, _ = decode_audio(sil.video)
    assert np.max(np.abs(x)) < 1e-4 and load_truth(sil.truth_json)["silent"]

    fr = make_scene(tmp_path, "fr", seed=1, duration=1.0, size=SIZE, n_sources=2, frozen=True)
    frames = list(iter_frames(fr.video))
    assert len(frames) == 30 and max(np.abs(f.astype(int) - frames[0]).mean() for f in frames) < 0.1

    mv = make_scene(tmp_path, "mv", seed=1, duration=1.0, size=SIZE, n_sources=2, cuts_s=[0.5])
    frames = list(iter_frames(mv.video))
    diffs = [np.abs(frames[k + 1].astype(int) - frames[k]).mean() for k in range(len(frames) - 1)]
    assert load_truth(mv.truth_json)["cuts"] == [15]
    assert int(np.argmax(diffs)) == 14 and diffs[14] > 5 * np.median(diffs) and np.median(diffs) > 1.0

    amb = make_scene(
        tmp_path, "amb", seed=1, duration=1.0, size=SIZE, n_sources=1, silent=False, ambience=True
    )
    dry = make_scene(tmp_path, "dry", seed=1, duration=1.0, size=SIZE, n_sources=1, ambience=False)
    xa, _ = decode_audio(amb.video)
    xd, _ = decode_audio(dry.video)
    res = xa - xd
    assert 1e-4 < np.std(res[0]) < 0.01  # low-level diffuse noise (-40 dB re sources)
    c = np.corrcoef(res[:, 1000:-1000])
    assert np.max(np.abs(c - np.eye(4))) < 0.2  # decorrelated channels


def test_speech_wav_and_no_metadata(tmp_path: Path) -> None:
    import soundfile as sf

    t = np.arange(16000) / 16000
    sp = tmp_path / "speech.wav"
    sf.write(sp, 0.3 * np.sin(2 * np.pi * 250 * t) * (np.sin(2 * np.pi * 3 * t) > 0), 16000)
    p = make_scene(
        tmp_path,
        "sp",
        seed=2,
        duration=1.0,
        size=SIZE,
        n_sources=1,
        speech_wav=sp,
        spatial_metadata=False,
        keep_foa_wav=True,
        ambience=False,
    )
    tr = load_truth(p.truth_json)
    assert tr["sources"][0]["kind"] == "speech" and tr["speech_wav"] == "speech.wav"
    info = probe(p.video)
    assert info.projection is None and info.sa3d is None and info.foa_hint is None
    w, sr = decode_audio(p.foa_wav)
    spec = np.abs(np.fft.rfft(w[0]))
    assert abs(np.argmax(spec) * sr / w.shape[1] - 250) < 3


def test_make_scenes_and_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from biaudio.cli import app

    ps = make_scenes(tmp_path / "m", 2, seed=4, duration=0.5, size=SIZE)
    assert [p.video.name for p in ps] == ["scene_0000.mp4", "scene_0001.mp4"]
    assert load_truth(ps[0].truth_json)["seed"] != load_truth(ps[1].truth_json)["seed"]

    r = CliRunner().invoke(
        app,
        [
            "synth",
            str(tmp_path / "cli"),
            "--scenes",
            "2",
            "--seed",
            "4",
            "--duration",
            "0.5",
            "--size",
            "480x240",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    lines = [json.loads(ln) for ln in r.output.strip().splitlines()]
    assert len(lines) == 2 and Path(lines[0]["video"]).exists() and Path(lines[1]["truth"]).exists()
    # the CLI and the API give the same scene for the same (seed, index)
    assert Path(lines[0]["video"]).read_bytes() == ps[0].video.read_bytes()

    r = CliRunner().invoke(app, ["synth", str(tmp_path / "bad"), "--size", "481x240"])
    assert r.exit_code != 0
    r = CliRunner().invoke(
        app,
        [
            "synth",
            str(tmp_path / "st"),
            "--duration",
            "0.5",
            "--size",
            "480x240",
            "--sources",
            "1",
            "--static-source",
            "0,0",
            "--no-ambience",
        ],
    )
    assert r.exit_code == 0, r.output
    tr = load_truth(tmp_path / "st" / "scene_0000.json")
    assert tr["sources"][0]["static"] and tr["sources"][0]["frames"][0]["azimuth_deg"] == 0.0


@pytest.mark.parametrize("az,el", [(0.0, 0.0), (179.0, 20.0), (-180.0, -35.0), (60.0, 84.0), (-10.0, -88.0)])
def test_disc_is_round_on_the_sphere(az: float, el: float) -> None:
    """Every filled pixel lies within the angular radius and every pixel well inside is filled,
    across the seam and at the poles (checked on the raw canvas, no codec involved)."""
    from biaudio.synth import _Canvas, random_scene_spec

    spec = random_scene_spec("d", 0, size=(360, 180), n_sources=1)
    cv = _Canvas(spec)
    img = np.zeros((180, 360, 3), np.uint8)
    r = 8.0
    cv.disc(img, az, el, r, (255, 0, 0))
    A, E = np.meshgrid(cv.az_cols, cv.el_rows)
    dist = _ang(A, E, az, el)
    filled = img[..., 0] == 255
    assert filled.sum() > 0
    assert dist[filled].max() <= r + 1e-6
    assert filled[dist < r - 1e-6].all()


def test_sources_never_overlap_and_stay_in_elevation_band() -> None:
    """Markers of different sources never touch (so a colour at a truth pixel is unambiguous)."""
    from biaudio.synth import random_scene_spec

    t = np.arange(0, 10, 1 / 30)
    for seed in range(60):
        for kw in (
            {},
            {"n_sources": 3},
            {"n_sources": 3, "static_source": (float(seed * 7 % 360 - 180), 0.0)},
        ):
            spec = random_scene_spec("x", seed, **kw)
            dirs = [s.direction(t) for s in spec.sources]
            for _, el in dirs:
                assert np.all(np.abs(el) <= 40.0)
            for i in range(len(dirs)):
                for j in range(i + 1, len(dirs)):
                    gap = _ang(dirs[i][0], dirs[i][1], dirs[j][0], dirs[j][1]).min()
                    need = spec.sources[i].radius_deg + spec.sources[j].radius_deg
                    assert gap > need + 2, (seed, kw, i, j, gap)
