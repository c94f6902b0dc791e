"""Media I/O: channel order through every decode path, probe on real 360° clips, bad input,
SA3D/sv3d injection, streaming frames, writers. Conventions §6-§7.4 in docs/ARCHITECTURE.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from biaudio.errors import MediaError
from biaudio.media import (
    VideoWriter,
    decode_audio,
    decode_foa,
    inject_spatial_metadata,
    iter_frames,
    mux,
    mux_foa,
    parse_sa3d,
    parse_spherical_video,
    probe,
    write_audio,
)
from biaudio.media.audio import build_decode_cmd

SR = 48000
TONES = (300.0, 700.0, 1500.0, 3100.0)  # one per channel, no harmonics of each other
REPO = Path(__file__).resolve().parents[3]


def _tones(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([0.2 * np.sin(2 * np.pi * f * t) for f in TONES]).astype(np.float32)


def _dominant_tone(y: np.ndarray) -> list[tuple[int, float, float]]:
    """Per output channel: (index of the loudest tone, its margin over the next in dB, its level ratio)."""
    seg = y[:, 4800 : 4800 + SR // 2]
    spec = np.abs(np.fft.rfft(seg * np.hanning(seg.shape[1]), axis=1))
    freqs = np.fft.rfftfreq(seg.shape[1], 1 / SR)
    ref = np.abs(
        np.fft.rfft(0.2 * np.sin(2 * np.pi * 300 * np.arange(seg.shape[1]) / SR) * np.hanning(seg.shape[1]))
    ).max()
    out = []
    for c in range(y.shape[0]):
        p = np.array(
            [
                spec[c, np.argmin(np.abs(freqs - f)) - 2 : np.argmin(np.abs(freqs - f)) + 3].max()
                for f in TONES
            ]
        )
        k = int(np.argmax(p))
        out.append((k, 20 * np.log10((p[k] + 1e-12) / (np.sort(p)[-2] + 1e-12)), p[k] / ref))
    return out


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


ENCODINGS = {
    "wav": ("wav", None),
    "flac": ("flac", ["-c:a", "flac"]),
    "ogg_vorbis": ("ogg", ["-c:a", "libvorbis", "-q:a", "6"]),
    "opus_ogg_family2": ("ogg", ["-c:a", "libopus", "-mapping_family", "2", "-b:a", "256k"]),
    "opus_webm_family2": ("webm", ["-c:a", "libopus", "-mapping_family", "2", "-b:a", "256k"]),
    "aac_mp4": ("mp4", ["-c:a", "aac", "-b:a", "512k"]),
}


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tones")
    return write_audio(d / "tones.wav", _tones(), SR)


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_tone_per_channel_round_trip(name: str, tone_wav: Path, tmp_path: Path) -> None:
    ext, args = ENCODINGS[name]
    if args is None:
        path = tone_wav
    else:
        path = tmp_path / f"tones.{ext}"
        _ffmpeg("-i", str(tone_wav), *args, str(path))
    y, sr = decode_audio(path)
    assert sr == SR and y.shape[0] == 4 and y.dtype == np.float32
    assert abs(y.shape[1] - SR) < 2048
    for c, (k, margin_db, level) in enumerate(_dominant_tone(y)):
        assert k == c, f"{name}: channel {c} carries tone {k}"
        assert margin_db > 40, f"{name}: channel {c} cross-talk only {margin_db:.1f} dB down"
        assert 0.93 < level < 1.07, f"{name}: channel {c} level ratio {level:.3f}"


def test_tone_per_channel_through_synth_container(tone_wav: Path, tmp_path: Path) -> None:
    """The synth container (H.264 + AAC 4.0 + SA3D/sv3d, made by mux_foa) keeps order and level."""
    v = tmp_path / "v.mp4"
    with VideoWriter(v, 64, 32, 10) as w:
        for _ in range(10):
            w.write(np.full((32, 64, 3), 128, np.uint8))
    out = mux_foa(v, _tones(), SR, tmp_path / "foa.mp4")
    info = probe(out)
    assert (info.audio_codec, info.audio_channels, info.foa_hint) == ("aac", 4, "ambix")
    y, _ = decode_foa(out)
    for c, (k, margin_db, level) in enumerate(_dominant_tone(y)):
        assert k == c and margin_db > 40 and 0.93 < level < 1.07


def test_opus_family2_is_ambisonic_layout(tone_wav: Path, tmp_path: Path) -> None:
    p = tmp_path / "t.webm"
    _ffmpeg("-i", str(tone_wav), "-c:a", "libopus", "-mapping_family", "2", "-b:a", "256k", str(p))
    info = probe(p)
    assert info.audio_layout == "ambisonic 1" and info.foa_hint == "ambix"


def test_decode_command_has_no_layout_options() -> None:
    cmd = build_decode_cmd("x.webm", sr=16000)
    joined = " ".join(cmd)
    for opt in ("-ac", "-channel_layout", "-ch_layout", "-af", "-filter:a", "pan=", "-guess_layout_max"):
        assert opt not in cmd and opt not in joined.split(), f"decode uses {opt}"
    assert "-ar" in cmd and "0:a:0" in cmd


def test_no_ac4_anywhere_in_sources() -> None:
    """`-ac 4` silently remixes quad/4.0 input: it must never appear in the project's code."""
    # list form ("-ac", "4") even split over lines by a formatter; command-string form (-ac 4, but
    # not inside ``docs``); ffmpeg-python's ac=4
    pat = re.compile(
        r"""(['"]-ac['"]\s*,\s*(['"]4['"]|4\b|str\(4\)))|((?<!`)-ac\s+4\b(?!`))|(\bac\s*=\s*4\b)"""
    )
    hits = []
    for root in ("biaudio", "visaudio", "benchmarks", "scripts"):
        for f in (REPO / root).rglob("*.py"):
            text = f.read_text(errors="replace")
            for m in pat.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{f.relative_to(REPO)}:{line}: {m.group(0)!r}")
    assert not hits, "\n".join(hits)
    assert pat.search('cmd = [\n    "-ac",\n    "4",\n]') and pat.search("ffmpeg -i in.ogg -ac 4 out.mp4")
    assert not pat.search('"-ac", "2"') and not pat.search("``-ac 4`` remixes")


