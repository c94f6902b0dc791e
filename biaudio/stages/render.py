"""Render one clip: perspective video + binaural audio along the *same* camera trajectory, + a QA preview.

Why one module for both: the dataset's value is that picture and sound agree. The video frames and
the binaural rotation use the same per-frame poses at the same frame times (``traj.t``), so a source
seen on the right of the image is heard louder in the right ear (docs/ARCHITECTURE.md, conventions §7;
checked by tests/biaudio/spatial/test_projection.py).

Memory and speed: source frames are streamed once per clip, either from a branch of the source's
analysis decode (:meth:`ClipRender.branch`, the build's default) or from a decode of the window alone
(:func:`render_clip`: ``iter_frames`` with ``-ss`` before ``-i``), resampled to the output fps and, when
denser than ~2x the output's pixel density, pre-downscaled by ffmpeg's area filter, as planar yuv420p, projected plane by plane and piped to
x264 in the same format (no colour conversion anywhere, the source's colour tags are kept), and
encoded as they are made; at no time are more than a couple of frames in memory, whatever the
input size. The mux copies the H.264 stream and only encodes the AAC. Decoder and encoder run with
one thread each by default (a worker per core; decoder, projection and encoder already overlap).

Files (all via temporary names and ``os.replace``, so a crash never leaves a half file under a
final name): ``clips/<clip_id>.mp4`` (H.264 + AAC binaural), ``clips/<clip_id>.flac`` (binaural,
lossless, row 0 = left) and ``previews/<clip_id>.jpg`` (the equirect with the camera path, the view
rectangle at the start and the dominant-direction track drawn on it, by :mod:`biaudio.stages.preview`;
the render only supplies the thumbnail, from a frame it decodes anyway).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from biaudio.errors import BiaudioError, MediaError
from biaudio.stages.preview import thumbnail, view_outline, write_preview  # noqa: F401 (view_outline: re-exported)
from biaudio.stages.trajectory import Trajectory, frame_times

log = logging.getLogger(__name__)
STAGE = "render"


class RenderConfig(BaseModel):
    """Recipe section ``render`` (paper: 90° horizontal FOV; size/fps/rate are our parameters)."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(640, gt=0)
    height: int = Field(360, gt=0)
    hfov_deg: float = Field(90.0, gt=0, lt=180)
    fps_cap: float = Field(30.0, gt=0)
    """Output fps = min(source fps, fps_cap); source frames are resampled in time by ffmpeg."""
    sample_rate: int = Field(48000, gt=0)
    hrtf: str = "kemar"
    """``kemar`` (MIT KEMAR from slab), a path to a .sofa file, or the Omnitone wav for ``omnitone``."""
    decoder: str = "magls"
    """``magls`` | ``cube`` | ``omnitone`` (biaudio.spatial.decoders)."""
    crf: int = Field(20, ge=0, le=51)
    preset: str = "veryfast"
    audio_bitrate: str = "192k"
    aac_coder: Literal["fast", "twoloop"] = "fast"
    """AAC coder of the mp4's audio; intensity stereo and PNS are always off (they rewrite the
    interaural cues above ~8 kHz, see ``biaudio.media.video.aac_args``). The FLAC is the lossless copy."""
    peak_limit: float = Field(0.99, gt=0, le=1.0)
    """A clip whose binaural peak exceeds this is scaled down (both ears alike: cues kept, no clipping)."""
    preview_width: int = Field(640, ge=64)
    """Width of the QA preview (equirect thumbnail; its height follows the source aspect)."""
    preview_quality: int = Field(85, ge=10, le=100)

    @field_validator("width", "height")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even for H.264 yuv420p, got {v}")
        return v


@dataclass
class RenderedClip:
    video_path: Path
    audio_path: Path
    preview_path: Path | None
    num_frames: int
    fps: float
    width: int
    height: int
    binaural: np.ndarray
    gain: float = 1.0

    @property
    def bytes_written(self) -> int:
        return sum(p.stat().st_size for p in (self.video_path, self.audio_path, self.preview_path)
                   if p is not None and p.exists())


