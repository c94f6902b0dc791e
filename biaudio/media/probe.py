"""``ffprobe`` JSON -> :class:`ProbeInfo`, the one description of a media file the pipeline uses.

Why ffprobe and not PyAV: PyAV exposes no stream side data, and the "Spherical Mapping" side data
is how we know a video is equirectangular. ffprobe does not report the MP4 ``SA3D`` box, so for
MP4/MOV the box is parsed here too (``sa3d.py``; running ffprobe itself is ``ffprobe.py``, which
both use, so neither imports the other). ffprobe happily reports a duration for a WebM
or MP4 whose tail is missing, so the container structure is checked for truncation as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from biaudio.errors import MediaError
from biaudio.media import sa3d as _sa3d
from biaudio.media.ffprobe import run_ffprobe


@dataclass
class ProbeInfo:
    """What a file holds. ``foa_hint`` is "ambix" only with positive evidence (Opus family-2
    "ambisonic" layout or an ACN/SN3D ``SA3D`` box); 4 channels alone prove nothing."""

    path: str
    duration_s: float
    format_name: str
    has_video: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    n_frames: int | None = None
    video_codec: str | None = None
    projection: str | None = None
    projection_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stereo_mode: str | None = None
    has_audio: bool = False
    audio_codec: str | None = None
    audio_channels: int | None = None
    audio_layout: str | None = None
    sample_rate: int | None = None
    foa_hint: str | None = None
    sa3d: dict | None = None
    # extras (not in the contract, handy for callers)
    n_frames_estimated: bool = False
    n_audio_streams: int = 0
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_equirect_hint(self) -> bool:
        """Spherical metadata says equirectangular, or (weaker) the frame is 2:1."""
        if self.projection == "equirectangular":
            return True
        return bool(self.width and self.height and abs(self.width / self.height - 2.0) < 0.02)


def _fps(s: dict) -> float | None:
    for key in ("avg_frame_rate", "r_frame_rate"):
        v = s.get(key)
        if v and v not in ("0/0", "0/1"):
            try:
                f = float(Fraction(v))
            except (ValueError, ZeroDivisionError):
                continue
            if f > 0:
                return f
    return None


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _tag_duration(s: dict) -> float | None:
    """Matroska stores per-stream durations as a ``DURATION`` tag ``HH:MM:SS.nnnnnnnnn``."""
    tags = {k.upper(): v for k, v in (s.get("tags") or {}).items()}
    d = tags.get("DURATION")
    if not d:
        return None
    try:
        h, m, sec = d.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def _check_matroska_complete(p: Path) -> None:
    """The EBML Segment element states its size; a shorter file lost its tail."""
    size_total = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(4096)

    def vint(buf: bytes, i: int, keep_marker: bool) -> tuple[int, int]:
        if i >= len(buf):
            raise IndexError
        b0 = buf[i]
        n = 1
        mask = 0x80
        while n <= 8 and not (b0 & mask):
            n += 1
            mask >>= 1
        if n > 8 or i + n > len(buf):
            raise IndexError
        val = b0 if keep_marker else (b0 & (mask - 1))
        for k in range(1, n):
            val = (val << 8) | buf[i + k]
        unknown = (not keep_marker) and val == (1 << (7 * n)) - 1
        return (-1 if unknown else val), i + n

    try:
        i = 0
        while i < len(head):
            eid, i = vint(head, i, True)
            esize, i = vint(head, i, False)
            if eid == 0x18538067:  # Segment
                if esize >= 0 and i + esize > size_total:
                    raise MediaError(
                        str(p),
                        "truncated",
                        f"Matroska segment needs {i + esize} bytes, file has {size_total}",
                    )
                return
            if esize < 0:
                return
            i += esize
    except IndexError:
        return


def probe(path: str | os.PathLike) -> ProbeInfo:
    """Probe one file. Raises MediaError: missing, empty, unreadable, truncated, no_streams."""
    p = Path(path)
    return probe_from_dict(p, run_ffprobe(p))


def probe_from_dict(p: Path, d: dict) -> ProbeInfo:
    """ProbeInfo from ffprobe-shaped JSON (ffprobe's own, or ffmpeg's input dump parsed by
    :mod:`biaudio.media.header`), plus the container checks done here in Python (MP4/Matroska
    truncation, the MP4 ``SA3D`` box)."""
    p = Path(p)
    streams = d.get("streams") or []
    fmt = d.get("format") or {}
    fmt_name = fmt.get("format_name", "")
    is_mp4 = _sa3d.is_mp4(p)
    if is_mp4:  # a cut file can still report streams and a duration: check the structure first
        _sa3d.check_complete(p)
    elif "matroska" in fmt_name:
        _check_matroska_complete(p)
    if not streams:
        raise MediaError(str(p), "no_streams", "ffprobe found no audio or video stream")

    duration = _float(fmt.get("duration"))
    video = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if duration is None:
        cands = [_float(s.get("duration")) or _tag_duration(s) for s in video + audio]
        cands = [c for c in cands if c]
        duration = max(cands) if cands else 0.0

    info = ProbeInfo(
        path=str(p), duration_s=float(duration), format_name=fmt_name, has_video=bool(video), raw=d
    )
    if video:
        _fill_video(info, video[0])
    if audio:
        _fill_audio(info, audio)
    if is_mp4:
        _fill_mp4_boxes(info, p)
    return info


def _fill_video(info: ProbeInfo, v: dict) -> None:
    """Size, codec, fps, frame count (counted, else estimated) and the spherical/stereo side data
    of the first video stream."""
    info.width, info.height = v.get("width"), v.get("height")
    info.video_codec = v.get("codec_name")
    info.fps = _fps(v)
    nb = v.get("nb_frames")
    if nb and str(nb).isdigit() and int(nb) > 0:
        info.n_frames = int(nb)
    elif info.fps:
        vdur = _float(v.get("duration")) or _tag_duration(v) or info.duration_s
        info.n_frames = int(round(vdur * info.fps))
        info.n_frames_estimated = True
    for sd in v.get("side_data_list") or []:
        t = sd.get("side_data_type", "")
        if t == "Spherical Mapping":
            info.projection = sd.get("projection")
            info.projection_pose = (
                float(sd.get("yaw", 0) or 0),
                float(sd.get("pitch", 0) or 0),
                float(sd.get("roll", 0) or 0),
            )
        elif t == "Stereo 3D":
            info.stereo_mode = sd.get("type")


def _fill_audio(info: ProbeInfo, audio: list[dict]) -> None:
    """Codec, channels, layout and rate of the first audio stream; an ambisonic 4-channel layout
    hints ambiX."""
    a = audio[0]
    info.has_audio = True
    info.n_audio_streams = len(audio)
    info.audio_codec = a.get("codec_name")
    info.audio_channels = a.get("channels")
    info.audio_layout = a.get("channel_layout")
    sr = a.get("sample_rate")
    info.sample_rate = int(sr) if sr and str(sr).isdigit() else None
    if info.audio_layout and "ambisonic" in info.audio_layout and info.audio_channels == 4:
        info.foa_hint = "ambix"


def _fill_mp4_boxes(info: ProbeInfo, p: Path) -> None:
    """What the MP4 boxes say that ffprobe may not: ``SA3D`` (ACN/SN3D first order hints ambiX) and
    ``sv3d`` when ffprobe reported no projection."""
    info.sa3d = _sa3d.parse_sa3d(p)
    if (
        info.sa3d
        and info.sa3d.get("channel_ordering") == "ACN"
        and info.sa3d.get("normalization") == "SN3D"
    ):
        if info.sa3d.get("ambisonic_order") == 1 and info.audio_channels == 4:
            info.foa_hint = "ambix"
    if info.has_video and info.projection is None:
        sph = _sa3d.parse_spherical_video(p)  # in case an ffprobe build ignores sv3d
        if sph and sph.get("projection"):
            info.projection = sph["projection"]
            info.projection_pose = (sph.get("yaw", 0.0), sph.get("pitch", 0.0), sph.get("roll", 0.0))
            info.stereo_mode = info.stereo_mode or sph.get("stereo_mode")