def test_ac4_really_remixes_quad(tone_wav: Path, tmp_path: Path) -> None:
    """Why the rule exists: the trap is real in this ffmpeg (quad input + -ac 4 + AAC 4.0)."""
    quad = tmp_path / "quad.ogg"
    _ffmpeg("-i", str(tone_wav), "-c:a", "libvorbis", str(quad))
    assert probe(quad).audio_layout == "quad"
    bad = tmp_path / "bad.mp4"
    _ffmpeg("-i", str(quad), "-ac", "4", "-c:a", "aac", "-b:a", "512k", str(bad))
    y, _ = decode_audio(bad)
    res = _dominant_tone(y)
    assert any(k != c or m < 40 for c, (k, m, _) in enumerate(res)), res


# ------------------------------------------------------------------------------- probe


SPHERE = {
    "0B7ds6NmVBQl_20": (1920, 960, True),
    "JUN314mwb90_49": (1920, 1080, True),
    "Wc_gzO9i38k_15": (1920, 1080, True),
    "pC2WmY6bkB4_251": (1920, 1080, True),
    "tAiVUt5vE34l_30": (1920, 960, False),
}


@pytest.mark.parametrize("name", list(SPHERE))
def test_probe_sphere360(name: str, testdata_dir: Path) -> None:
    w, h, has_meta = SPHERE[name]
    info = probe(testdata_dir / "sphere360-erp-foa" / f"{name}.webm")
    assert (info.width, info.height) == (w, h)
    assert info.audio_channels == 4 and info.audio_codec == "vorbis" and info.sample_rate == 48000
    assert info.audio_layout == "quad" and info.foa_hint is None  # no positive ambiX evidence in WebM/Vorbis
    assert 29.0 < info.fps < 30.5 and 9.9 < info.duration_s < 10.2
    assert 290 <= info.n_frames <= 305
    if has_meta:
        assert info.projection == "equirectangular" and info.projection_pose == (0.0, 0.0, 0.0)
    else:
        assert info.projection is None and info.is_equirect_hint  # 2:1 only: a hint
    assert info.stereo_mode == "2D"
    assert info.is_equirect_hint


def test_probe_chapman_aac_no_sa3d(testdata_dir: Path) -> None:
    info = probe(testdata_dir / "chapman-positions-foa" / "4ch_B_FuMaNorm_FuMaOrd_speech.mp4")
    assert info.audio_codec == "aac" and info.audio_channels == 4 and not info.has_video
    assert info.sa3d is None and info.foa_hint is None


# ------------------------------------------------------------------------------- bad input


def _small_av(tmp_path: Path, name: str = "av.mp4", frames: int = 15) -> Path:
    v = tmp_path / f"v_{name}"
    with VideoWriter(v, 64, 32, 15) as w:
        for k in range(frames):
            w.write(np.full((32, 64, 3), 8 * k % 256, np.uint8))
    return mux_foa(v, _tones(frames / 15), SR, tmp_path / name)


def _assert_media_error(fn, path: Path, reason: str) -> None:
    with pytest.raises(MediaError) as ei:
        fn(path)
    assert ei.value.reason == reason, (ei.value.reason, str(ei.value))
    assert str(path) in str(ei.value)


