"""Streaming frame decode, an H.264 writer and an H.264 + AAC stereo muxer, all over ffmpeg pipes.

Why pipes: a 10-s 1920x960 clip is ~1.6 GB as raw RGB; ``iter_frames`` reads exactly one frame
from the pipe per ``next()`` so memory stays at one frame whatever the clip length. Writers go to
a temp file in the destination folder and are renamed on success, so a crash never leaves a
half-written mp4 under the final name.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import ffmpeg
import numpy as np

from biaudio.atomic import atomic_path, file_mode
from biaudio.errors import MediaError
from biaudio.media.ffgraph import chain, command, popen, run, source, stdin_source, url
from biaudio.media.ffpath import write_failure
from biaudio.media.probe import probe

#: output options that keep container and codec headers free of version strings and metadata, so the
#: same input gives the same bytes
BITEXACT = {"fflags": "+bitexact", "flags:v": "+bitexact", "flags:a": "+bitexact", "map_metadata": "-1"}

AAC_CODERS = ("fast", "twoloop")


def aac_args(bitrate: str = "192k", coder: str = "fast") -> dict[str, str]:
    """ffmpeg output options (ffmpeg-python keywords) for an AAC track that keeps interaural cues.

    Why: ffmpeg's AAC encoder codes high bands with intensity stereo (one channel as a scaled copy
    of the other) and perceptual noise substitution by default; both rewrite exactly what binaural
    audio is about. Measured on a rendered Sphere360 clip at 192k against its FLAC (8-16 kHz,
    energy-weighted): defaults 4.3 dB ILD / 49° IPD error, with both off 2.1 dB / 16° (below 8 kHz
    all settings stay under 0.8 dB / 5°). The ``fast`` coder is ~3x cheaper than the default
    ``twoloop`` (0.11 vs 0.33 s CPU for 8 s) at equal or better cue error at this bitrate.
    """
    if coder not in AAC_CODERS:
        raise ValueError(f"AAC coder must be one of {AAC_CODERS}, got {coder!r}")
    return {"c:a": "aac", "b:a": str(bitrate), "aac_coder": coder, "aac_is": "0", "aac_pns": "0"}


class _StderrDrain:
    """Read a pipe's stderr in a thread so ffmpeg never blocks on a full stderr pipe."""

    def __init__(self, stream) -> None:
        self.chunks: list[bytes] = []
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream) -> None:
        for line in iter(stream.readline, b""):
            if len(self.chunks) < 200:
                self.chunks.append(line)
        stream.close()

    def text(self) -> str:
        self._t.join(timeout=5)
        return b"".join(self.chunks).decode("utf-8", "replace")


def _read_into(stream, out: np.ndarray) -> int:
    """Fill ``out`` (contiguous uint8) from ``stream`` without intermediate copies; bytes read."""
    mv = memoryview(out).cast("B")
    got, n = 0, len(mv)
    while got < n:
        k = stream.readinto(mv[got:])
        if not k:
            break
        got += k
    return got


def frame_filters(fps: float | None = None, band: float = 1.0, size: tuple[int, int] | None = None) -> list[tuple]:
    """The filters of :func:`iter_frames` before any crop (for :func:`biaudio.media.ffgraph.chain`):
    output fps, the central ``band`` of the rows, the area-filter scale to ``size``. Shared with the
    build's branches of the analysis decode (``biaudio.stages.render.ClipRender.branch``), whose
    frames must equal these."""
    filters: list[tuple] = []
    if fps:
        filters.append(("fps", fps))
    if band < 1:
        filters.append(("crop", "iw", f"trunc(ih*{band:g}/2)*2"))
    if size:
        filters.append(("scale", int(size[0]), int(size[1]), {"flags": "area"}))
    return filters


def crop_filter(crop: tuple[int, int, int, int]) -> tuple:
    """``crop=(x0, y0, w, h)`` as an exact ffmpeg crop (no rounding to chroma alignment)."""
    cx, cy, cw, ch = (int(v) for v in crop)
    return ("crop", cw, ch, cx, cy, {"exact": 1})


def snapshot_graph(stream, pre: list[tuple], post: list[tuple], k: int, snap_size: tuple[int, int]) -> dict:
    """``pre`` applied to ``stream``, then a split into the main stream (``post`` applied, key
    ``"mo"``) and frame ``k`` scaled to ``snap_size`` (key ``"so"``): ffmpeg-python streams."""
    sw, sh = (int(v) for v in snap_size)
    sp = chain(stream, pre).split()
    snap = sp[1].filter("select", f"eq(n,{int(k)})").filter("scale", sw, sh, flags="area")
    return {"mo": chain(sp[0], post), "so": snap}


