"""The probe that ``analyze_file`` reads from the decoding ffmpeg's own input dump
(biaudio.media.header) agrees with ffprobe, falls back to ffprobe when the dump is not certain,
and rejects files for the same reasons as ``validate_input``."""

from __future__ import annotations

import importlib
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from biaudio.errors import BiaudioError
from biaudio.ingest.analysis import analyze_file
from biaudio.ingest.validate import ValidateConfig, validate_input
from biaudio.media.header import exact_rate, parse_input_dump
from biaudio.media.probe import probe, probe_from_dict

probe_mod = importlib.import_module("biaudio.media.probe")  # the package re-exports a function of the same name


def dump_lines(path: Path) -> list[str]:
    r = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info", "-i",
                        str(Path(path).absolute()), "-t", "0", "-f", "null", "-"], capture_output=True, text=True)
    return [ln[7:] for ln in r.stderr.splitlines() if ln.startswith("[info] ")]


def _make(path: Path, size: str, rate: str, channels: int | None, acodec: list[str] | None = None,
          spatial: bool = False) -> Path:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=s={size}:r={rate}:d=2"]
    if channels:
        tones = [x for k in range(channels) for x in ("-f", "lavfi", "-i", f"sine=f={300 + 100 * k}:d=2")]
        ins = "".join(f"[{k + 1}]" for k in range(channels))
        cmd += [*tones, "-filter_complex", f"{ins}amerge=inputs={channels}[a]", "-map", "0:v", "-map", "[a]",
                *(acodec or ["-c:a", "aac"])]
    vcodec = ["-c:v", "libvpx", "-b:v", "200k"] if path.suffix == ".webm" else ["-c:v", "libx264", "-preset", "ultrafast"]
    subprocess.run([*cmd, *vcodec, str(path)], check=True, timeout=120)
    if spatial:
        from biaudio.media.sa3d import inject_spatial_metadata

        inject_spatial_metadata(path, ambix=True, projection=True)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("header")
    opus = ["-c:a", "libopus", "-mapping_family", "2", "-b:a", "128k"]
    return {
        "quad_2to1_30": _make(d / "quad.mp4", "256x128", "30", 4),
        "ntsc_2997": _make(d / "ntsc.mp4", "256x128", "30000/1001", 4),
        "erp169_sa3d": _make(d / "erp169.mp4", "320x180", "25", 4, spatial=True),
        "stereo": _make(d / "stereo.mp4", "256x128", "30", 2),
        "six": _make(d / "six.mp4", "256x128", "30", 6),
        "mute": _make(d / "mute.mp4", "256x128", "30", None),
        "opus_ambisonic_webm": _make(d / "amb.webm", "256x128", "24", 4, opus),
        "odd_rate": _make(d / "odd.mp4", "256x128", "14787/500", 4),
    }


def _same(a, b) -> dict:
    """Fields where two ProbeInfos differ beyond the documented tolerances."""
    da, db = asdict(a), asdict(b)
    out = {}
    for k in da:
        if k in ("raw", "path", "n_frames", "n_frames_estimated"):
            continue
        if k == "duration_s":
            if abs(da[k] - db[k]) > 0.006:
                out[k] = (da[k], db[k])
        elif k == "fps":
            if (da[k] is None) != (db[k] is None) or (da[k] and abs(da[k] - db[k]) > 1e-9 * da[k]):
                out[k] = (da[k], db[k])
        elif k == "audio_layout":
            # ffmpeg prints its default layout name where the file declares none (ffprobe: None);
            # it never invents "ambisonic", the only layout the FOA decision reads
            if da[k] is not None and da[k] != db[k]:
                out[k] = (da[k], db[k])
        elif da[k] != db[k]:
            out[k] = (da[k], db[k])
    return out


def test_exact_rate_only_when_certain():
    assert exact_rate("30") == "30/1" and exact_rate("25") == "25/1"
    assert exact_rate("29.97") == "30000/1001"
    assert exact_rate("23.98") == "24000/1001"
    assert exact_rate("59.94") == "60000/1001"
    assert exact_rate("29.57") is None  # 14787/500 printed to 2 decimals: precision lost -> ffprobe
    assert exact_rate("12.50") is None and exact_rate("0") is None and exact_rate("abc") is None


def test_dump_matches_ffprobe(media, testdata_dir):
    files = dict(media)
    real = testdata_dir / "sphere360-erp-foa"
    if real.is_dir():
        files.update({p.name: p for p in sorted(real.glob("*.webm"))})
    parsed = 0
    for name, f in files.items():
        d = parse_input_dump(dump_lines(f))
        if name == "odd_rate":
            assert d is None, "a frame rate printed with lost precision must fall back to ffprobe"
            continue
        if d is None:
            # allowed only for the same reason: a non-NTSC fractional rate
            fps = probe(f).fps
            assert fps and abs(fps * 1.001 - round(fps * 1.001)) > 1e-6 and fps != round(fps), (name, fps)
            continue
        parsed += 1
        a, b = probe(f), probe_from_dict(Path(f).absolute(), d)
        assert _same(a, b) == {}, (name, _same(a, b))
    assert parsed >= 7