def test_bad_missing_and_empty(tmp_path: Path) -> None:
    _assert_media_error(probe, tmp_path / "nope.mp4", "missing")
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    _assert_media_error(probe, empty, "empty")
    _assert_media_error(decode_audio, empty, "empty")
    import soundfile as sf

    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros((0, 4), np.float32), SR, subtype="FLOAT")
    _assert_media_error(decode_audio, zero, "zero_length")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a media file at all" * 10)
    with pytest.raises(MediaError) as ei:
        probe(junk)
    assert ei.value.reason in ("unreadable", "truncated") and str(junk) in str(ei.value)


def test_bad_not_4_channels(tmp_path: Path) -> None:
    st = write_audio(tmp_path / "stereo.flac", _tones()[:2], SR)
    _assert_media_error(decode_foa, st, "not_4_channels")
    y, _ = decode_audio(st)  # plain decode still works and keeps 2 channels
    assert y.shape[0] == 2


def test_bad_nan_samples(tmp_path: Path) -> None:
    x = _tones()
    x[2, 1000] = np.nan
    import soundfile as sf

    p = tmp_path / "nan.wav"
    sf.write(p, x.T, SR, subtype="FLOAT")
    _assert_media_error(decode_audio, p, "non_finite")
    with pytest.raises(MediaError):
        write_audio(tmp_path / "out.wav", x, SR)
    assert not (tmp_path / "out.wav").exists()


def test_bad_video_without_audio(tmp_path: Path) -> None:
    v = tmp_path / "silent_video.mp4"
    with VideoWriter(v, 64, 32, 10) as w:
        w.write(np.zeros((32, 64, 3), np.uint8))
    _assert_media_error(decode_audio, v, "no_audio")
    _assert_media_error(decode_foa, v, "no_audio")
    a = write_audio(tmp_path / "a.wav", _tones(0.1), SR)
    _assert_media_error(lambda p: next(iter_frames(p)), a, "no_video")


def test_bad_truncated_real_webm(testdata_dir: Path, tmp_path: Path) -> None:
    src = testdata_dir / "sphere360-erp-foa" / "0B7ds6NmVBQl_20.webm"
    cut = tmp_path / "cut.webm"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    _assert_media_error(probe, cut, "truncated")
    _assert_media_error(decode_audio, cut, "truncated")
    tiny = tmp_path / "tiny.webm"
    tiny.write_bytes(src.read_bytes()[:3000])
    _assert_media_error(probe, tiny, "truncated")


def test_bad_truncated_mp4(tmp_path: Path) -> None:
    good = _small_av(tmp_path)
    data = good.read_bytes()
    for frac in (0.5, 0.97):
        cut = tmp_path / f"cut{frac}.mp4"
        cut.write_bytes(data[: int(len(data) * frac)])
        _assert_media_error(probe, cut, "truncated")


# ------------------------------------------------------------------------------- SA3D / sv3d


def test_inject_and_parse_spatial_boxes(tmp_path: Path) -> None:
    p = _small_av(tmp_path)  # mux_foa already injected
    sa = parse_sa3d(p)
    assert sa == {
        "version": 0,
        "ambisonic_type": 0,
        "ambisonic_order": 1,
        "channel_ordering": "ACN",
        "normalization": "SN3D",
        "num_channels": 4,
        "channel_map": [0, 1, 2, 3],
    }
    info = probe(p)
    assert info.projection == "equirectangular" and info.foa_hint == "ambix" and info.sa3d == sa
    # ffprobe 5.1 itself reports the injected sv3d as side data
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(p)], capture_output=True, text=True
    ).stdout
    assert '"Spherical Mapping"' in out and '"equirectangular"' in out
    assert parse_spherical_video(p)["projection"] == "equirectangular"


@pytest.mark.parametrize("faststart", [False, True])
def test_inject_keeps_media_bytes(tmp_path: Path, faststart: bool) -> None:
    """moov after mdat: offsets untouched; moov before mdat (+faststart): stco/co64 shifted."""
    v = tmp_path / "v.mp4"
    with VideoWriter(v, 64, 32, 15) as w:
        for k in range(15):
            w.write(np.full((32, 64, 3), 16 * k, np.uint8))
    plain = mux_foa(v, _tones(1.0), SR, tmp_path / "plain.mp4", spatial_metadata=False)
    assert parse_sa3d(plain) is None and probe(plain).projection is None and probe(plain).foa_hint is None
    src = tmp_path / "src.mp4"
    _ffmpeg("-i", str(plain), "-c", "copy", *(["-movflags", "+faststart"] if faststart else []), str(src))
    ref_audio, _ = decode_audio(src)
    ref_frames = [f.copy() for f in iter_frames(src)]
    size0 = src.stat().st_size
    inject_spatial_metadata(src)
    inject_spatial_metadata(src)  # idempotent: replaces, does not stack
    assert src.stat().st_size > size0
    assert parse_sa3d(src)["num_channels"] == 4 and probe(src).projection == "equirectangular"
    y, _ = decode_audio(src)
    assert np.array_equal(y, ref_audio)
    frames = list(iter_frames(src))
    assert len(frames) == 15 and all(np.array_equal(a, b) for a, b in zip(frames, ref_frames, strict=True))