def _frames_command(p: Path, fmt: str, filters: list[tuple], post: list[tuple], start_s: float,
                    duration_s: float | None, threads: int | None, snapshot) -> list[str]:
    """The ffmpeg command of :func:`iter_frames`: ``-ss`` before ``-i``, ``-t`` per output, frames
    to stdout, the optional snapshot to its file."""
    in_opts = {"threads": str(int(threads))} if threads else {}
    if start_s:
        in_opts["ss"] = f"{float(start_s):.6f}"
    video = source(p, **in_opts)["v:0"]
    tdur = {"t": f"{float(duration_s):.6f}"} if duration_s is not None else {}  # per output file
    raw = {"f": "rawvideo", "pix_fmt": fmt}
    if snapshot is None:
        out = ffmpeg.output(chain(video, [*filters, *post]), "-", **tdur, **raw)
        return command(out, loglevel="warning", filter_threads=threads)
    k, snap_path, snap_size = int(snapshot[0]), Path(snapshot[1]), snapshot[2]
    st = snapshot_graph(video, filters, post, k, snap_size)
    # ffmpeg writes the snapshot out only when it finishes: read the frames to the end
    outs = [ffmpeg.output(st["so"], url(snap_path), **tdur, **{"frames:v": "1"}, f="rawvideo", pix_fmt="rgb24"),
            ffmpeg.output(st["mo"], "-", **tdur, **raw)]
    return command(outs, loglevel="warning", overwrite=True, filter_threads=threads)