def test_analyze_file_runs_no_ffprobe_and_rejects_like_validate_input(media, tmp_path, monkeypatch):
    calls: list[str] = []
    real_run = probe_mod.run_ffprobe

    def counting(p):
        calls.append(str(p))
        return real_run(p)

    monkeypatch.setattr(probe_mod, "run_ffprobe", counting)
    decl = ValidateConfig(declared_convention="ambix")
    ok = analyze_file(media["quad_2to1_30"], validate_cfg=decl, stop_on_reject=False)
    assert ok.validated is not None and ok.validated.probe.audio_channels == 4 and ok.fps == 30.0
    ntsc = analyze_file(media["ntsc_2997"], validate_cfg=decl, stop_on_reject=False)
    assert abs(ntsc.fps - 30000 / 1001) < 1e-12
    amb = analyze_file(media["opus_ambisonic_webm"], validate_cfg=ValidateConfig(), stop_on_reject=False)
    assert amb.validated.convention == "ambix" and amb.validated.convention_source == "hint"
    assert calls == [], f"ffprobe ran for files whose dump is certain: {calls}"
    odd = analyze_file(media["odd_rate"], validate_cfg=decl, stop_on_reject=False)
    assert len(calls) == 1 and abs(odd.fps - 14787 / 500) < 1e-9  # fell back, exact rate kept

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 300)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = [(media["stereo"], decl), (media["mute"], decl), (media["six"], decl), (media["quad_2to1_30"], ValidateConfig()),
             (media["erp169_sa3d"], ValidateConfig()), (junk, decl), (empty, decl), (tmp_path / "missing.mp4", decl),
             (media["quad_2to1_30"], ValidateConfig(declared_convention="ambix", min_duration_s=5))]
    for f, cfg in cases:
        try:
            validate_input(f, cfg)
            want = None
        except BiaudioError as e:
            want = e.reason
        got = analyze_file(f, validate_cfg=cfg, stop_on_reject=False).reject
        if want is None:
            assert got is None or got.stage != "probe", (f.name, got)
        else:
            assert got is not None and (got.stage, got.reason) == ("probe", want), (f.name, want, got)


def test_non_8bit_video_decodes_again_with_the_general_graph(tmp_path, monkeypatch):
    """The Y-plane static frames need 8-bit YUV; a 10-bit source is probed from the dump, then
    decoded with ``format=gray`` and must give the same static score as an 8-bit copy of it."""
    src = _make(tmp_path / "ten.mp4", "256x128", "30", 4)
    ten = tmp_path / "ten10.mkv"
    eight = tmp_path / "eight.mkv"
    for out, pix in ((ten, "yuv420p10le"), (eight, "yuv420p")):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-c:v", "libx264", "-preset",
                        "ultrafast", "-qp", "0", "-pix_fmt", pix, "-c:a", "copy", str(out)], check=True, timeout=120)
    assert probe(ten).raw["streams"][0]["pix_fmt"] == "yuv420p10le"
    import biaudio.ingest.analysis as ingest

    modes: list[bool] = []
    real_decode = ingest.shared_decode

    def spy(path, info, *a, **k):
        modes.append(info is None)
        return real_decode(path, info, *a, **k)

    monkeypatch.setattr(ingest, "shared_decode", spy)
    from biaudio.media.audio import AUDIO_DECODES

    decl = ValidateConfig(declared_convention="ambix")
    a = analyze_file(ten, validate_cfg=decl, stop_on_reject=False)
    assert modes == [True, False]  # header mode, then the general graph with the probe it read
    assert AUDIO_DECODES[str(ten.resolve())] == 2  # the decode counter tells the truth about it
    b = analyze_file(eight, validate_cfg=decl, stop_on_reject=False)
    assert modes == [True, False, True]
    assert a.validated is not None and a.n_frames == b.n_frames and a.n_frames >= 59
    assert a.filters["static"].score == pytest.approx(b.filters["static"].score, abs=0.05)
    assert a.filters["silence"].score == pytest.approx(b.filters["silence"].score, abs=1e-6)  # same audio


def test_unverified_spherical_or_stereo_prints_fall_back_to_ffprobe():
    """Other ffmpeg versions print side data differently; a spherical/stereo line in an unverified
    form must never be skipped silently (the file would lose its projection), only fall back."""
    base = ["Input #0, matroska,webm, from 'x.webm':", "  Duration: 00:00:10.01, start: 0.000000, bitrate: 1249 kb/s",
            "  Stream #0:0: Video: vp9 (Profile 0), yuv420p(tv, bt709, progressive), 1920x1080, SAR 1:1 DAR 16:9, "
            "29.97 fps, 29.97 tbr, 1k tbn (default)", "    Side data:"]
    ok = parse_input_dump([*base, "      stereo3d: 2D", "      spherical: equirectangular (0.000000/0.000000/0.000000) ",
                           "Stream mapping:"])
    assert ok is not None and [d["side_data_type"] for d in ok["streams"][0]["side_data_list"]] == \
        ["Stereo 3D", "Spherical Mapping"]
    assert ok["streams"][0]["avg_frame_rate"] == "30000/1001"
    for line in ("      Spherical Mapping: equirectangular (0.000000/0.000000/0.000000)",
                 "      Stereo 3D: 2D, view: packed, primary eye: none",
                 "      spherical: cubemap (pad 0)"):
        assert parse_input_dump([*base, line, "Stream mapping:"]) is None, line
    other = parse_input_dump([*base, "      displaymatrix: rotation of -90.00 degrees", "Stream mapping:"])
    assert other is not None and other["streams"][0]["side_data_list"] == []
    assert parse_input_dump(["Input #1, mov,mp4, from 'y':"]) is None and parse_input_dump([]) is None
