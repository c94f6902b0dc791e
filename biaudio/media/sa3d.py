"""MP4 spatial-media boxes: read ``SA3D`` / ``st3d`` / ``sv3d`` and inject them.

Why a hand-written box walker: ffmpeg 5.1 surfaces ``sv3d`` as "Spherical Mapping" side data but
never reports the ``SA3D`` (spatial audio) box, so a 4-channel AAC/Opus MP4 would look like "4.0"
or "quad" audio with no hint that it is ambiX. And ffmpeg cannot *write* either box from a raw
pipe, so the synthetic scenes inject them here.

Layout (Google spatial-media spec, github.com/google/spatial-media/docs):

- ``moov/trak/mdia/minf/stbl/stsd/<audio sample entry>/SA3D``:
  ``version u8, ambisonic_type u8, ambisonic_order u32, channel_ordering u8 (0 = ACN),
  normalization u8 (0 = SN3D), num_channels u32, channel_map u32[num_channels]``.
- ``.../stsd/<video sample entry>/st3d`` (FullBox, ``stereo_mode u8``) and ``sv3d`` holding
  ``svhd`` (FullBox, metadata source C string) and ``proj`` holding ``prhd`` (FullBox, yaw, pitch,
  roll as signed 16.16 degrees) and ``equi`` (FullBox, four 0.32 crop bounds).

Only ``moov`` is rewritten. When ``moov`` follows ``mdat`` (ffmpeg's default without
``+faststart``) the media bytes do not move; when it precedes ``mdat`` every ``stco``/``co64``
chunk offset behind it is shifted by the growth of ``moov``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from biaudio.atomic import atomic_path
from biaudio.errors import MediaError
from biaudio.media.ffprobe import run_ffprobe

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"sv3d", b"proj"}
_VIDEO_ENTRY_PREFIX = 78  # after the 8-byte header: reserved, dref, pre_defined, w, h, res, name...
_ORDERING = {0: "ACN"}
_NORMALIZATION = {0: "SN3D", 1: "N3D"}
_STEREO = {0: "mono", 1: "top-bottom", 2: "left-right", 3: "stereo-custom"}


@dataclass
class Box:
    """One box: ``prefix`` is payload before children (or the whole payload of a leaf)."""

    type: bytes
    prefix: bytes = b""
    children: list[Box] | None = None

    def find(self, typ: bytes) -> Box | None:
        for c in self.children or []:
            if c.type == typ:
                return c
        return None

    def serialize(self) -> bytes:
        body = self.prefix + b"".join(c.serialize() for c in self.children or [])
        size = len(body) + 8
        if size > 0xFFFFFFFF:
            return struct.pack(">I4sQ", 1, self.type, size + 8) + body
        return struct.pack(">I4s", size, self.type) + body


@dataclass
class _TopBox:
    type: bytes
    offset: int
    size: int
    header: int


@dataclass
class _Track:
    handler: bytes
    entry: Box
    stbl: Box
    extras: dict = field(default_factory=dict)


def _split_boxes(data: bytes, path: str) -> list[tuple[bytes, bytes]]:
    """Split a payload into (type, payload) pairs; raises on sizes that overrun the payload."""
    out = []
    i = 0
    n = len(data)
    while i + 8 <= n:
        size, typ = struct.unpack(">I4s", data[i : i + 8])
        hdr = 8
        if size == 1:
            if i + 16 > n:
                raise MediaError(path, "truncated", "box header past end of parent")
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
            hdr = 16
        elif size == 0:
            size = n - i
        if size < hdr or i + size > n:
            raise MediaError(path, "truncated", f"box {typ!r} size {size} overruns its parent")
        out.append((typ, data[i + hdr : i + size]))
        i += size
    return out


def _sample_entry_prefix_len(handler: bytes, payload: bytes) -> int | None:
    if handler == b"vide":
        return _VIDEO_ENTRY_PREFIX
    if handler == b"soun":
        if len(payload) < 28:
            return None
        version = struct.unpack(">H", payload[8:10])[0]
        return {0: 28, 1: 44, 2: 64}.get(version)
    return None


def _parse(typ: bytes, payload: bytes, path: str, handler: bytes = b"") -> Box:
    if typ in _CONTAINERS:
        return Box(typ, b"", [_parse(t, p, path, handler) for t, p in _split_boxes(payload, path)])
    if typ == b"stsd":
        return Box(
            typ, payload[:8], [_parse_entry(t, p, path, handler) for t, p in _split_boxes(payload[8:], path)]
        )
    return Box(typ, payload, None)


def _parse_entry(typ: bytes, payload: bytes, path: str, handler: bytes) -> Box:
    n = _sample_entry_prefix_len(handler, payload)
    if n is None or n > len(payload):
        return Box(typ, payload, None)
    try:
        kids = [_parse(t, p, path, handler) for t, p in _split_boxes(payload[n:], path)]
    except MediaError:
        return Box(typ, payload, None)  # vendor padding we do not understand: keep verbatim
    return Box(typ, payload[:n], kids)


def _handler_of(trak_payload_box: Box) -> bytes:
    mdia = trak_payload_box.find(b"mdia")
    hdlr = mdia.find(b"hdlr") if mdia else None
    if hdlr is None or len(hdlr.prefix) < 12:
        return b""
    return hdlr.prefix[8:12]


def _top_level(path: Path) -> list[_TopBox]:
    boxes = []
    size_total = path.stat().st_size
    with open(path, "rb") as f:
        off = 0
        while off + 8 <= size_total:
            f.seek(off)
            hdr = f.read(16)
            size, typ = struct.unpack(">I4s", hdr[:8])
            h = 8
            if size == 1:
                size = struct.unpack(">Q", hdr[8:16])[0]
                h = 16
            elif size == 0:
                size = size_total - off
            if size < h:
                raise MediaError(str(path), "unreadable", f"bad box size {size} at offset {off}")
            if off + size > size_total:
                raise MediaError(
                    str(path),
                    "truncated",
                    f"box {typ.decode('latin-1')!r} needs {off + size} bytes, file has {size_total}",
                )
            boxes.append(_TopBox(typ, off, size, h))
            off += size
    return boxes


def is_mp4(path: str | os.PathLike) -> bool:
    """True when the file starts like an ISO-BMFF/QuickTime file (``ftyp`` or ``moov``... box)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")