def iter_frames(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
    gray: bool = False,
    pix_fmt: str | None = None,
    threads: int | None = None,
    info=None,
    band: float = 1.0,
    crop: tuple[int, int, int, int] | None = None,
    snapshot: tuple[int, str | os.PathLike, tuple[int, int]] | None = None,
) -> Iterator[np.ndarray]:
    """Yield frames ``(h, w, 3)`` rgb24 (or ``(h, w)`` gray) uint8, one at a time.

    ``size=(w, h)`` scales (area filter), ``fps`` resamples in time, ``start_s``/``duration_s``
    select a section (``-ss`` before ``-i``: a keyframe seek, then exact frames). ``pix_fmt="yuv420p"``
    yields planar I420 frames ``(h*3/2, w)`` (needs an even size): half the bytes of rgb24 and, for
    the usual yuv420p sources, no colour conversion at all. ``threads`` caps ffmpeg's decoder
    threads (``None``: ffmpeg's choice). ``info``: the file's ProbeInfo when the caller has it (saves
    an ffprobe run). ``band < 1``: keep only that central fraction of the rows before scaling.
    ``crop=(x0, y0, w, h)``: after scaling, only that rectangle travels through the pipe (frames
    are ``(h, w)``; even values for yuv420p). ``snapshot=(k, path, (w, h))``: the same process also
    writes frame ``k`` (counted after the fps filter, before the crop) scaled to ``(w, h)`` as raw
    rgb24 to ``path`` (nothing if there is no frame ``k``), e.g. an uncropped preview; the file is
    complete once the generator is exhausted (not if the caller stops early). Each frame is a fresh array filled straight from the pipe.
    Raises MediaError (``no_video``, ``truncated``, ``undecodable``) for input that ends early or
    cannot be decoded; the stream is closed if the caller stops early.
    """
    p = Path(path)
    if info is None:
        info = probe(p)
    if not info.has_video or not info.width or not info.height:
        raise MediaError(str(p), "no_video", "no video stream")
    w, h = (int(size[0]), int(size[1])) if size else (int(info.width), int(info.height))
    if crop is not None:
        cx, cy, cw, ch = (int(v) for v in crop)
        if cx < 0 or cy < 0 or cw <= 0 or ch <= 0 or cx + cw > w or cy + ch > h:
            raise ValueError(f"crop {crop} outside the {w}x{h} frame")
    fmt = "gray" if gray else (pix_fmt or "rgb24")
    if fmt not in ("gray", "rgb24", "yuv420p"):
        raise ValueError(f"pix_fmt must be rgb24 or yuv420p, got {pix_fmt!r}")
    if fmt == "yuv420p" and (w % 2 or h % 2):
        raise ValueError(f"yuv420p needs an even frame size, got {w}x{h}")
    post = [crop_filter(crop)] if crop is not None else []
    if crop is not None:
        w, h = cw, ch
    cmd = _frames_command(p, fmt, frame_filters(fps, band, size), post, start_s, duration_s, threads, snapshot)
    shape = {"gray": (h, w), "rgb24": (h, w, 3), "yuv420p": (h * 3 // 2, w)}[fmt]
    yield from _read_frames(p, cmd, shape)


def _read_frames(p: Path, cmd: list[str], shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Run ``cmd`` and yield its stdout as frames of ``shape``; the MediaErrors of :func:`iter_frames`."""
    nbytes = int(np.prod(shape))
    proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    drain = _StderrDrain(proc.stderr)
    n = 0
    finished = False
    try:
        while True:
            frame = np.empty(shape, np.uint8)
            got = _read_into(proc.stdout, frame)
            if not got:
                break
            if got < nbytes:
                raise MediaError(str(p), "truncated", f"partial frame {n} ({got} of {nbytes} bytes)")
            n += 1
            yield frame
        rc = proc.wait()
        err = drain.text()
        low = err.lower()
        if rc != 0:
            raise MediaError(
                str(p), "undecodable", err.strip().splitlines()[-1] if err.strip() else f"ffmpeg exit {rc}"
            )
        if n == 0:
            raise MediaError(str(p), "zero_length", "decoded no frames")
        if any(
            m in low for m in ("file ended prematurely", "truncat", "invalid nal", "error while decoding")
        ):
            raise MediaError(str(p), "truncated", err.strip().splitlines()[-1])
        finished = True
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()


def read_frames(path: str | os.PathLike, fps: float, size: tuple[int, int], start_s: float = 0.0,
                duration_s: float | None = None) -> np.ndarray:
    """All frames of a section as one ``(F, h, w, 3)`` rgb24 array, resampled to ``fps`` and
    stretched to ``size=(w, h)`` (area filter), without a probe beforehand: for short model inputs
    (visaudio), where one process and one buffer beat streaming. ``-ss`` before ``-i``, ``-t`` on
    the output, as in :func:`iter_frames`. Raises MediaError ``undecodable`` (ffmpeg failed) or
    ``zero_length`` (no frame)."""
    w, h = (int(v) for v in size)
    in_opts = {"ss": f"{start_s:.6f}"} if start_s > 0 else {}
    opts = {"t": f"{duration_s:.6f}"} if duration_s is not None else {}
    video = source(path, **in_opts)["v:0"].filter("fps", fps).filter("scale", w, h, flags="area")
    r = run(command(ffmpeg.output(video, "-", **opts, f="rawvideo", pix_fmt="rgb24")), capture_output=True)
    if r.returncode != 0:
        raise MediaError(str(path), "undecodable", r.stderr.decode(errors="replace").strip()[-300:])
    n = len(r.stdout) // (w * h * 3)
    if n == 0:
        raise MediaError(str(path), "zero_length", "no video frames decoded")
    return np.frombuffer(r.stdout[: n * w * h * 3], np.uint8).reshape(n, h, w, 3).copy()


def _pairs(args: list[str]) -> dict[str, str]:
    """``["-opt", "value", ...]`` as ffmpeg-python output keywords ``{"opt": "value"}``."""
    if len(args) % 2 or not all(str(a).startswith("-") for a in args[::2]):
        raise ValueError(f"extra_args must be -option value pairs, got {args!r}")
    return {str(k)[1:]: str(v) for k, v in zip(args[::2], args[1::2], strict=True)}


def _even(v: int) -> int:
    return int(v) - (int(v) % 2)


class VideoWriter:
    """Write rgb24 frames (or planar yuv420p ``(h*3/2, w)`` with ``pix_fmt="yuv420p"``, which the
    encoder takes as is) to H.264 (libx264, yuv420p) through an ffmpeg pipe.

    Width and height must be even (yuv420p); ``threads`` is fixed and bit-exact flags are set so
    that the same frames give byte-identical files (synthetic scenes depend on that). The output
    appears under ``path`` only after a successful ``close()``; an exception inside the ``with``
    block removes the temp file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float,
        crf: int = 20,
        preset: str = "veryfast",
        threads: int = 1,
        extra_args: list[str] | None = None,
        pix_fmt: str = "rgb24",
        audio: str | os.PathLike | None = None,
        audio_bitrate: str = "192k",
        aac_coder: str = "fast",
    ) -> None:
        """``audio``: a stereo audio file (e.g. the clip's FLAC) muxed in as AAC 48 kHz by the same
        ffmpeg process (as :func:`mux` would, without a second process and a silent intermediate),
        with the cue-keeping flags of :func:`aac_args`. ``extra_args``: more output options as
        ``["-option", "value", ...]`` pairs (e.g. the source's colour tags)."""
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"width/height must be positive and even for yuv420p, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        if pix_fmt not in ("rgb24", "yuv420p"):
            raise ValueError(f"pix_fmt must be rgb24 or yuv420p, got {pix_fmt!r}")
        self.pix_fmt = pix_fmt
        self._shape = (self.height, self.width, 3) if pix_fmt == "rgb24" else (self.height * 3 // 2, self.width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}-", suffix=self.path.suffix or ".mp4", dir=self.path.parent
        )
        os.close(fd)
        fps_s = str(fps) if float(fps) != int(fps) else str(int(fps))
        frames = stdin_source(f="rawvideo", pix_fmt=pix_fmt, s=f"{self.width}x{self.height}", r=fps_s)
        opts = {"c:v": "libx264", "preset": preset, "crf": str(crf), "pix_fmt": "yuv420p", "threads": str(threads),
                "x264-params": f"threads={threads}:lookahead_threads=1", **BITEXACT, **_pairs(extra_args or []),
                "movflags": "+write_colr", "f": "mp4"}
        if audio is not None:
            streams = [frames["v:0"], source(audio)["a:0"]]
            opts.update(aac_args(audio_bitrate, aac_coder), ar="48000", shortest=None)
        else:
            streams = [frames]
            opts["an"] = None
        cmd = command(ffmpeg.output(*streams, url(self._tmp), **opts), overwrite=True)
        self._proc = popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._drain = _StderrDrain(self._proc.stderr)
        self.frames_written = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        f = np.asarray(frame)
        if f.shape != self._shape or f.dtype != np.uint8:
            raise ValueError(f"{self.pix_fmt} frame must be {self._shape} uint8, got {f.shape} {f.dtype}")
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(f)).cast("B"))
        except BrokenPipeError as e:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            self._proc.wait()
            err = self._drain.text().strip()
            wf = write_failure(self.path, err)
            self._closed = True
            self._cleanup()
            if wf is not None:
                raise wf from e
            raise MediaError(str(self.path), "encode_failed", err) from e
        self.frames_written += 1

    def close(self) -> Path:
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self._proc.wait()
        if rc != 0 or self.frames_written == 0:
            err = self._drain.text().strip()
            wf = write_failure(self.path, err) if rc != 0 else None
            self._cleanup()
            if wf is not None:
                raise wf
            raise MediaError(
                str(self.path), "encode_failed", err or f"ffmpeg exit {rc}, {self.frames_written} frames"
            )
        os.chmod(self._tmp, file_mode())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop the encoder and delete the partial output."""
        if self._closed:
            return
        self._closed = True
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._proc.kill()
        self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _atomic_ffmpeg(out_path: Path, output, stdin_bytes: bytes | None = None) -> Path:
    """Run ffmpeg for ``output(tmp_path)`` (a function giving the output node for a temp path next
    to ``out_path``), rename on success; a disk failure raises :class:`WriteFailed`."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path, mode=file_mode(), keep_suffix=True) as tmp:
        r = run(command(output(url(tmp)), overwrite=True), input=stdin_bytes, capture_output=True)
        _raise_encode_error(out_path, r)
    return out_path


