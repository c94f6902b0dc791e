"""The front half of the build for one local file: :func:`analyze_file`.

:func:`analyze_file` is the one-call front half of the build for one local file: probe + validate,
the cleaning filters and shot segmentation, decoding the audio once and the video once. One ffmpeg
process decodes the file once and hands out three streams: the audio (kept, as the build's FOA),
a small yuv420p proxy at the source frame rate for PySceneDetect, and the Y plane at 2 fps for the
static-video filter. The filters then judge each 8-s window (clip) from per-chunk / per-pair /
per-VAD-frame arrays computed once per source.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biaudio.errors import BiaudioError, MediaError, RejectItem
from biaudio.media.multidecode import shared_decode


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
    windows: list = field(default_factory=list)  # list[Window] that passed every clip filter
    reject: BiaudioError | None = None
    timings: dict = field(default_factory=dict)
    all_windows: list = field(default_factory=list)  # every window of the segmentation (in the section)
    window_scores: dict = field(default_factory=dict)  # clip_id -> {"silence"|"speech"|"static": ratio | None}
    window_rejects: list = field(default_factory=list)  # [(Window, RejectItem)] clips rejected by a filter
    foa: np.ndarray | None = field(default=None, repr=False)  # (4, T) ambiX float32 at audio_sr (keep_foa)
    audio_sr: int | None = None

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
            "window_scores": self.window_scores,
            "window_rejects": [dict(w.to_dict(), clip_id=w.clip_id(self.source_id), reason=e.reason, detail=e.detail)
                               for w, e in self.window_rejects],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def _static_gray(info) -> tuple[bool, np.ndarray | None]:
    """(take the Y plane as is, LUT to ``format=gray``) for the static filter's frames.

    8-bit YUV video: the Y plane (``extractplanes=y``, a plane copy) plus the LUT of the range
    expansion ``format=gray`` would do; anything else goes through ``format=gray`` itself."""
    from biaudio.clean.static import gray_lut

    v = next((s for s in (getattr(info, "raw", None) or {}).get("streams", []) if s.get("codec_type") == "video"), {})
    pix = str(v.get("pix_fmt") or "")
    if pix not in ("yuv420p", "yuv422p", "yuv444p", "yuv440p", "yuv411p", "yuv410p", "yuvj420p", "yuvj422p", "yuvj444p",
                   "yuvj440p", "yuvj411p", "nv12", "nv21"):
        return False, None
    rng = "pc" if pix.startswith("yuvj") else v.get("color_range")
    return True, gray_lut(rng)


class _Regraph(Exception):
    """The probe came from ffmpeg's input dump, but the filter graph chosen before it does not fit
    this file (the Y-plane static frames need 8-bit YUV): decode again with the general graph."""

    def __init__(self, info) -> None:
        super().__init__("regraph")
        self.info = info


class _Grow:
    """A (C, T) float32 buffer filled block by block: allocated once at the expected length (from
    the probe), grown by doubling only if the stream runs longer; no list of blocks + concatenate,
    so the peak is one copy of the audio."""

    def __init__(self, ch: int, expect: int) -> None:
        self.buf = np.empty((ch, max(1, expect)), dtype=np.float32)
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        k = x.shape[1]
        if self.n + k > self.buf.shape[1]:
            nb = np.empty((self.buf.shape[0], max(2 * self.buf.shape[1], self.n + k)), dtype=np.float32)
            nb[:, : self.n] = self.buf[:, : self.n]
            self.buf = nb
        self.buf[:, self.n:self.n + k] = x
        self.n += k

    def array(self) -> np.ndarray:
        if self.n < 0.9 * self.buf.shape[1]:  # a probe that over-stated the duration: give the slack back
            self.buf = self.buf[:, : self.n].copy()
        return self.buf[:, : self.n]


@dataclass
class _DecodeState:
    """What :func:`analyze_file`'s decode callbacks share for one file: sized from the probe (which
    arrives inside the decode, from ffmpeg's input dump), then filled block by block."""

    sr: int = 48000  # audio rate and channels (from the probe)
    ch: int = 4
    n_chunk: int = 1  # silence-filter chunk, samples
    audio: _Grow | None = None  # the decoded audio, (min(ch, 4), T)
    det: Any = None  # segment.CutDetector fed by the proxy frames
    acc: Any = None  # clean.static.StaticAccumulator fed by the gray frames (None: filter off)
    pw: int = 0  # proxy frame size
    ph: int = 0
    sw: int = 0  # static-filter frame size
    sh: int = 0
    y_plane: bool = True  # static frames as the Y plane plus a LUT (8-bit YUV) instead of format=gray
    two_pass: bool = False  # audio pass, the caller's plan, then the video pass
    info: Any = None  # ProbeInfo
    foa: np.ndarray | None = None  # ambiX FOA made for the plan (two-pass only)
    speech_s: float = 0.0  # the speech detector's own seconds, wherever it ran