def check_complete(path: str | os.PathLike) -> None:
    """Raise ``MediaError(truncated)`` when a top-level box runs past the end of the file."""
    _top_level(Path(path))


def _read_moov(path: Path) -> tuple[list[_TopBox], _TopBox, Box]:
    tops = _top_level(path)
    moovs = [b for b in tops if b.type == b"moov"]
    if not moovs:
        raise MediaError(str(path), "truncated", "no moov box (an interrupted MP4 write?)")
    mv = moovs[0]
    with open(path, "rb") as f:
        f.seek(mv.offset + mv.header)
        payload = f.read(mv.size - mv.header)
    # parse traks with their handler type known, so sample entries get the right fixed prefix
    moov = Box(b"moov", b"", [])
    for typ, p in _split_boxes(payload, str(path)):
        if typ == b"trak":
            pre = _parse(typ, p, str(path))  # first pass: find hdlr
            handler = _handler_of(pre)
            moov.children.append(_parse(typ, p, str(path), handler))
        else:
            moov.children.append(Box(typ, p, None))
    return tops, mv, moov


def _tracks(moov: Box) -> list[_Track]:
    out = []
    for trak in moov.children or []:
        if trak.type != b"trak":
            continue
        handler = _handler_of(trak)
        stbl = None
        mdia = trak.find(b"mdia")
        minf = mdia.find(b"minf") if mdia else None
        stbl = minf.find(b"stbl") if minf else None
        stsd = stbl.find(b"stsd") if stbl else None
        if stsd is None or not stsd.children:
            continue
        out.append(_Track(handler, stsd.children[0], stbl))
    return out