def _raise_encode_error(out_path: Path, r) -> None:
    """The WriteFailed or ``encode_failed`` MediaError a failed ffmpeg run means (nothing if it succeeded)."""
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip()
        wf = write_failure(out_path, err)
        if wf is not None:
            raise wf
        raise MediaError(str(out_path), "encode_failed", err[-500:])


def mux(
    video_path: str | os.PathLike,
    audio: np.ndarray,
    sr: int,
    out_path: str | os.PathLike,
    bitrate: str = "192k",
    check_video: bool = True,
) -> Path:
    """Copy the H.264 stream of ``video_path`` and add ``audio`` (2, T) as AAC stereo 48 kHz
    (:func:`aac_args`: interaural cues kept).

    The audio is piped as raw float32; ``-ac 2`` there is the *input* channel count of the raw
    stream (ffmpeg's default 2-channel layout is stereo, so nothing is remixed). Resampled to
    48 kHz when ``sr`` differs. ``check_video=False`` skips the ffprobe of ``video_path`` (for a file
    the caller has just written).
    """
    vp, op = Path(video_path), Path(out_path)
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != 2:
        raise MediaError(str(op), "not_2_channels", f"mux expects (2, T) audio, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise MediaError(str(op), "non_finite", "audio has NaN/Inf samples")
    if x.shape[1] == 0:
        raise MediaError(str(op), "zero_length", "no audio samples")
    if check_video and not probe(vp).has_video:
        raise MediaError(str(vp), "no_video", "mux needs a video stream")
    video = source(vp)["v:0"]
    audio_in = stdin_source(f="f32le", ar=str(int(sr)), ac="2")["a:0"]

    def output(tmp: str):
        return ffmpeg.output(video, audio_in, tmp, **{"c:v": "copy"}, **aac_args(bitrate), ar="48000",
                             **BITEXACT, shortest=None, f="mp4")

    return _atomic_ffmpeg(op, output, stdin_bytes=np.ascontiguousarray(x.T).tobytes())


def mux_file(video_path: str | os.PathLike, audio_path: str | os.PathLike, out_path: str | os.PathLike,
             bitrate: str = "192k") -> Path:
    """``video_path``'s video (copied when it is H.264, else encoded with libx264 CRF 20) with the
    audio of ``audio_path`` as stereo AAC (:func:`aac_args`), ending with the shorter of the two:
    for audio generated for someone else's video. Written to a temp file and renamed."""
    from biaudio.media.ffprobe import video_codec

    vcodec = {"c:v": "copy"} if video_codec(video_path) == "h264" else \
        {"c:v": "libx264", "pix_fmt": "yuv420p", "crf": "20"}
    video, audio = source(video_path)["v:0"], source(audio_path)["a:0"]

    def output(tmp: str):
        return ffmpeg.output(video, audio, tmp, **vcodec, **aac_args(bitrate), ac="2", shortest=None)

    return _atomic_ffmpeg(Path(out_path), output)


def mux_foa(
    video_path: str | os.PathLike,
    foa: np.ndarray,
    sr: int,
    out_path: str | os.PathLike,
    spatial_metadata: bool = True,
    bitrate: str = "512k",
) -> Path:
    """Copy the video of ``video_path`` and add ``foa`` (4, T) ambiX as AAC 4.0 in MP4, then (by
    default) inject ``SA3D`` + ``sv3d`` so the file reads as 360° FOA.

    Why this exact recipe: the FOA goes through a float WAV read with ``-guess_layout_max 0``
    (no layout, so nothing can remix it) and is *relabelled* to ``4.0`` by ``channelmap`` (the AAC
    encoder needs a layout it supports; a relabel never mixes). AAC intensity stereo and PNS are
    off: intensity stereo codes channel 1 (ambiX Y) as a scaled copy of channel 0 (W) in high
    bands, exact for one plane wave but wrong for mixtures (on binaural audio the defaults cost 4 dB of
    ILD above 8 kHz, see :func:`aac_args`). Channel order survives (tone-per-channel test).
    """
    from biaudio.media.audio import write_audio
    from biaudio.media.sa3d import inject_spatial_metadata

    op = Path(out_path)
    x = np.asarray(foa, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != 4:
        raise MediaError(str(op), "not_4_channels", f"FOA must be (4, T), got shape {x.shape}")
    if x.shape[1] == 0:
        raise MediaError(str(op), "zero_length", "no audio samples")
    op.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{op.stem}-", dir=op.parent))
    try:
        with atomic_path(op, mode=file_mode(), keep_suffix=True) as tmp:
            wav = write_audio(work / "foa.wav", x, sr)
            four = source(wav, guess_layout_max="0")["a:0"].filter("channelmap", map="0|1|2|3", channel_layout="4.0")
            out = ffmpeg.output(source(video_path)["v:0"], four, url(tmp), **{"c:v": "copy"},
                                **aac_args(bitrate, coder="twoloop"), threads="1", **BITEXACT, f="mp4")
            _raise_encode_error(op, run(command(out, overwrite=True), capture_output=True))
            if spatial_metadata:
                inject_spatial_metadata(tmp, ambix=True, projection=True)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return op