def output_fps(source_fps: float | None, cfg: RenderConfig) -> float:
    """``min(source fps, fps_cap)``; a source with unknown fps gets the cap."""
    if not source_fps or not np.isfinite(source_fps) or source_fps <= 0:
        return float(cfg.fps_cap)
    return float(min(float(source_fps), cfg.fps_cap))


def clip_paths(out_dir: Path, clip_id: str) -> tuple[Path, Path, Path]:
    """Final ``(mp4, flac, jpg)`` paths of a clip."""
    out_dir = Path(out_dir)
    return (out_dir / "clips" / f"{clip_id}.mp4", out_dir / "clips" / f"{clip_id}.flac",
            out_dir / "previews" / f"{clip_id}.jpg")


def remove_clip_files(out_dir: Path, clip_id: str) -> None:
    """Delete whatever a failed or rejected clip left (a rejected clip leaves no files)."""
    for p in clip_paths(out_dir, clip_id):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def render_binaural_along(foa_ambix: np.ndarray, sr: int, traj: Trajectory, cfg: RenderConfig) -> np.ndarray:
    """Binaural ``(2, T)`` float32 at ``cfg.sample_rate`` heard by the camera of ``traj``.

    Separate from :func:`render_clip` so the pipeline can run the (cheap) spatial-cue filter before
    spending time on video.
    """
    from biaudio.spatial.binaural import render_binaural
    from biaudio.spatial.decoders import get_decoder

    x = np.asarray(foa_ambix, dtype=np.float32)
    if sr != cfg.sample_rate:
        from biaudio.media.audio import resample_audio

        x = resample_audio(x, int(sr), cfg.sample_rate)
        sr = cfg.sample_rate
    dec = get_decoder(cfg.hrtf, cfg.decoder, int(sr))
    return np.asarray(render_binaural(x, int(sr), traj.t, traj.yaw, traj.pitch, traj.roll, dec), dtype=np.float32)


def _probe_field(probe: Any, name: str, default: Any = None) -> Any:
    if isinstance(probe, dict):
        return probe.get(name, default)
    return getattr(probe, name, default)


def _frame_info(probe: Any) -> Any:
    """The probe as ``iter_frames`` reads it (a real ProbeInfo, or None so that it probes itself)."""
    from biaudio.media.probe import ProbeInfo

    return probe if isinstance(probe, ProbeInfo) else None


_COLOR_TAGS = (("color_space", "-colorspace"), ("color_primaries", "-color_primaries"),
               ("color_transfer", "-color_trc"), ("color_range", "-color_range"))


def _color_args(probe: Any) -> list[str]:
    """x264 VUI colour tags copied from the source video stream (yuv passes through unconverted)."""
    raw = _probe_field(probe, "raw") or {}
    video = next((st for st in raw.get("streams", []) if st.get("codec_type") == "video"), {})
    args: list[str] = []
    for key, opt in _COLOR_TAGS:
        v = video.get(key)
        if isinstance(v, str) and v.replace("-", "").replace("_", "").isalnum() and v not in ("unknown", "reserved"):
            args += [opt, v]
    return args


def render_clip(
    src_path: str | Path,
    start_s: float,
    duration_s: float,
    foa_ambix: np.ndarray,
    sr: int,
    traj: Trajectory,
    cfg: RenderConfig,
    out_dir: str | Path,
    clip_id: str,
    probe: Any,
    *,
    binaural: np.ndarray | None = None,
    directions: tuple[np.ndarray, np.ndarray] | None = None,
    clip_dir: tuple[float, float] | None = None,
    threads: int = 1,
) -> RenderedClip:
    """Render the clip ``[start_s, start_s + duration_s)`` of ``src_path`` along ``traj``.

    ``foa_ambix`` is the clip's world-frame ambiX FOA at ``sr``; ``binaural`` may be passed when
    already computed (same trajectory). ``directions`` ``(az, el)`` arrays and ``clip_dir`` are drawn
    on the preview. ``probe`` is the source's ProbeInfo (fps, size, projection pose). ``threads``
    is given to the ffmpeg decoder and to x264 (1: a worker per core, the decoder, the projection and
    the encoder already run side by side as three processes).

    The window is decoded by its own ffmpeg process here; the build usually renders inside the
    analysis decode instead (:class:`ClipRender` as a branch of ``biaudio.media.multidecode.shared_decode``),
    with the same frames and so the same bytes.
    """
    from biaudio.media.video import iter_frames

    job = ClipRender(src_path, start_s, duration_s, foa_ambix, sr, traj, cfg, out_dir, clip_id, probe,
                     binaural=binaural, directions=directions, clip_dir=clip_dir, threads=threads)
    snap = None
    if job.crop is not None:
        snap_path = job.jpg.with_name(f".{clip_id}.mid.tmp-{os.getpid()}.rgb")
        snap = (job.mid, snap_path, job.preview_size)
    try:
        job.open()
        frames = iter_frames(job.src_path, size=job.size, fps=job.fps, start_s=start_s, duration_s=duration_s,
                             pix_fmt=job.pix_fmt, threads=threads, info=_frame_info(probe), crop=job.crop,
                             snapshot=snap)
        for frame in frames:
            job.push(frame)  # frames past the window are read and dropped: the snapshot comes at ffmpeg's exit
        frames.close()
        raw = snap[1].read_bytes() if snap is not None and snap[1].exists() else None
        return job.finish(raw)
    except BaseException:
        job.abort()
        raise
    finally:
        if snap is not None and snap[1].exists():
            snap[1].unlink()