def _decode_sa3d(payload: bytes) -> dict:
    if len(payload) < 12:
        raise ValueError("SA3D box too short")
    version, amb_type, order, ordering, norm, nch = struct.unpack(">BBIBBI", payload[:12])
    cmap = list(struct.unpack(f">{nch}I", payload[12 : 12 + 4 * nch])) if len(payload) >= 12 + 4 * nch else []
    return {
        "version": version,
        "ambisonic_type": amb_type,
        "ambisonic_order": order,
        "channel_ordering": _ORDERING.get(ordering, f"unknown({ordering})"),
        "normalization": _NORMALIZATION.get(norm, f"unknown({norm})"),
        "num_channels": nch,
        "channel_map": cmap,
    }


def _encode_sa3d(num_channels: int = 4, order: int = 1) -> Box:
    body = struct.pack(">BBIBBI", 0, 0, order, 0, 0, num_channels)
    body += struct.pack(f">{num_channels}I", *range(num_channels))
    return Box(b"SA3D", body, None)


def parse_sa3d(path: str | os.PathLike) -> dict | None:
    """The ``SA3D`` box of the first audio track of an MP4/MOV as a dict, or None.

    Keys: ``version, ambisonic_type, ambisonic_order, channel_ordering ("ACN"), normalization
    ("SN3D"/"N3D"), num_channels, channel_map``. Non-MP4 files return None (WebM/Ogg carry the
    ambisonic hint in the codec layout instead).
    """
    p = Path(path)
    if not p.exists():
        raise MediaError(str(p), "missing", "file does not exist")
    if not is_mp4(p):
        return None
    _, _, moov = _read_moov(p)
    for tr in _tracks(moov):
        if tr.handler != b"soun":
            continue
        box = tr.entry.find(b"SA3D")
        if box is not None:
            try:
                return _decode_sa3d(box.prefix)
            except (ValueError, struct.error) as e:
                raise MediaError(str(p), "bad_sa3d", str(e)) from e
    return None


def parse_spherical_video(path: str | os.PathLike) -> dict | None:
    """``st3d``/``sv3d`` of the first video track: ``{stereo_mode, projection, yaw, pitch, roll}``."""
    p = Path(path)
    if not is_mp4(p):
        return None
    _, _, moov = _read_moov(p)
    for tr in _tracks(moov):
        if tr.handler != b"vide":
            continue
        out: dict = {}
        st3d = tr.entry.find(b"st3d")
        if st3d is not None and len(st3d.prefix) >= 5:
            out["stereo_mode"] = _STEREO.get(st3d.prefix[4], str(st3d.prefix[4]))
        sv3d = tr.entry.find(b"sv3d")
        proj = sv3d.find(b"proj") if sv3d else None
        if proj is not None:
            prhd = proj.find(b"prhd")
            if prhd is not None and len(prhd.prefix) >= 16:
                y, pi, r = struct.unpack(">iii", prhd.prefix[4:16])
                out.update(yaw=y / 65536.0, pitch=pi / 65536.0, roll=r / 65536.0)
            if proj.find(b"equi") is not None:
                out["projection"] = "equirectangular"
            elif proj.find(b"cbmp") is not None:
                out["projection"] = "cubemap"
        return out or None
    return None


def _spherical_boxes(yaw: float, pitch: float, roll: float) -> list[Box]:
    st3d = Box(b"st3d", b"\x00\x00\x00\x00" + b"\x00", None)
    svhd = Box(b"svhd", b"\x00\x00\x00\x00" + b"biaudio\x00", None)
    prhd = Box(
        b"prhd",
        b"\x00\x00\x00\x00" + struct.pack(">iii", *(round(a * 65536) for a in (yaw, pitch, roll))),
        None,
    )
    equi = Box(b"equi", b"\x00\x00\x00\x00" + struct.pack(">IIII", 0, 0, 0, 0), None)
    sv3d = Box(b"sv3d", b"", [svhd, Box(b"proj", b"", [prhd, equi])])
    return [st3d, sv3d]