def test_inject_rejects_non_mp4(tmp_path: Path) -> None:
    p = write_audio(tmp_path / "a.wav", _tones(0.1), SR)
    with pytest.raises(MediaError) as ei:
        inject_spatial_metadata(p)
    assert ei.value.reason == "not_mp4"


# ------------------------------------------------------------------------------- frames / writers


def test_iter_frames_streams_with_bounded_memory(tmp_path: Path) -> None:
    w_, h_, n = 128, 64, 600
    v = tmp_path / "long.mp4"
    with VideoWriter(v, w_, h_, 30, crf=30, preset="ultrafast") as w:
        for k in range(n):
            f = np.zeros((h_, w_, 3), np.uint8)
            f[:, (k * 3) % w_] = 255
            w.write(f)
    frame_bytes = w_ * h_ * 3
    tracemalloc.start()
    count = 0
    it = iter_frames(v)
    first = next(it)
    assert first.shape == (h_, w_, 3) and first.dtype == np.uint8
    count = 1
    for f in it:
        count += 1
        assert f[:, (count - 1) * 3 % w_].mean() > 150  # the moving line is where it was drawn
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    assert peak < 40 * frame_bytes, f"peak {peak} bytes for {n} frames of {frame_bytes}"  # all frames: 600x


def test_iter_frames_options(tmp_path: Path) -> None:
    v = tmp_path / "v.mp4"
    with VideoWriter(v, 128, 64, 30) as w:
        for k in range(60):
            w.write(np.full((64, 128, 3), 4 * k, np.uint8))
    frames = list(iter_frames(v, size=(64, 32), fps=10, start_s=0.5, duration_s=1.0))
    assert len(frames) == 10 and frames[0].shape == (32, 64, 3)
    assert abs(int(frames[0].mean()) - 4 * 15) <= 6  # starts at 0.5 s = frame 15
    g = next(iter_frames(v, gray=True))
    assert g.shape == (64, 128) and g.dtype == np.uint8
    it = iter_frames(v)
    next(it)
    it.close()  # stopping early kills ffmpeg, no hang


