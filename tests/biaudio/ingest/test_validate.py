"""Probe/validate: real Sphere360 clips, and synthetic stereo / flat / 16:9 equirect / unknown-convention files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from biaudio.errors import BiaudioError
from biaudio.ingest.validate import ValidateConfig, validate_input

AMBIX_WEBM = ValidateConfig(declared_convention="ambix", declared_convention_formats=["webm"])


def _make(path: Path, size: str, channels: int | None, spatial: bool = False) -> Path:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=s={size}:r=10:d=1.5"]
    if channels:
        tones = [x for k in range(channels) for x in ("-f", "lavfi", "-i", f"sine=f={300 + 100 * k}:d=1.5")]
        ins = "".join(f"[{k + 1}]" for k in range(channels))
        cmd += [*tones, "-filter_complex", f"{ins}amerge=inputs={channels}[a]", "-map", "0:v", "-map", "[a]", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    if spatial:
        from biaudio.media.sa3d import inject_spatial_metadata

        inject_spatial_metadata(path, ambix=True, projection=True)
    return path


def test_real_sphere360_clips_are_360_4ch_ambix(testdata_dir):
    clips = sorted((testdata_dir / "sphere360-erp-foa").glob("*.webm"))
    assert len(clips) == 5
    for c in clips:
        v = validate_input(c, AMBIX_WEBM)
        assert v.probe.audio_channels == 4 and v.convention == "ambix" and v.convention_source == "declared"
        # tAiVUt5vE34l_30 has no spherical metadata: accepted by the 2:1 rule
        assert v.projection_source == ("aspect_2to1" if c.stem == "tAiVUt5vE34l_30" else "metadata")
    with pytest.raises(BiaudioError) as ei:  # quad Vorbis proves nothing without the recipe's word
        validate_input(clips[0], ValidateConfig())
    assert ei.value.reason == "unknown_convention" and ei.value.stage == "probe"
    with pytest.raises(BiaudioError) as ei:  # declaration limited to other containers
        validate_input(clips[0], ValidateConfig(declared_convention="ambix", declared_convention_formats=["mp4"]))
    assert ei.value.reason == "unknown_convention"


def test_synthetic_classification(tmp_path):
    stereo = _make(tmp_path / "stereo.mp4", "256x128", 2)
    flat = _make(tmp_path / "flat.mp4", "320x180", 4)
    erp169 = _make(tmp_path / "erp169.mp4", "320x180", 4, spatial=True)
    quad = _make(tmp_path / "quad.mp4", "256x128", 4)
    mute = _make(tmp_path / "mute.mp4", "256x128", None)
    six = _make(tmp_path / "six.mp4", "256x128", 6)
    decl = ValidateConfig(declared_convention="ambix")

    def reason(p, cfg=decl):
        with pytest.raises(BiaudioError) as ei:
            validate_input(p, cfg)
        return ei.value.reason

    assert reason(stereo) == "not_4_channels"
    assert reason(flat) == "not_360"  # 16:9 without metadata under the default rule
    ok = validate_input(flat, ValidateConfig(declared_convention="ambix", equirect_16to9_allow=["flat"]))
    assert ok.projection_source == "allow_16to9"
    v = validate_input(erp169, ValidateConfig())  # metadata: equirect + SA3D ambiX, no declaration needed
    assert (v.projection_source, v.convention, v.convention_source) == ("metadata", "ambix", "hint")
    assert reason(quad, ValidateConfig()) == "unknown_convention"
    assert validate_input(quad, decl).projection_source == "aspect_2to1"
    assert reason(quad, ValidateConfig(declared_convention="ambix", aspect_2to1_is_equirect=False)) == "not_360"
    assert reason(mute) == "no_audio"
    assert reason(six) == "six_channel"
    assert validate_input(six, ValidateConfig(declared_convention="ambix", allow_6ch=True)).probe.audio_channels == 6
    assert reason(quad, ValidateConfig(declared_convention="ambix", min_duration_s=5)) == "too_short"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 300)
    assert reason(junk) in ("unreadable", "truncated")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert reason(empty) == "empty"