class ClipRender:
    """One clip's render, fed decoded source frames one at a time.

    Set-up (projector, the crop of the equirect the whole trajectory looks at, pixel format,
    preview frame), then ``open()`` (the FLAC, then the x264 encoder that muxes it as AAC),
    ``push(frame)`` per decoded frame (projected and piped to x264; the encoder is closed as soon
    as the last frame of the window is in), ``finish(snapshot)`` (frames the decoder did not
    deliver at the very end are repeats of the last one, the preview is written) or ``abort()``
    (no file left). Frames come either from :func:`render_clip`'s own decode of the window or
    from a branch of the source's analysis decode (:meth:`branch`), which delivers the same
    frames: ``trim`` + ``setpts`` in the graph equal ``-ss`` before ``-i``.
    """

    def __init__(self, src_path: str | Path, start_s: float, duration_s: float, foa_ambix: np.ndarray | None,
                 sr: int, traj: Trajectory, cfg: RenderConfig, out_dir: str | Path, clip_id: str, probe: Any, *,
                 binaural: np.ndarray | None = None, directions: tuple[np.ndarray, np.ndarray] | None = None,
                 clip_dir: tuple[float, float] | None = None, threads: int = 1) -> None:
        from biaudio.spatial.projection import Projector

        self.src_path, self.out_dir = Path(src_path), Path(out_dir)
        self.start_s, self.duration_s = float(start_s), float(duration_s)
        self.traj, self.cfg, self.clip_id, self.threads = traj, cfg, clip_id, threads
        self.directions, self.clip_dir, self._info = directions, clip_dir, _frame_info(probe)
        self.fps = output_fps(_probe_field(probe, "fps"), cfg)
        self.n = len(frame_times(duration_s, self.fps))
        if len(traj) != self.n:
            raise BiaudioError(str(self.src_path), "trajectory_mismatch",
                               f"{len(traj)} poses for {self.n} frames at {self.fps:g} fps", STAGE)
        in_w, in_h = _probe_field(probe, "width"), _probe_field(probe, "height")
        if not in_w or not in_h:
            raise MediaError(str(self.src_path), "no_video", "probe has no frame size", STAGE)
        self.pose = tuple(float(a) for a in (_probe_field(probe, "projection_pose") or (0.0, 0.0, 0.0)))
        if binaural is None:
            binaural = render_binaural_along(foa_ambix, sr, traj, cfg)
        from biaudio.media.audio import peak_gain

        self.gain = peak_gain(binaural, cfg.peak_limit)
        if self.gain != 1.0:
            binaural = (binaural * self.gain).astype(np.float32)
        self.binaural = binaural
        self.mp4, self.flac, self.jpg = clip_paths(self.out_dir, clip_id)
        # ffmpeg decodes the window once (fps filter to the output rate) and does the pre-downscale
        # (area filter), so the pipe carries only what the maps sample
        probe_proj = Projector(cfg.width, cfg.height, cfg.hfov_deg, int(in_w), int(in_h), prescale=True)
        src_w, src_h = probe_proj.source_size
        proj = Projector(cfg.width, cfg.height, cfg.hfov_deg, src_w, src_h, prescale=False, projection_pose=self.pose)
        self._src_wh = (src_w, src_h)
        self.size = None if (src_w, src_h) == (int(in_w), int(in_h)) else (src_w, src_h)
        # planar yuv420p end to end (decoder -> remap per plane -> encoder): half the pipe bytes of
        # rgb24 and no colour conversion; the source's colour tags are passed on to the H.264 stream
        self.yuv = src_w % 2 == 0 and src_h % 2 == 0
        self.pix_fmt = "yuv420p" if self.yuv else "rgb24"
        self._writer_args = _color_args(probe) if self.yuv else []
        self.mid = self.n // 2
        # only the part of the equirect the whole trajectory looks at travels through the pipe; the
        # preview (the whole equirect at the window's middle frame) comes from the same decode
        self.crop = proj.source_crop(traj.yaw, traj.pitch, traj.roll) if self.yuv else None
        # the projector (its ray grids, ~4 MB) exists only while the clip is being rendered: a long
        # source plans many clips at once, rendered one after the other as the decode reaches them
        self._render = None
        pw = cfg.preview_width
        self.preview_size = (pw, max(2, int(round(pw * src_h / src_w))))
        self._vw = None
        self.k = 0
        self._last: np.ndarray | None = None
        self._complete = False  # every frame of the window is in (and the encoder closed)
        self._preview_src: np.ndarray | None = None
        self.error: BaseException | None = None
        self.render_s = 0.0

    # -- as a branch of the source's analysis decode ------------------------------------------
    @property
    def can_branch(self) -> bool:
        """Only the cropped yuv420p path rides along in another decode (the rare rgb24 path of
        odd-sized sources keeps its own decode)."""
        return self.crop is not None

    def branch(self):
        """This clip as a :class:`biaudio.media.multidecode.VideoBranch`: the window's frames (exact ``-ss``
        semantics: ``trim`` from the start time, timestamps shifted to 0, then the output fps, the
        pre-downscale and the crop) and the preview frame. Sink errors are kept in ``error`` (the
        sink goes on reading, so the shared decoder never blocks)."""
        from biaudio.media.multidecode import VideoBranch
        from biaudio.media.video import crop_filter, frame_filters, snapshot_graph

        _, _, cw, ch = (int(v) for v in self.crop)
        sw, sh = self.preview_size
        t0, dur = f"{self.start_s:.6f}", f"{self.duration_s:.6f}"
        # render_clip's own decode (iter_frames) uses the same filters after `-ss t0 -i`
        pre = [("trim", {"start": t0}), ("setpts", f"PTS-{t0}/TB"), *frame_filters(self.fps, size=self.size)]

        def build(video) -> dict:
            return snapshot_graph(video, pre, [crop_filter(self.crop)], self.mid, self.preview_size)

        self.snapshot: bytes | None = None

        def on_frame(i: int, buf) -> None:
            if self.error is not None:
                return
            try:
                if self._vw is None and self.k == 0:
                    self.open()
                self.push(np.frombuffer(buf, np.uint8).reshape(ch * 3 // 2, cw))
            except BaseException as e:  # noqa: BLE001 - reported by finish(); the decode must go on
                self.error = e

        def on_snapshot(i: int, buf) -> None:
            self.snapshot = bytes(buf)

        outs = [("so", {"t": dur, "frames:v": "1", "f": "rawvideo", "pix_fmt": "rgb24"}, sw * sh * 3, on_snapshot),
                ("mo", {"t": dur, "f": "rawvideo", "pix_fmt": "yuv420p"}, cw * ch * 3 // 2, on_frame)]
        return VideoBranch(self.clip_id, build, outs)

    # -- the render ---------------------------------------------------------------------------
    def open(self) -> None:
        """The lossless audio first: the video encoder muxes it in as AAC in the same process."""
        from biaudio.media.audio import write_audio
        from biaudio.media.video import VideoWriter
        from biaudio.spatial.projection import Projector

        cfg = self.cfg
        self.mp4.parent.mkdir(parents=True, exist_ok=True)
        self.jpg.parent.mkdir(parents=True, exist_ok=True)
        write_audio(self.flac, self.binaural, cfg.sample_rate)
        proj = Projector(cfg.width, cfg.height, cfg.hfov_deg, *self._src_wh, prescale=False, projection_pose=self.pose)
        proj.set_crop(self.crop)
        self._render = proj.render_i420 if self.yuv else proj.render
        self._vw = VideoWriter(self.mp4, cfg.width, cfg.height, self.fps, crf=cfg.crf, preset=cfg.preset,
                               threads=self.threads, pix_fmt=self.pix_fmt, extra_args=self._writer_args,
                               audio=self.flac, audio_bitrate=cfg.audio_bitrate, aac_coder=cfg.aac_coder)

    def _write(self, frame: np.ndarray) -> None:
        t = self.traj
        k = self.k
        self._vw.write(self._render(frame, t.yaw[k], t.pitch[k], t.roll[k]))
        if k == self.mid and self.crop is None:
            self._preview_src = thumbnail(frame, self.cfg.preview_width, self.yuv)
        self.k += 1

    def push(self, frame: np.ndarray) -> None:
        """One decoded frame; frames past the window's last are dropped. The encoder closes at the
        last frame (its file is complete then), so a long source never has many encoders open."""
        if self.k >= self.n:
            return
        t0 = time.perf_counter()
        self._write(frame)
        self._last = frame
        if self.k == self.n:
            self._vw.close()
            self._render = None  # done: free the projector
            self._complete = True
            if self.crop is not None:
                self._last = None  # not needed any more: the preview is the snapshot frame
        self.render_s += time.perf_counter() - t0

    def finish(self, snapshot: bytes | None = None) -> RenderedClip:
        """Close the clip: repeat the last frame if the decoder delivered a frame or two fewer than
        ``floor(d * fps)`` (ffmpeg's fps filter at the end of a stream), write the preview."""
        if self.error is not None:
            raise self.error
        k, n = self.k, self.n
        if not self._complete and (self._last is None or n - k > max(2, int(0.05 * n))):
            raise MediaError(str(self.src_path), "truncated", f"decoded {k} of {n} frames", STAGE)
        while self.k < n:
            self._write(self._last)
        self._vw.close()
        self._render = None
        preview_src = self._preview_src
        if self.crop is not None:
            pw, ph = self.preview_size
            if snapshot is not None and len(snapshot) == pw * ph * 3:
                preview_src = np.frombuffer(snapshot, np.uint8).reshape(ph, pw, 3)
            else:  # no frame `mid` (a short decode): the last full frame's thumbnail, decoded alone
                log.debug("%s: no snapshot frame %d (%d bytes); preview decoded separately", self.clip_id, self.mid,
                          len(snapshot or b""))
                preview_src = _last_full_thumb(self.src_path, self.start_s, self.duration_s, self.size,
                                               self.cfg.preview_width, self.threads, self._info)
        if preview_src is None:
            preview_src = thumbnail(self._last, self.cfg.preview_width, self.yuv)
        write_preview(self.jpg, preview_src, self.traj, self.cfg, self.pose, self.directions, self.clip_dir)
        return RenderedClip(self.mp4, self.flac, self.jpg, n, self.fps, self.cfg.width, self.cfg.height,
                            self.binaural, self.gain)

    def abort(self) -> None:
        """Stop the encoder and delete every file of the clip."""
        if self._vw is not None:
            self._vw.abort()
        remove_clip_files(self.out_dir, self.clip_id)


# -- preview (drawn by biaudio.stages.preview) -----------------------------------------------------


def _last_full_thumb(src_path, start_s, duration_s, size, width, threads, probe) -> np.ndarray:
    """Preview thumbnail from the last frame of the window, decoded uncropped (rare fallback)."""
    import collections

    from biaudio.media.video import iter_frames

    tail = collections.deque(iter_frames(src_path, size=size, start_s=max(0.0, start_s + duration_s - 0.5),
                                         duration_s=0.5, threads=threads, info=_frame_info(probe)), maxlen=1)
    last = tail[0] if tail else None
    if last is None:
        raise MediaError(str(src_path), "truncated", "no frame for the preview", STAGE)
    return thumbnail(last, width)