def test_iter_frames_and_writer_yuv420p(tmp_path: Path) -> None:
    """Planar yuv420p in and out (the render path): shapes, pass-through values, threads option."""
    v = tmp_path / "y.mp4"
    h_, w_ = 64, 128
    with VideoWriter(v, w_, h_, 30, crf=10, pix_fmt="yuv420p") as w:
        for k in range(30):
            f = np.empty((h_ * 3 // 2, w_), np.uint8)
            f[:h_] = 40 + 4 * k  # luma ramps over time
            f[h_:] = 100  # U and V
            w.write(f)
        with pytest.raises(ValueError):
            w.write(np.zeros((h_, w_, 3), np.uint8))
    frames = list(iter_frames(v, pix_fmt="yuv420p", threads=1, start_s=0.5))
    assert len(frames) == 15 and frames[0].shape == (h_ * 3 // 2, w_) and frames[0].dtype == np.uint8
    assert abs(float(frames[0][:h_].mean()) - (40 + 4 * 15)) <= 2
    assert abs(float(frames[0][h_:].mean()) - 100) <= 2
    assert frames[0] is not frames[1] and not np.shares_memory(frames[0], frames[1])
    small = next(iter_frames(v, size=(64, 32), pix_fmt="yuv420p"))
    assert small.shape == (48, 64)
    with pytest.raises(ValueError):
        next(iter_frames(v, size=(63, 32), pix_fmt="yuv420p"))


def test_iter_frames_crop_and_snapshot(tmp_path: Path) -> None:
    """``crop`` pipes only a rectangle of each (scaled) frame; ``snapshot`` writes one whole frame
    from the same decode, also when the caller stops reading early (the render path)."""
    v = tmp_path / "c.mp4"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 128, 3), np.uint8)
    with VideoWriter(v, 128, 64, 30, crf=0) as w:
        for k in range(30):
            f = base.copy()
            f[:, :, 0] = 8 * k  # red ramps over time: frame k is recognisable
            w.write(f)
    full = list(iter_frames(v, pix_fmt="yuv420p", start_s=0.2, duration_s=0.5))
    crop = (32, 16, 48, 24)
    part = list(iter_frames(v, pix_fmt="yuv420p", start_s=0.2, duration_s=0.5, crop=crop))
    assert len(part) == len(full) == 15 and part[0].shape == (36, 48)
    x0, y0, cw, ch = crop
    for a, b in zip(full, part, strict=True):
        assert np.array_equal(a[:64][y0:y0 + ch, x0:x0 + cw], b[:ch])  # luma rectangle, exact
        u_full = a[64:80].reshape(32, 64)[y0 // 2:(y0 + ch) // 2, x0 // 2:(x0 + cw) // 2]
        assert np.array_equal(u_full, b[ch:ch + ch // 4].reshape(ch // 2, cw // 2))
    snap = tmp_path / "mid.rgb"
    again = list(iter_frames(v, pix_fmt="yuv420p", start_s=0.2, duration_s=0.5, crop=crop, snapshot=(7, snap, (64, 32))))
    assert len(again) == 15 and all(np.array_equal(a, b) for a, b in zip(again, part, strict=True))
    img = np.frombuffer(snap.read_bytes(), np.uint8).reshape(32, 64, 3)
    ref = np.stack(list(iter_frames(v, size=(64, 32), start_s=0.2, duration_s=0.5)))
    errs = [float(np.abs(img.astype(int) - r.astype(int)).mean()) for r in ref]
    assert int(np.argmin(errs)) == 7 and errs[7] < 6, errs
    with pytest.raises(ValueError):
        next(iter_frames(v, crop=(100, 0, 64, 16)))  # outside the frame


def test_iter_frames_truncated(tmp_path: Path) -> None:
    v = tmp_path / "v.mp4"
    with VideoWriter(v, 64, 32, 30) as w:
        for k in range(60):
            w.write(np.random.default_rng(k).integers(0, 255, (32, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(v.read_bytes()[:-5000])
    with pytest.raises(MediaError) as ei:
        list(iter_frames(cut))
    assert ei.value.reason == "truncated" and str(cut) in str(ei.value)


def test_video_writer_and_mux(tmp_path: Path) -> None:
    v = tmp_path / "v.mp4"
    with VideoWriter(v, 96, 48, 25, crf=18) as w:
        for k in range(50):
            w.write(np.full((48, 96, 3), (k * 5, 100, 200 - k * 2), np.uint8))
    iv = probe(v)
    assert (iv.video_codec, iv.width, iv.height, iv.n_frames, iv.has_audio) == ("h264", 96, 48, 50, False)
    assert abs(iv.fps - 25) < 1e-6
    t = np.arange(2 * SR) / SR
    lr = np.stack([0.3 * np.sin(2 * np.pi * 500 * t), 0.3 * np.sin(2 * np.pi * 1500 * t)])
    out = mux(v, lr, SR, tmp_path / "out.mp4")
    info = probe(out)
    assert (info.video_codec, info.audio_codec, info.audio_channels, info.sample_rate) == (
        "h264",
        "aac",
        2,
        48000,
    )
    y, _ = decode_audio(out)
    spec = np.abs(np.fft.rfft(y[:, 4800:52800], axis=1))
    f = np.fft.rfftfreq(48000, 1 / SR)
    i500, i1500 = np.argmin(abs(f - 500)), np.argmin(abs(f - 1500))
    assert spec[0, i500] > 100 * spec[0, i1500] and spec[1, i1500] > 100 * spec[1, i500]  # row 0 = left
    with pytest.raises(MediaError):
        mux(v, lr[:1], SR, tmp_path / "mono.mp4")
    assert not (tmp_path / "mono.mp4").exists()


def test_video_writer_cleans_up_on_error(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    with pytest.raises(RuntimeError):
        with VideoWriter(d / "x.mp4", 64, 32, 10) as w:
            w.write(np.zeros((32, 64, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(d.iterdir()) == []
    with pytest.raises(ValueError):
        VideoWriter(d / "odd.mp4", 63, 32, 10)
    with VideoWriter(d / "y.mp4", 64, 32, 10) as w:
        with pytest.raises(ValueError):
            w.write(np.zeros((30, 64, 3), np.uint8))
        w.write(np.zeros((32, 64, 3), np.uint8))
    assert [p.name for p in d.iterdir()] == ["y.mp4"]


def test_write_audio_atomic_formats(tmp_path: Path) -> None:
    x = _tones(0.2) * 2.0  # > 1 on purpose
    w = write_audio(tmp_path / "a.wav", x, SR)
    y, _ = decode_audio(w)
    assert np.allclose(y, x, atol=1e-7)  # float wav keeps values above 1
    f = write_audio(tmp_path / "a.flac", x / 2, SR)
    y, _ = decode_audio(f)
    assert np.allclose(y, x / 2, atol=1e-5)
    with pytest.raises(ValueError):
        write_audio(tmp_path / "a.mp3", x, SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac", "a.wav"]


def test_ffmpeg_available() -> None:
    assert shutil.which("ffmpeg") and shutil.which("ffprobe")


@pytest.mark.parametrize("name", ["wav", "opus_ogg_family2", "aac_mp4"])
def test_decode_window_is_sample_accurate(name: str, tone_wav: Path, tmp_path: Path) -> None:
    """start_s/duration_s give exactly the samples of the full decode (output-side -ss/-t)."""
    from biaudio.media.audio import AUDIO_DECODES

    ext, args = ENCODINGS[name]
    path = tone_wav if args is None else tmp_path / f"tones.{ext}"
    if args is not None:
        _ffmpeg("-i", str(tone_wav), *args, str(path))
    full, sr = decode_audio(path)
    before = AUDIO_DECODES[str(path.resolve())]
    y, sr2 = decode_audio(path, start_s=0.2345, duration_s=0.5, info=probe(path))
    assert AUDIO_DECODES[str(path.resolve())] == before + 1
    s0 = int(round(0.2345 * sr))
    assert sr2 == sr and y.shape == (4, int(round(0.5 * sr)))
    np.testing.assert_array_equal(y, full[:, s0:s0 + y.shape[1]])
    cmd = build_decode_cmd(path, sr=None, start_s=0.2345, duration_s=0.5)
    i = cmd.index("-i")
    assert cmd.index("-ss") > i and cmd.index("-t") > i and cmd[cmd.index("-ss") + 1] == "0.234500"
    assert "-ac" not in cmd and "-channel_layout" not in cmd
    with pytest.raises(MediaError):
        decode_audio(path, start_s=-1.0)


def _hf_cue_errors(ref: np.ndarray, dec: np.ndarray, lo: float = 8000.0, hi: float = 16000.0) -> tuple[float, float]:
    """Energy-weighted |ILD error| (dB) and |IPD error| (degrees) between two (2, T) signals, lo-hi Hz."""
    from scipy.signal import stft

    n = min(ref.shape[1], dec.shape[1])
    f, _, a = stft(ref[:, :n], SR, nperseg=1024)
    _, _, b = stft(dec[:, :n], SR, nperseg=1024)
    band = (f >= lo) & (f < hi)
    a, b = a[:, band], b[:, band]
    w = np.abs(a[0]) ** 2 + np.abs(a[1]) ** 2
    w = w / w.sum()

    def ild(z):
        return 10 * np.log10((np.abs(z[0]) ** 2 + 1e-12) / (np.abs(z[1]) ** 2 + 1e-12))

    ild_err = float((np.abs(ild(a) - ild(b)) * w).sum())
    dphi = np.angle(a[0] * np.conj(a[1])) - np.angle(b[0] * np.conj(b[1]))
    ipd_err = float(np.degrees((np.abs(np.angle(np.exp(1j * dphi))) * w).sum()))
    return ild_err, ipd_err


def test_video_writer_aac_keeps_high_band_interaural_cues(tmp_path: Path):
    """The mp4's AAC track keeps ILD/IPD above 8 kHz (intensity stereo and PNS off); ffmpeg's
    default AAC flags, encoded from the same FLAC, are shown to break them (so the check has teeth)."""
    rng = np.random.default_rng(3)
    n = 4 * SR
    # a binaural-like pair: several sources, each with its own level difference and delay
    x = np.zeros((2, n), np.float32)
    for g, d in ((1.0, 0), (0.4, 14), (2.5, -9)):
        s = rng.standard_normal(n).astype(np.float32) * 0.05
        x[0] += s
        x[1] += g * np.roll(s, d)
    flac = write_audio(tmp_path / "b.flac", x, SR)
    v = tmp_path / "v.mp4"
    with VideoWriter(v, 64, 32, 10, audio=flac) as w:
        for _ in range(40):
            w.write(np.zeros((32, 64, 3), np.uint8))
    ours = decode_audio(v, sr=SR)[0]
    default = tmp_path / "default.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(flac), "-c:a", "aac", "-b:a", "192k", str(default)],
                   check=True)
    plain = decode_audio(default, sr=SR)[0]
    # both decoders trim the AAC priming; check the alignment instead of assuming it
    lag = int(np.argmax(np.correlate(ours[0, SR:SR + 4096], x[0, SR - 64:SR + 4096 + 64], "valid"))) - 64
    assert lag == 0
    e_ours, e_plain = _hf_cue_errors(x, ours), _hf_cue_errors(x, plain)
    print(f"8-16 kHz ILD/IPD error: ours {e_ours[0]:.2f} dB / {e_ours[1]:.1f} deg, "
          f"ffmpeg defaults {e_plain[0]:.2f} dB / {e_plain[1]:.1f} deg")
    assert e_ours[0] < 3.5 and e_ours[1] < 25  # measured 2.4 dB / 17 deg; the defaults 4.9 dB / 67 deg
    assert e_plain[0] > 1.5 * e_ours[0] and e_plain[1] > 2 * e_ours[1]


# ---------------------------------------------------------------- ffmpeg-python graphs (media/ffgraph)


def _testsrc(path: Path, seconds: float = 2.0, size: str = "96x48", rate: int = 20, audio: bool = False) -> Path:
    """A small real H.264 file with changing content (and optionally a stereo tone)."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}", "-ac", "2"]
    _ffmpeg(*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10", str(path))
    return path


def _before_first_input(cmd: list[str]) -> None:
    from biaudio.media.ffgraph import GLOBAL_OPTIONS

    first = cmd.index("-i")
    late = [a for a in cmd[first:] if a in GLOBAL_OPTIONS]
    assert not late, f"global option(s) {late} after the first -i: {cmd}"
    assert cmd[:3] == ["ffmpeg", "-nostdin", "-hide_banner"]


def test_compiled_commands_put_global_options_before_the_first_input(tmp_path: Path) -> None:
    """ffmpeg-python writes global options after the outputs (ffmpeg 7: "Trailing option(s)
    found", ignored); every command the media layer compiles has them in front instead."""
    import ffmpeg

    from biaudio.media.ffgraph import command, source
    from biaudio.media.multidecode import _plan
    from biaudio.media.video import _frames_command, crop_filter, frame_filters

    v = _testsrc(tmp_path / "v.mp4", audio=True)
    info = probe(v)
    cmds = [
        build_decode_cmd(v, sr=16000, start_s=0.5, duration_s=1.0),
        _frames_command(v, "yuv420p", frame_filters(10, 0.5, (64, 32)), [crop_filter((2, 2, 8, 8))], 0.5, 1.0, 2, None),
        _frames_command(v, "rgb24", frame_filters(10), [], 0.0, 1.0, 2, (3, tmp_path / "s.rgb", (32, 16))),
    ]
    plan = _plan(v, info, (48, 24), 2.0, None, print, print, print, 2, 48000, "area", False, False, 1.0, [])
    try:
        cmds.append(plan.cmd)
    finally:
        for fd in plan.child_fds:
            os.close(fd)
        for r in plan.readers:
            os.close(r.fd)
    for cmd in cmds:
        _before_first_input(cmd)
    assert "-y" in cmds[2] and cmds[2].index("-y") < cmds[2].index("-i")
    th = cmds[1].index("-threads")  # decoder threads stay an input option of the source
    assert th < cmds[1].index("-i") and "-filter_complex_threads" in cmds[1][: cmds[1].index("-i")]
    # a global option smuggled into the graph is refused, not silently moved behind the outputs
    with pytest.raises(ValueError, match="global option"):
        command(ffmpeg.output(source(v), "-", f="null", y=None))


def test_ffmpeg_python_graph_gives_the_frames_of_the_hand_written_graph(tmp_path: Path) -> None:
    """The snapshot graph (split, ``select=eq(n\\,k)``, exact crop) compiled by ffmpeg-python runs on a
    real file and gives the frames and the snapshot that the former hand-written graph gave."""
    from biaudio.media.ffgraph import run_ffmpeg
    from biaudio.media.ffpath import input_args

    v = _testsrc(tmp_path / "v.mp4")
    snap = tmp_path / "snap.rgb"
    frames = list(iter_frames(v, size=(64, 32), fps=10, duration_s=1.5, pix_fmt="yuv420p", threads=1,
                              crop=(2, 4, 20, 10), snapshot=(3, snap, (32, 16))))
    graph = ("[0:v:0]fps=10,scale=64:32:flags=area,split=2[m][s];[m]crop=20:10:2:4:exact=1[mo];"
             "[s]select=eq(n\\,3),scale=32:16:flags=area[so]")
    ref_snap = tmp_path / "ref.rgb"
    r = run_ffmpeg(["-nostdin", "-v", "error", "-y", "-threads", "1", *input_args(v), "-filter_complex", graph,
                    "-map", "[so]", "-t", "1.5", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", str(ref_snap),
                    "-map", "[mo]", "-t", "1.5", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert len(frames) == 15 and frames[0].shape == (15, 20)
    assert b"".join(f.tobytes() for f in frames) == r.stdout
    assert snap.read_bytes() == ref_snap.read_bytes() and len(snap.read_bytes()) == 32 * 16 * 3
    assert len({f.tobytes() for f in frames}) > 10  # the frames differ: a wrong select/crop would show


def test_branch_callable_rides_along_in_the_shared_decode(tmp_path: Path) -> None:
    """A VideoBranch is a callable on an ffmpeg-python stream; inside the shared decode its trim
    window gives the frames (and snapshot) of a separate ``-ss`` decode of the same window."""
    from biaudio.media.multidecode import VideoBranch, shared_decode
    from biaudio.media.video import crop_filter, frame_filters, snapshot_graph

    v = _testsrc(tmp_path / "v.mp4", seconds=3.0, audio=True)
    info = probe(v)
    t0, dur, crop, k = "1.000000", "1.000000", (4, 2, 16, 12), 4
    pre = [("trim", {"start": t0}), ("setpts", f"PTS-{t0}/TB"), *frame_filters(10, size=(48, 24))]
    got: dict[str, list[bytes]] = {"mo": [], "so": [], "proxy": []}
    branch = VideoBranch("c0", lambda s: snapshot_graph(s, pre, [crop_filter(crop)], k, (24, 12)), [
        ("so", {"t": dur, "frames:v": "1", "f": "rawvideo", "pix_fmt": "rgb24"}, 24 * 12 * 3,
         lambda i, b: got["so"].append(bytes(b))),
        ("mo", {"t": dur, "f": "rawvideo", "pix_fmt": "yuv420p"}, 16 * 12 * 3 // 2, lambda i, b: got["mo"].append(bytes(b)))])
    shared_decode(v, info, (48, 24), None, None, None, lambda i, b: got["proxy"].append(bytes(b)), None,
                  threads=1, extra=[branch])
    snap = tmp_path / "snap.rgb"
    ref = list(iter_frames(v, size=(48, 24), fps=10, start_s=1.0, duration_s=1.0, pix_fmt="yuv420p", threads=1,
                           info=info, crop=crop, snapshot=(k, snap, (24, 12))))
    assert len(got["proxy"]) == 60 and len(got["mo"]) == len(ref) == 10
    assert b"".join(got["mo"]) == b"".join(f.tobytes() for f in ref)
    assert got["so"] == [snap.read_bytes()]


def test_read_frames_and_mux_file(tmp_path: Path) -> None:
    """The media helpers visaudio uses instead of its own ffmpeg processes."""
    from biaudio.media.ffprobe import video_codec
    from biaudio.media.video import mux_file, read_frames

    v = _testsrc(tmp_path / "v.mp4", seconds=2.0)
    arr = read_frames(v, 10, (32, 16), start_s=0.5, duration_s=1.0)
    ref = np.stack(list(iter_frames(v, size=(32, 16), fps=10, start_s=0.5, duration_s=1.0)))
    np.testing.assert_array_equal(arr, ref)
    with pytest.raises(MediaError) as e:
        read_frames(tmp_path / "missing.mp4", 10, (32, 16))
    assert e.value.reason == "undecodable"
    assert video_codec(v) == "h264" and video_codec(tmp_path / "missing.mp4") is None
    flac = write_audio(tmp_path / "a.flac", _tones(3.0)[:2], SR)
    out = mux_file(v, flac, tmp_path / "out" / "o.mp4")
    info = probe(out)
    assert info.has_video and info.audio_channels == 2 and 1.9 < info.duration_s < 2.2
    assert not list((tmp_path / "out").glob(".*"))  # no temp file left behind


_SPAWNERS = {("subprocess", "run"), ("subprocess", "Popen"), ("subprocess", "call"), ("subprocess", "check_call"),
             ("subprocess", "check_output"), ("os", "system"), ("os", "popen"), ("os", "execvp"), ("os", "spawnvp")}


def test_no_module_outside_media_spawns_ffmpeg_or_ffprobe() -> None:
    """ffmpeg and ffprobe start only in biaudio/media: a module elsewhere that names one of them as a
    command word must not start processes itself, and nobody uses ffmpeg-python's own runner
    (it would put global options after the outputs)."""
    import ast

    hits = []
    for root in ("biaudio", "visaudio", "benchmarks"):
        for f in sorted((REPO / root).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            tree = ast.parse(f.read_text())
            names = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in ("ffmpeg", "ffprobe")]
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                     and isinstance(n.func.value, ast.Name)]
            for c in calls:
                if c.func.value.id == "ffmpeg" and c.func.attr in ("run", "run_async"):
                    hits.append(f"{rel}:{c.lineno}: ffmpeg-python's {c.func.attr}()")
            if rel.startswith("biaudio/media/"):
                continue
            spawns = [c for c in calls if (c.func.value.id, c.func.attr) in _SPAWNERS]
            if names and spawns:
                hits.append(f"{rel}:{spawns[0].lineno}: starts a process and names {names[0].value!r} "
                            f"(line {names[0].lineno})")
    assert not hits, "\n".join(hits)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs byte file names")
def test_graphs_take_non_utf8_file_names(tmp_path: Path) -> None:
    """ffmpeg-python hashes its nodes through UTF-8; a latin-1 file name still reaches ffmpeg as
    its own bytes, as input and as output (writer, snapshot)."""
    d = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    os.mkdir(d)
    with VideoWriter(Path(d) / "v\xff.mp4", 32, 16, 10) as w:
        for i in range(5):
            w.write(np.full((16, 32, 3), 40 * i, np.uint8))
    snap = Path(d) / "snap\xe9.rgb"
    frames = list(iter_frames(Path(d) / "v\xff.mp4", snapshot=(2, snap, (16, 8))))
    assert len(frames) == 5 and snap.stat().st_size == 16 * 8 * 3
    assert os.fsencode(d).endswith(b"caf\xe9") and os.listdir(os.fsencode(d))
