"""Ingest: source lists, yt-dlp fetch, probe/validate, and :func:`analyze_file`.

:func:`analyze_file` is the one-call front half of the build for one local file: probe + validate,
the cleaning filters and shot segmentation, decoding the audio once and the video once. The video
is decoded a single time as a small RGB proxy at the source frame rate; each proxy frame feeds
PySceneDetect and (subsampled to 2 fps by timestamp) the static-video filter. Stages are ordered
cheapest first, so with ``stop_on_reject`` a silent clip never pays for a video decode.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biaudio.errors import BiaudioError, MediaError, RejectItem


@dataclass
class FileAnalysis:
    """Everything the front half learns about one file. ``reject`` is the first failure, if any."""

    path: Path
    source_id: str
    validated: object | None = None  # ValidatedInput
    filters: dict = field(default_factory=dict)  # name -> FilterResult
    fps: float | None = None
    n_frames: int | None = None
    cuts: list[int] = field(default_factory=list)
    windows: list = field(default_factory=list)  # list[Window]
    reject: BiaudioError | None = None
    timings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reject is None

    def clip_ids(self) -> list[str]:
        return [w.clip_id(self.source_id) for w in self.windows]

    def to_dict(self, with_extra: bool = False) -> dict:
        r = self.reject
        return {
            "path": str(self.path),
            "source_id": self.source_id,
            "ok": self.ok,
            "reject": None if r is None else {"stage": r.stage, "reason": r.reason, "detail": r.detail},
            "convention": getattr(self.validated, "convention", None),
            "projection_source": getattr(self.validated, "projection_source", None),
            "filters": {k: v.to_dict(with_extra) for k, v in self.filters.items()},
            "fps": self.fps,
            "n_frames": self.n_frames,
            "cuts": self.cuts,
            "windows": [dict(w.to_dict(), clip_id=w.clip_id(self.source_id)) for w in self.windows],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


class _PipeReader(threading.Thread):
    """Reads fixed-size records from one ffmpeg output pipe and hands each to ``sink``.

    Several outputs of one ffmpeg process must be drained concurrently, or ffmpeg blocks on
    the first full pipe; one thread per pipe keeps memory bounded to one record per output.
    """

    def __init__(self, fd: int, record_bytes: int, sink, name: str) -> None:  # sink(index, bytes-like)
        super().__init__(daemon=True, name=name)
        self.fd, self.n, self.sink = fd, record_bytes, sink
        self.count = 0
        self.partial = 0
        self.accept_partial = name == "audio"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
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


def shared_decode(path: str | Path, info, proxy_size: tuple[int, int] | None, static_fps: float | None,
                  static_size: tuple[int, int] | None, on_audio, on_proxy, on_static, threads: int | None = None,
                  audio_block: int = 48000, proxy_flags: str = "area") -> None:
    """One ffmpeg process, up to three outputs: float32 audio blocks (all channels, no layout
    options), I420 (yuv420p) proxy frames at the source fps, gray frames at ``static_fps`` (native size unless
    ``static_size``). Callbacks receive ``(index, bytes)``; raises MediaError on decode failure."""
    path = Path(path)
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error"]
    if threads:
        cmd += ["-threads", str(threads)]
    cmd += ["-i", str(path.absolute())]
    if threads:
        cmd += ["-filter_threads", str(threads), "-filter_complex_threads", str(threads)]
    readers: list[_PipeReader] = []
    child_fds: list[int] = []
    graphs: list[str] = []
    outs: list[list[str]] = []
    vlabels: list[str] = []
    if on_proxy is not None:
        vlabels.append("p")
    if on_static is not None:
        vlabels.append("s")
    if vlabels:
        chain = "[0:v:0]" + (f"split={len(vlabels)}" + "".join(f"[{v}0]" for v in vlabels) if len(vlabels) > 1 else "null[" + vlabels[0] + "0]")
        graphs.append(chain)
    w, h = int(info.width), int(info.height)

    def add_out(kind: str, args: list[str], rec: int, sink) -> None:
        r, wfd = _big_pipe()
        child_fds.append(wfd)
        readers.append(_PipeReader(r, rec, sink, kind))
        outs.append([*args, f"pipe:{wfd}"])

    if on_proxy is not None:
        pw, ph = proxy_size or (w, h)
        # yuv420p out (scaling is ~15 % cheaper without the RGB conversion at full size); the caller
        # converts the tiny frame (cv2 COLOR_YUV2BGR_I420). Needs even proxy dimensions.
        graphs.append(f"[p0]scale={pw}:{ph}:flags={proxy_flags},format=yuv420p[po]")
        add_out("proxy", ["-map", "[po]", "-f", "rawvideo", "-pix_fmt", "yuv420p"], pw * ph * 3 // 2, on_proxy)
    if on_static is not None:
        sw, sh = static_size or (w, h)
        sc = f",scale={sw}:{sh}:flags=area" if static_size else ""
        graphs.append(f"[s0]fps={static_fps}{sc},format=gray[so]")
        add_out("static", ["-map", "[so]", "-f", "rawvideo", "-pix_fmt", "gray"], sw * sh, on_static)
    if graphs:
        cmd += ["-filter_complex", ";".join(graphs)]
    if on_audio is not None:
        ch = int(info.audio_channels)
        add_out("audio", ["-map", "0:a:0", "-vn", "-f", "f32le", "-acodec", "pcm_f32le"], ch * 4 * audio_block, on_audio)
    for o in outs:
        cmd += o
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            pass_fds=tuple(child_fds))
    for fd in child_fds:
        os.close(fd)
    for r in readers:
        r.start()
    err = proc.stderr.read().decode("utf-8", "replace")
    rc = proc.wait()
    for r in readers:
        r.join()
    for r in readers:
        if r.error is not None:
            raise r.error
    low = err.lower()
    if rc != 0:
        raise MediaError(str(path), "undecodable", err.strip().splitlines()[-1] if err.strip() else f"ffmpeg exit {rc}")
    if any(m in low for m in ("file ended prematurely", "truncat", "invalid nal", "error while decoding")):
        raise MediaError(str(path), "truncated", err.strip().splitlines()[-1])
    for r in readers:
        if r.name != "audio" and r.count == 0:
            raise MediaError(str(path), "zero_length", f"decoded no {r.name} frames")


def analyze_file(
    path: str | Path,
    source_id: str | None = None,
    validate_cfg=None,
    silence_cfg=None,
    static_cfg=None,
    speech_cfg=None,
    segment_cfg=None,
    stop_on_reject: bool = True,
    threads: int | None = None,
) -> FileAnalysis:
    """Probe, validate, filter and segment one file with a single ffmpeg decode.

    Never raises for bad input: the first failure is returned in ``FileAnalysis.reject`` (with its
    stage) so the caller can write the reject row and go on. ``stop_on_reject=False`` computes every
    score even after a filter rejected (for ``biaudio clean``). Memory stays bounded: audio is
    reduced to chunk peaks on the fly and only the W channel is kept (for the speech detector).
    """
    import cv2

    from biaudio.clean.silence import SilenceConfig, chunk_peaks_db, chunk_samples, silence_from_peaks
    from biaudio.clean.speech import SpeechConfig, speech_score
    from biaudio.clean.static import StaticAccumulator, StaticConfig
    from biaudio.ingest.validate import ValidateConfig, validate_input
    from biaudio.segment import CutDetector, SegmentConfig, windows

    path = Path(path)
    vcfg, scfg = validate_cfg or ValidateConfig(), silence_cfg or SilenceConfig()
    stcfg, spcfg, segcfg = static_cfg or StaticConfig(), speech_cfg or SpeechConfig(), segment_cfg or SegmentConfig()
    res = FileAnalysis(path=path, source_id=source_id or path.stem)

    def fail(e: BiaudioError, stage: str) -> None:
        if res.reject is None:
            res.reject = e if e.stage else type(e)(e.path or str(path), e.reason, e.detail, stage=stage)

    def filt(r) -> bool:
        res.filters[r.name] = r
        if not r.passed:
            fail(RejectItem(str(path), r.reason, r.detail, stage="clean"), "clean")
        return r.passed or not stop_on_reject

    t = time.perf_counter()
    try:
        res.validated = validate_input(path, vcfg, source_id=res.source_id)
    except BiaudioError as e:
        fail(e, "probe")
        return res
    finally:
        res.timings["probe"] = time.perf_counter() - t
    info = res.validated.probe
    fps = float(info.fps or 30.0)
    res.fps = fps

    # ---- one decode: audio blocks, RGB proxy frames, 2-fps gray frames
    sr, ch = int(info.sample_rate or 48000), int(info.audio_channels)
    need_audio = scfg.enabled or spcfg.enabled
    n_chunk = chunk_samples(sr, scfg)
    peaks: list[np.ndarray] = []
    w_parts: list[np.ndarray] = []
    carry = [np.zeros((ch, 0), dtype=np.float32)]
    bad_audio: list[str] = []

    def on_audio(i: int, buf: bytes) -> None:
        x = np.frombuffer(buf, dtype=np.float32).reshape(-1, ch).T
        if not np.isfinite(x).all():
            bad_audio.append(f"NaN/Inf in audio block {i}")
            x = np.nan_to_num(x)
        w_parts.append(x[0].copy())
        x = np.concatenate([carry[0], x[:4]], axis=1) if carry[0].shape[1] else x[:4]
        k = (x.shape[1] // n_chunk) * n_chunk
        peaks.append(chunk_peaks_db(x[:, :k], n_chunk))
        carry[0] = x[:, k:]

    pw, ph = segcfg.proxy_size
    det = CutDetector(fps, segcfg)
    acc = StaticAccumulator(stcfg) if stcfg.enabled else None
    st_size = tuple(stcfg.size) if stcfg.size else None
    sw, sh = st_size or (int(info.width), int(info.height))

    def on_proxy(i: int, buf: bytes) -> None:
        det.add_bgr(cv2.cvtColor(np.frombuffer(buf, dtype=np.uint8).reshape(ph * 3 // 2, pw), cv2.COLOR_YUV2BGR_I420))

    def on_static(i: int, buf: bytes) -> None:
        acc.add(i / stcfg.fps, np.frombuffer(buf, dtype=np.uint8).reshape(sh, sw))

    t = time.perf_counter()
    try:
        shared_decode(path, info, (pw, ph), stcfg.fps, st_size, on_audio if need_audio else None, on_proxy,
                      on_static if acc is not None else None, threads=threads, audio_block=sr, proxy_flags=segcfg.proxy_scale_flags)
    except BiaudioError as e:
        fail(e, "decode")
        return res
    res.timings["decode"] = time.perf_counter() - t
    if bad_audio:
        fail(MediaError(str(path), "nan_audio", bad_audio[0], stage="decode"), "decode")
        return res
    res.n_frames = det.n_frames

    # ---- audio filters (cheap first)
    if scfg.enabled and not filt(silence_from_peaks(np.concatenate(peaks) if peaks else np.zeros(0), scfg)):
        return res
    if spcfg.enabled:
        t = time.perf_counter()
        try:
            ok = filt(speech_score(np.concatenate(w_parts) if w_parts else np.zeros(0, np.float32), sr, spcfg))
        except BiaudioError as e:
            fail(e, "clean")
            return res
        finally:
            res.timings["speech"] = time.perf_counter() - t
        if not ok:
            return res
    if acc is not None and not filt(acc.result()):
        return res

    # ---- segmentation
    res.cuts = det.cuts()
    res.windows = windows(det.n_frames / fps, fps, res.cuts, segcfg)
    if not res.windows:
        fail(RejectItem(str(path), "too_short", f"no {segcfg.window_s:g}-s window fits inside a shot "
                        f"({det.n_frames / fps:.2f} s, {len(res.cuts)} cut(s))", stage="segment"), "segment")
    return res


__all__ = ["FileAnalysis", "analyze_file", "shared_decode"]
