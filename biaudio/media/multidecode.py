"""One ffmpeg process, several raw outputs: :func:`shared_decode` decodes a file once and hands
out its audio, a small proxy video, low-rate gray frames and any number of extra filter branches
(:class:`VideoBranch`), each through its own pipe.

Why one process: decoding a 360° video is the dominant cost of the build's front half, and the
analysis (shot detection, static filter, audio filters) and the clip renders all need the same
decoded frames. It lives in ``media`` because it knows only ffmpeg, pipes and record sizes; the
analysis that uses it is :mod:`biaudio.ingest.analysis`.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ffmpeg

from biaudio.errors import MediaError
from biaudio.media.ffgraph import command, popen, source


class _PipeReader(threading.Thread):
    """Reads fixed-size records from one ffmpeg output pipe and hands each to ``sink``.

    Several outputs of one ffmpeg process must be drained concurrently, or ffmpeg blocks on
    the first full pipe; one thread per pipe keeps memory bounded to one record per output.
    """

    def __init__(self, fd: int, record_bytes: int | None, sink, name: str) -> None:  # sink(index, bytes-like)
        super().__init__(daemon=True, name=name)
        self.fd, self.n, self.sink = fd, record_bytes, sink
        self.count = 0
        self.partial = 0
        self.accept_partial = name == "audio"
        self.error: BaseException | None = None
        # record size unknown until ffmpeg's input dump is read: wait (ffmpeg writes nothing before)
        self._ready = threading.Event()
        if record_bytes is not None:
            self._ready.set()
        self._abort = False

    def configure(self, record_bytes: int | None, sink) -> None:
        """Set the record size and sink (None: discard this output) and start reading."""
        self.n, self.sink = record_bytes, sink
        self._ready.set()

    def abort(self) -> None:
        self._abort = True
        self._ready.set()

    def run(self) -> None:
        try:
            self._ready.wait()
            if self._abort:
                os.close(self.fd)
                return
            if self.sink is None or not self.n:
                with os.fdopen(self.fd, "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
                return
            with os.fdopen(self.fd, "rb", buffering=0) as f:
                while True:
                    buf = bytearray(self.n)  # fresh per record: sinks may keep a view of it
                    view, got = memoryview(buf), 0
                    while got < self.n:
                        k = f.readinto(view[got:])
                        if not k:
                            break
                        got += k
                    if got < self.n:
                        self.partial = got
                        if got and self.accept_partial:
                            self.sink(self.count, bytes(view[:got]))
                        return
                    self.sink(self.count, buf)
                    self.count += 1
        except BaseException as e:  # surfaced by the caller after join()
            self.error = e


def _big_pipe() -> tuple[int, int]:
    """A pipe with a 1 MiB buffer where Linux allows it (fewer wake-ups per full-size frame)."""
    r, w = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass
    return r, w


_LEVEL_ERR = ("[error]", "[fatal]", "[panic]")


@dataclass
class VideoBranch:
    """One more consumer of :func:`shared_decode`'s video.

    ``build(stream)`` receives one split of the decoded video as an ffmpeg-python stream and
    returns its named output streams (``{name: stream}``); ``outputs`` are ``(name, output options,
    record bytes, sink(index, buf))`` for those streams, the options as ffmpeg-python keywords
    (``{"t": "2.000000", "f": "rawvideo", "pix_fmt": "yuv420p"}``)."""

    name: str
    build: Callable[[Any], dict[str, Any]]
    outputs: list


@dataclass
class _Plan:
    """A compiled :func:`shared_decode`: the command line, one reader per output pipe and the
    write ends the child inherits."""

    cmd: list[str]
    readers: list[_PipeReader] = field(default_factory=list)
    child_fds: list[int] = field(default_factory=list)
    outs: list = field(default_factory=list)

    def add_out(self, kind: str, stream, opts: dict, rec: int | None, sink) -> None:
        r, wfd = _big_pipe()
        self.child_fds.append(wfd)
        self.readers.append(_PipeReader(r, rec, sink, kind))
        self.outs.append(ffmpeg.output(stream, f"pipe:{wfd}", **opts))


def _plan(path: Path, info, proxy_size, static_fps, static_size, on_audio, on_proxy, on_static, threads,
          audio_block, proxy_flags, static_y_plane, header_mode, proxy_band, extra) -> _Plan:
    """Build the graph: one split of ``[0:v:0]`` per video consumer (proxy, static, each extra
    branch), the audio straight from ``0:a:0``; one pipe per output."""
    src = source(path, **({"threads": str(threads)} if threads else {}))
    plan = _Plan([])
    n_video = (on_proxy is not None) + (on_static is not None) + len(extra)
    video = src["v:0"]
    if n_video > 1:
        sp = video.split()
        splits = iter([sp[i] for i in range(n_video)])
    else:
        splits = iter([video])
    if on_proxy is not None:
        pw, ph = proxy_size or (int(info.width), int(info.height))
        # yuv420p out (scaling is ~15 % cheaper without the RGB conversion at full size); the caller
        # converts the tiny frame (cv2 COLOR_YUV2BGR_I420). Needs even proxy dimensions.
        # proxy_band < 1: only that central fraction of the rows (the horizon band of an equirect)
        s = next(splits)
        if proxy_band < 1:
            s = s.filter("crop", "iw", f"trunc(ih*{proxy_band:g}/2)*2")
        s = s.filter("scale", pw, ph, flags=proxy_flags).filter("format", "yuv420p")
        plan.add_out("proxy", s, {"f": "rawvideo", "pix_fmt": "yuv420p"},
                     None if header_mode else pw * ph * 3 // 2, on_proxy)
    if on_static is not None:
        sw, sh = static_size or ((0, 0) if header_mode else (int(info.width), int(info.height)))
        s = next(splits).filter("fps", static_fps)
        if static_size:
            s = s.filter("scale", sw, sh, flags="area")
        s = s.filter("extractplanes", "y") if static_y_plane else s.filter("format", "gray")
        plan.add_out("static", s, {"f": "rawvideo", "pix_fmt": "gray"}, None if header_mode else sw * sh, on_static)
    for br in extra:
        streams = br.build(next(splits))
        for lab, opts, rec, sink in br.outputs:  # flushed per frame: a branch's last frame comes at once
            plan.add_out(f"extra:{br.name}:{lab}", streams[lab], {**opts, "flush_packets": "1"}, rec, sink)
    if on_audio is not None:
        ch = 0 if header_mode else int(info.audio_channels)
        plan.add_out("audio", src["a:0"], {"vn": None, "f": "f32le", "acodec": "pcm_f32le"},
                     None if header_mode else ch * 4 * audio_block, on_audio)
    plan.cmd = command(plan.outs, loglevel="level+info" if header_mode else "error", stats=False,
                       filter_threads=threads)
    return plan


def shared_decode(path: str | Path, info, proxy_size: tuple[int, int] | None, static_fps: float | None,
                  static_size: tuple[int, int] | None, on_audio, on_proxy, on_static, threads: int | None = None,
                  audio_block: int = 48000, proxy_flags: str = "area", static_y_plane: bool = False,
                  on_header=None, proxy_band: float = 1.0, extra: list | None = None) -> None:
    """One ffmpeg process, up to three outputs: float32 audio blocks (all channels, no layout
    options), I420 (yuv420p) proxy frames at the source fps, gray frames at ``static_fps`` (native size unless
    ``static_size``). Callbacks receive ``(index, bytes)``; raises MediaError on decode failure.

    ``static_y_plane``: the gray frames are the 8-bit Y plane as decoded (``extractplanes=y``, no
    range conversion; the caller maps it, see ``biaudio.clean.static.gray_lut``) instead of
    ``format=gray``. Callers count the audio decode (``biaudio.media.audio.count_audio_decode``).

    ``info=None`` with ``on_header``: no probe beforehand. ffmpeg runs at ``-loglevel level+info``
    and prints its dump of the input before it writes any output; ``on_header(lines)`` gets those
    ``[info]`` lines (the whole dump, up to "Stream mapping:", or what there was if ffmpeg stopped)
    and returns ``{"audio"|"proxy"|"static": (record_bytes, sink)}`` for the outputs requested
    through non-None ``on_*`` arguments (their values here only say which outputs exist), or
    raises (a rejected file: ffmpeg is killed). See :mod:`biaudio.media.header` for why.

    ``extra`` (needs ``info``): more branches of the same video decode, each a :class:`VideoBranch`
    (a graph built on one split of the decoded video, and its raw outputs with their record
    sizes and sinks). The build renders its clips this way inside the analysis decode
    (``biaudio.stages.item``), so the video is decoded once per source. Their sinks must never
    stop reading (a failing sink records its error and discards the rest), or ffmpeg would block."""
    path = Path(path)
    header_mode = info is None
    if header_mode and on_header is None:
        raise ValueError("shared_decode: info=None needs on_header")
    extra = list(extra or [])
    if extra and header_mode:
        raise ValueError("shared_decode: extra branches need info (their sizes come from the probe)")
    plan = _plan(path, info, proxy_size, static_fps, static_size, on_audio, on_proxy, on_static, threads,
                 audio_block, proxy_flags, static_y_plane, header_mode, proxy_band, extra)
    try:
        proc = popen(plan.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     pass_fds=tuple(plan.child_fds))
    finally:
        for fd in plan.child_fds:
            os.close(fd)
    readers = plan.readers
    for r in readers:
        r.start()
    if header_mode:
        err = _read_header(proc, readers, on_header)
    else:
        err = proc.stderr.read().decode("utf-8", "replace")
    rc = proc.wait()
    proc.stderr.close()
    for r in readers:
        r.join()
    for r in readers:
        if r.error is not None:
            raise r.error
    _check_result(path, rc, err, readers)


def _read_header(proc, readers: list[_PipeReader], on_header) -> str:
    """Collect ffmpeg's ``[info]`` input dump from stderr, configure the readers from
    ``on_header(dump)`` at "Stream mapping:", and return the error lines; kills ffmpeg (and stops
    the readers) when ``on_header`` raises."""
    dump: list[str] = []
    errs: list[str] = []
    configured = False

    def configure() -> None:
        nonlocal configured
        configured = True
        spec = on_header(dump)
        for r in readers:
            r.configure(*spec.get(r.name, (None, None)))

    try:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("[info] "):
                if not configured:
                    dump.append(line[7:])
                    if line.startswith("[info] Stream mapping:"):
                        configure()
            elif any(t in line for t in _LEVEL_ERR):
                errs.append(line)
        if not configured:
            configure()  # ffmpeg stopped before decoding: the header decides the reason
    except BaseException:
        proc.kill()
        proc.wait()
        proc.stderr.close()
        for r in readers:
            r.abort()
        for r in readers:
            r.join()
        raise
    return "\n".join(errs)


def _check_result(path: Path, rc: int, err: str, readers: list[_PipeReader]) -> None:
    """Raise the MediaError that ffmpeg's exit code, its stderr and the frame counts call for."""
    low = err.lower()
    if rc != 0:
        raise MediaError(str(path), "undecodable", err.strip().splitlines()[-1] if err.strip() else f"ffmpeg exit {rc}")
    if any(m in low for m in ("file ended prematurely", "truncat", "invalid nal", "error while decoding")):
        raise MediaError(str(path), "truncated", err.strip().splitlines()[-1])
    for r in readers:
        if r.name in ("proxy", "static") and r.count == 0:
            raise MediaError(str(path), "zero_length", f"decoded no {r.name} frames")