def _shift_chunk_offsets(stbl: Box, start: int, delta: int, path: str = "") -> None:
    for b in stbl.children or []:
        if b.type == b"stco":
            n = struct.unpack(">I", b.prefix[4:8])[0]
            offs = struct.unpack(f">{n}I", b.prefix[8 : 8 + 4 * n])
            new = [o + delta if o >= start else o for o in offs]
            if max(new, default=0) > 0xFFFFFFFF:
                raise MediaError(path or None, "too_large", "stco offset overflow after injection; use co64")
            b.prefix = b.prefix[:8] + struct.pack(f">{n}I", *new) + b.prefix[8 + 4 * n :]
        elif b.type == b"co64":
            n = struct.unpack(">I", b.prefix[4:8])[0]
            offs = struct.unpack(f">{n}Q", b.prefix[8 : 8 + 8 * n])
            new = [o + delta if o >= start else o for o in offs]
            b.prefix = b.prefix[:8] + struct.pack(f">{n}Q", *new) + b.prefix[8 + 8 * n :]


def _probe_channels(p: Path) -> int:
    for s in run_ffprobe(p).get("streams", []):
        if s.get("codec_type") == "audio":
            return int(s.get("channels") or 0)
    return 0


def inject_spatial_metadata(
    mp4_path: str | os.PathLike,
    ambix: bool = True,
    projection: bool = True,
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> None:
    """Add ``SA3D`` (first-order ambiX, ACN/SN3D, identity channel map) to the audio sample entry
    and ``st3d`` + ``sv3d`` (equirectangular, ``pose`` yaw/pitch/roll) to the video sample entry,
    in place (temp file in the same folder, then ``os.replace``). Existing boxes of those types
    are replaced, so injecting twice is harmless."""
    p = Path(mp4_path)
    if not p.exists():
        raise MediaError(str(p), "missing", "file does not exist")
    if not is_mp4(p):
        raise MediaError(str(p), "not_mp4", "spatial metadata can only be injected into MP4/MOV")
    tops, mv, moov = _read_moov(p)
    tracks = _tracks(moov)
    done_audio = done_video = False
    for tr in tracks:
        if tr.entry.children is None:
            continue
        if tr.handler == b"soun" and ambix and not done_audio:
            # the sample entry's channelcount is 2 for any AAC/Opus in MP4; the real count is in
            # the codec config, which ffprobe decodes for us
            nch = _probe_channels(p)
            if nch != 4:
                raise MediaError(
                    str(p), "not_4_channels", f"audio has {nch} channels; SA3D first order needs 4"
                )
            tr.entry.children = [c for c in tr.entry.children if c.type != b"SA3D"] + [_encode_sa3d(nch)]
            done_audio = True
        elif tr.handler == b"vide" and projection and not done_video:
            tr.entry.children = [c for c in tr.entry.children if c.type not in (b"st3d", b"sv3d")]
            tr.entry.children += _spherical_boxes(*pose)
            done_video = True
    if ambix and not done_audio:
        raise MediaError(str(p), "no_audio", "no audio sample entry to carry SA3D")
    if projection and not done_video:
        raise MediaError(str(p), "no_video", "no video sample entry to carry sv3d")
    new_moov = moov.serialize()
    delta = len(new_moov) - mv.size
    if delta and any(b.type == b"mdat" and b.offset > mv.offset for b in tops):
        for tr in tracks:
            _shift_chunk_offsets(tr.stbl, mv.offset, delta, str(p))
        new_moov = moov.serialize()
    with atomic_path(p, mode=p.stat().st_mode & 0o777) as tmp, open(tmp, "wb") as out, open(p, "rb") as src:
        for b in tops:
            if b is mv:
                out.write(new_moov)
                continue
            src.seek(b.offset)
            remaining = b.size
            while remaining:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    raise MediaError(str(p), "truncated", "file shrank while injecting")
                out.write(chunk)
                remaining -= len(chunk)
