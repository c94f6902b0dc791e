"""SA3D/sv3d box codec details: field decoding, error cases, audio-only and stereo files."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from biaudio.errors import MediaError
from biaudio.media import inject_spatial_metadata, parse_sa3d, probe, write_audio
from biaudio.media.sa3d import Box, _decode_sa3d, _encode_sa3d, _split_boxes

SR = 48000


def test_sa3d_fields_round_trip() -> None:
    b = _encode_sa3d(4)
    raw = b.serialize()
    assert raw[4:8] == b"SA3D" and struct.unpack(">I", raw[:4])[0] == len(raw) == 8 + 12 + 16
    d = _decode_sa3d(b.prefix)
    assert (
        d["channel_ordering"] == "ACN" and d["normalization"] == "SN3D" and d["channel_map"] == [0, 1, 2, 3]
    )
    other = struct.pack(">BBIBBI", 0, 0, 1, 0, 1, 4) + struct.pack(">4I", 0, 2, 3, 1)
    d = _decode_sa3d(other)
    assert d["normalization"] == "N3D" and d["channel_map"] == [0, 2, 3, 1] and d["ambisonic_order"] == 1
    with pytest.raises(ValueError):
        _decode_sa3d(b"\x00" * 5)


def test_box_sizes_are_consistent_after_nesting() -> None:
    inner = Box(b"prhd", b"\x00" * 16)
    outer = Box(b"proj", b"", [inner, Box(b"equi", b"\x00" * 20)])
    raw = outer.serialize()
    assert struct.unpack(">I", raw[:4])[0] == len(raw)
    kids = _split_boxes(raw[8:], "x")
    assert [t for t, _ in kids] == [b"prhd", b"equi"] and len(kids[0][1]) == 16
    with pytest.raises(MediaError) as ei:
        _split_boxes(raw[8:-3], "x")  # last child overruns its parent
    assert ei.value.reason == "truncated"


def _aac_only(tmp_path: Path, channels: int) -> Path:
    t = np.arange(SR // 2) / SR
    x = np.stack([0.1 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)])
    wav = write_audio(tmp_path / f"a{channels}.wav", x, SR)
    out = tmp_path / f"a{channels}.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(out)], check=True)
    return out


def test_inject_audio_only_and_errors(tmp_path: Path) -> None:
    a4 = _aac_only(tmp_path, 4)
    with pytest.raises(MediaError) as ei:
        inject_spatial_metadata(a4)  # projection wanted but there is no video
    assert ei.value.reason == "no_video" and str(a4) in str(ei.value)
    assert parse_sa3d(a4) is None  # failed injection left the file untouched
    inject_spatial_metadata(a4, projection=False)
    info = probe(a4)
    assert info.foa_hint == "ambix" and info.sa3d["num_channels"] == 4 and info.projection is None
    a2 = _aac_only(tmp_path, 2)
    with pytest.raises(MediaError) as ei:
        inject_spatial_metadata(a2, projection=False)
    assert ei.value.reason == "not_4_channels"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp leftovers


def test_parse_sa3d_non_mp4_and_missing(tmp_path: Path, testdata_dir: Path) -> None:
    assert parse_sa3d(testdata_dir / "sphere360-erp-foa" / "0B7ds6NmVBQl_20.webm") is None
    with pytest.raises(MediaError) as ei:
        parse_sa3d(tmp_path / "none.mp4")
    assert ei.value.reason == "missing"