def _plan_branches(plan, st, res: FileAnalysis, path: Path, segcfg, section, audio_passes) -> list:
    """Between the audio pass and the video pass: the FOA as ambiX and the windows of a video
    without cuts that pass the audio filters go to ``plan``; its branches join the video decode.
    A FOA that cannot be converted plans nothing (the end of analyze_file reports it as before)."""
    from biaudio.segment import windows
    from biaudio.spatial.foa import to_ambix

    info = st.info
    try:
        st.foa = to_ambix(st.audio.array(), res.validated.convention, str(path))
    except BiaudioError:
        return []
    fps = float(info.fps or 30.0)
    n_frames = int(round(float(info.duration_s or 0.0) * fps))
    planned = windows(n_frames / fps, fps, [], segcfg)
    if section is not None:
        planned = [w for w in planned if w.start_s >= section[0] - 1e-6 and w.end_s <= section[1] + 1e-6]
    planned = audio_passes(planned)
    return list(plan(info, st.foa, st.sr, planned) or []) if planned else []


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
    keep_foa: bool = True,
    section: tuple[float, float] | None = None,
    plan=None,
) -> FileAnalysis:
    """Probe, validate, filter and segment one file with a single ffmpeg decode.

    Never raises for bad input: the first source-level failure is returned in
    ``FileAnalysis.reject`` (with its stage) so the caller can write the reject row and go on.

    The filters judge **clips** (the 8-s windows, not whole sources): the per-chunk peaks, per-frame-pair MSEs and
    per-VAD-frame activity are computed once over the source, then each window gets its own
    silence / speech / static ratios (``window_scores``) and verdict; failing windows go to
    ``window_rejects`` (first failing filter in the order silence, speech, static) and ``windows``
    keeps the rest. The source-level verdict (``filters``, source-wide scores) rejects the whole
    source only when it fails *and* no window passes that filter (a fully silent or frozen source,
    or one too short for any window). ``stop_on_reject=False`` computes every score even after a
    rejection (``biaudio clean``): the speech detector then runs over the whole source, otherwise
    only over the windows that survived the silence filter.

    ``keep_foa``: keep the decoded audio as ``foa`` (4, T) ambiX float32 at the source rate
    ``audio_sr``, so the build renders from this decode instead of decoding the file again.
    ``section``: (start_s, end_s): only windows inside it count (a local file with a section).

    ``plan`` (with ``keep_foa``): audio first, then video, so that the build decodes the video
    once. An audio-only pass (its input dump is the probe) comes first; then
    ``plan(info, foa, sr, windows)`` gets the ambiX FOA and the windows the segmentation gives if
    the video has no cut, and returns :class:`biaudio.media.multidecode.VideoBranch` es that ride along in the video pass
    (the build's renders of those windows, see ``biaudio.stages.item``). The analysis itself
    (scores, windows, rejects) is the same with or without ``plan``; the audio-only pass is far
    cheaper than the second decode of the video that the render would otherwise need
    (benchmarks/bench_ingest.py measures both).
    """
    import cv2

    from biaudio.clean.silence import (
        SilenceConfig,
        chunk_peaks_db,
        chunk_samples,
        silence_from_peaks,
        window_silence,
    )
    from biaudio.clean.speech import SpeechConfig, speech_score, window_speech
    from biaudio.clean.static import StaticAccumulator, StaticConfig
    from biaudio.ingest.validate import ValidateConfig, validate_probe
    from biaudio.media.audio import count_audio_decode
    from biaudio.media.ffprobe import check_file
    from biaudio.segment import CutDetector, SegmentConfig, windows

    path = Path(path)
    vcfg, scfg = validate_cfg or ValidateConfig(), silence_cfg or SilenceConfig()
    stcfg, spcfg, segcfg = static_cfg or StaticConfig(), speech_cfg or SpeechConfig(), segment_cfg or SegmentConfig()
    res = FileAnalysis(path=path, source_id=source_id or path.stem)

    def fail(e: BiaudioError, stage: str) -> None:
        if res.reject is None:
            res.reject = e if e.stage else type(e)(e.path or str(path), e.reason, e.detail, stage=stage)

    # ---- one ffmpeg process: its input dump is the probe (no separate ffprobe process, see
    # biaudio.media.header), then one decode: audio blocks, proxy frames, 2-fps gray frames
    need_audio = scfg.enabled or spcfg.enabled or keep_foa
    st = _DecodeState(two_pass=plan is not None and keep_foa)
    peaks: list[np.ndarray] = []
    bad_audio: list[str] = []
    t0 = time.perf_counter()

    def setup(dump: list[str]) -> dict:
        """Probe + validate from ffmpeg's input dump (ffprobe when the dump is not certain), then
        size the outputs. Raising here rejects the file before anything is decoded."""
        from biaudio.media.header import parse_input_dump
        from biaudio.media.probe import probe, probe_from_dict

        try:
            d = parse_input_dump(dump)
            info = probe_from_dict(path.absolute(), d) if d is not None else probe(path.absolute())
            info.path = str(path.absolute())
            res.validated = validate_probe(info, path, vcfg, res.source_id)
        except BiaudioError as e:
            raise type(e)(e.path or str(path), e.reason, e.detail, stage="probe") from None
        finally:
            res.timings["probe"] = time.perf_counter() - t0
        return sized(info)

    def sized(info) -> dict:
        """(Re)create the per-file state for ``info`` and size the outputs."""
        fps = float(info.fps or 30.0)
        res.fps = fps
        st.sr, st.ch = int(info.sample_rate or 48000), int(info.audio_channels)
        st.n_chunk = chunk_samples(st.sr, scfg)
        st.audio = _Grow(min(st.ch, 4), int((info.duration_s or 0.0) * st.sr) + st.sr)
        st.det = CutDetector(fps, segcfg)
        st.info = info
        y_plane, lut = _static_gray(info)
        if st.two_pass:  # the video pass comes after the probe: choose its graph now
            st.y_plane = y_plane
        elif stcfg.enabled and not y_plane and st.y_plane:
            raise _Regraph(info)
        st.acc = StaticAccumulator(stcfg, lut=lut if st.y_plane else None) if stcfg.enabled else None
        st.sw, st.sh = tuple(stcfg.size) if stcfg.size else (int(info.width), int(info.height))
        spec = {"proxy": (st.pw * st.ph * 3 // 2, on_proxy)}
        if need_audio:
            spec["audio"] = (st.ch * 4 * st.sr, on_audio)
        if st.acc is not None:
            spec["static"] = (st.sw * st.sh, on_static)
        return spec

    def on_audio(i: int, buf: bytes) -> None:
        ch, n_chunk, audio = st.ch, st.n_chunk, st.audio
        x = np.frombuffer(buf, dtype=np.float32).reshape(-1, ch).T
        if not np.isfinite(x).all():
            bad_audio.append(f"NaN/Inf in audio block {i}")
            x = np.nan_to_num(x)
        a0 = audio.n - audio.n % n_chunk  # chunks are cut from the start of the stream
        audio.add(x[:4])
        k = ((audio.n - a0) // n_chunk) * n_chunk
        if k:
            peaks.append(chunk_peaks_db(audio.buf[:, a0:a0 + k], n_chunk))

    st.pw, st.ph = segcfg.proxy_dims()
    proxy_flags = segcfg.proxy_scale_flags
    if segcfg.detector == "none":  # frames are only counted: the smallest, cheapest proxy will do
        st.pw, st.ph, proxy_flags = 16, 16, "fast_bilinear"

    def on_proxy(i: int, buf: bytes) -> None:
        if segcfg.detector == "none":
            st.det.n_frames += 1
            return
        st.det.add_bgr(cv2.cvtColor(np.frombuffer(buf, dtype=np.uint8).reshape(st.ph * 3 // 2, st.pw),
                                    cv2.COLOR_YUV2BGR_I420))

    def on_static(i: int, buf: bytes) -> None:
        st.acc.add(i / stcfg.fps, np.frombuffer(buf, dtype=np.uint8).reshape(st.sh, st.sw))

    speech_memo: dict = {}

    def speech_for(w_channel: np.ndarray, spans) -> object:
        """speech_score, once per set of spans (the plan and the verdict ask for the same ones
        when the video has no cut)."""
        key = None if spans is None else tuple(spans)
        if key not in speech_memo:
            t = time.perf_counter()
            try:
                speech_memo[key] = speech_score(w_channel, st.sr, spcfg, spans=spans)
            finally:
                st.speech_s += time.perf_counter() - t
        return speech_memo[key]

    def audio_passes(planned: list) -> list:
        """The planned windows the silence and speech filters would keep (rendering the others
        in advance would be wasted): the same per-window verdicts as below, from the audio pass."""
        db = np.concatenate(peaks) if peaks else np.zeros(0, np.float32)
        keep = [w for w in planned if not scfg.enabled or window_silence(db, st.sr, scfg, w.start_s, w.end_s).passed]
        if spcfg.enabled and keep and stop_on_reject:
            raw = st.audio.array()
            try:
                src = speech_for(raw[0] if raw.shape[0] else np.zeros(0, np.float32), [(w.start_s, w.end_s) for w in keep])
            except BiaudioError:  # e.g. a missing checkpoint: the verdict below reports it (stage clean)
                return keep
            keep = [w for w in keep if window_speech(src, w.start_s, w.end_s, spcfg).passed]
        return keep

    try:
        check_file(path)
    except BiaudioError as e:
        fail(e, "probe")
        res.timings["probe"] = time.perf_counter() - t0
        return res
    st_size = tuple(stcfg.size) if stcfg.size else None
    try:
        if need_audio:
            count_audio_decode(path)
        args = (st_size, on_audio if need_audio else None, on_proxy, on_static if stcfg.enabled else None)
        if st.two_pass:
            # audio-only pass (probe from its dump), the caller's plan, then the video pass
            shared_decode(path, None, None, None, None, on_audio, None, None, threads=threads, on_header=setup)
            if bad_audio:
                res.timings["decode"] = time.perf_counter() - t0 - res.timings.get("probe", 0.0)
                fail(MediaError(str(path), "nan_audio", bad_audio[0], stage="decode"), "decode")
                return res
            branches = _plan_branches(plan, st, res, path, segcfg, section, audio_passes)
            shared_decode(path, st.info, (st.pw, st.ph), stcfg.fps, st_size, None, on_proxy,
                          on_static if stcfg.enabled else None, threads=threads, proxy_flags=proxy_flags,
                          static_y_plane=st.y_plane, proxy_band=segcfg.proxy_band, extra=branches)
        else:  # one process; static frames as the Y plane (a plane copy; setup()'s LUT makes it format=gray)
            shared_decode(path, None, (st.pw, st.ph), stcfg.fps, *args, threads=threads, proxy_flags=proxy_flags,
                          static_y_plane=True, on_header=setup, proxy_band=segcfg.proxy_band)
    except _Regraph as rg:  # not 8-bit YUV: the general graph (format=gray), probed already
        try:
            st.y_plane = False
            peaks.clear()
            bad_audio.clear()
            sized(rg.info)
            if need_audio:
                count_audio_decode(path)  # the audio is decoded a second time too
            shared_decode(path, rg.info, (st.pw, st.ph), stcfg.fps, *args, threads=threads, proxy_flags=proxy_flags,
                          static_y_plane=False, audio_block=st.sr, proxy_band=segcfg.proxy_band)
        except BiaudioError as e:
            fail(e, e.stage or "decode")
            return res
    except BiaudioError as e:
        fail(e, e.stage or "decode")
        return res
    res.timings["decode"] = time.perf_counter() - t0 - res.timings.get("probe", 0.0) - st.speech_s
    fps, sr, det, acc, audio = res.fps, st.sr, st.det, st.acc, st.audio
    if bad_audio:
        fail(MediaError(str(path), "nan_audio", bad_audio[0], stage="decode"), "decode")
        return res
    res.n_frames = det.n_frames
    raw = audio.array()
    db = np.concatenate(peaks) if peaks else np.zeros(0, np.float32)

    # ---- segmentation: the windows the filters judge
    res.cuts = det.cuts()
    wins = windows(det.n_frames / fps, fps, res.cuts, segcfg)
    if section is not None:
        s0, s1 = section
        wins = [w for w in wins if w.start_s >= s0 - 1e-6 and w.end_s <= s1 + 1e-6]
    res.all_windows = list(wins)
    failed: dict[int, BiaudioError] = {}  # window index -> first failing filter
    for w in wins:
        res.window_scores[w.clip_id(res.source_id)] = {"silence": None, "speech": None, "static": None}

    def judge(src, per_window) -> bool:
        """Record the source result and each window's; False when the source is rejected."""
        res.filters[src.name] = src
        any_pass = False
        for j, w in enumerate(wins):
            r = per_window(w)
            if r is None:
                continue
            res.window_scores[w.clip_id(res.source_id)][src.name] = float(r.score)
            any_pass |= r.passed
            if not r.passed and j not in failed:
                failed[j] = RejectItem(str(path), r.reason or src.name, r.detail, stage="clean")
        if not src.passed and not any_pass:
            fail(RejectItem(str(path), src.reason or src.name, src.detail, stage="clean"), "clean")
            return not stop_on_reject
        return True

    # ---- audio filters (cheap first)
    if scfg.enabled and not judge(silence_from_peaks(db, scfg), lambda w: window_silence(db, sr, scfg, w.start_s, w.end_s)):
        return res
    if spcfg.enabled:
        spans = None if not stop_on_reject else [(w.start_s, w.end_s) for j, w in enumerate(wins) if j not in failed]
        try:
            src = speech_for(raw[0] if raw.shape[0] else np.zeros(0, np.float32), spans)
        except BiaudioError as e:
            fail(e, "clean")
            return res
        finally:
            res.timings["speech"] = st.speech_s  # the detector's own time, wherever it ran
        analyzed = spans is None or bool(spans)
        if not judge(src, lambda w: window_speech(src, w.start_s, w.end_s, spcfg)
                     if analyzed and (spans is None or any(a <= w.start_s and w.end_s <= b for a, b in spans)) else None):
            return res
    if acc is not None and not judge(acc.result(), lambda w: acc.window_result(w.start_s, w.end_s)):
        return res

    if not wins:
        detail = (f"no window inside the section {section[0]:g}-{section[1]:g} s" if section is not None else
                  f"no {segcfg.window_s:g}-s window fits inside a shot ({det.n_frames / fps:.2f} s, {len(res.cuts)} cut(s))")
        fail(RejectItem(str(path), "too_short", detail, stage="segment"), "segment")
    res.windows = [w for j, w in enumerate(wins) if j not in failed]
    res.window_rejects = [(wins[j], failed[j]) for j in sorted(failed)]
    if keep_foa and res.reject is None:
        from biaudio.spatial.foa import to_ambix

        try:
            res.foa = st.foa if st.foa is not None else to_ambix(raw, res.validated.convention, str(path))
            res.audio_sr = sr
        except BiaudioError as e:
            fail(e, "decode")
    return res


__all__ = ["FileAnalysis", "analyze_file"]
