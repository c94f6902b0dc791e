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
    """What the decode callbacks of :class:`FileAnalyzer` share for one file: sized from the probe
    (which arrives inside the decode, from ffmpeg's input dump), then filled block by block."""

    sr: int = 48000  # audio rate and channels (from the probe)
    ch: int = 4
    n_chunk: int = 1  # silence-filter chunk, samples
    audio: _Grow | None = None  # the decoded audio, (min(ch, 4), T)
    peaks: list[np.ndarray] = field(default_factory=list)  # silence-filter chunk peaks (dB), block by block
    bad_audio: list[str] = field(default_factory=list)  # NaN/Inf blocks seen
    det: Any = None  # segment.CutDetector fed by the proxy frames
    acc: Any = None  # clean.static.StaticAccumulator fed by the gray frames (None: filter off)
    pw: int = 0  # proxy frame size
    ph: int = 0
    proxy_flags: str = ""  # proxy scaler flags
    sw: int = 0  # static-filter frame size
    sh: int = 0
    y_plane: bool = True  # static frames as the Y plane plus a LUT (8-bit YUV) instead of format=gray
    two_pass: bool = False  # audio pass, the build's plan, then the video pass
    info: Any = None  # ProbeInfo
    foa: np.ndarray | None = None  # ambiX FOA made for the plan (two-pass only)
    speech_memo: dict = field(default_factory=dict)  # spans -> speech_score result
    speech_s: float = 0.0  # the speech detector's own seconds, wherever it ran

    def db(self) -> np.ndarray:
        """All chunk peaks so far (dB)."""
        return np.concatenate(self.peaks) if self.peaks else np.zeros(0, np.float32)


@dataclass
class AudioPlan:
    """What the build plans its renders from between the two passes (see :meth:`FileAnalyzer.to_plan`)."""

    info: Any  # ProbeInfo
    foa: np.ndarray  # (4, T) ambiX float32 at ``sr``
    sr: int
    windows: list  # the windows a video without cuts gives that pass the audio filters


class FileAnalyzer:
    """Probe, validate, filter and segment one file with a single ffmpeg decode, step by step.

    The steps, in the order a caller runs them (:func:`analyze_file` runs them for a caller that
    needs no renders; ``biaudio.stages.item`` runs them with its renders in between)::

        an = FileAnalyzer(path, ...)
        an.open()                 # the file is readable at all
        an.decode()               # one pass: audio, shot-detection proxy and static frames
        # or, with two_pass=True:
        an.decode_audio()         # an audio-only pass (its input dump is the probe)
        an.to_plan()              # -> AudioPlan: ambiX FOA and the windows worth rendering early
        an.decode_video(branches) # the video pass; the caller's VideoBranches ride along
        res = an.judge()          # segmentation, the per-window filter verdicts, the FOA -> FileAnalysis

    Each step returns False (``to_plan``: None) once the file is rejected; the reject is in
    ``an.res.reject`` with its stage, and the caller stops there and returns ``an.res``. Nothing
    raises for bad input. The two passes exist so that the build decodes the video once: its
    renders of the planned windows join the video pass instead of decoding the file again; the
    analysis itself (scores, windows, rejects) is the same either way.
    """

    def __init__(self, path: str | Path, source_id: str | None = None, validate_cfg=None, silence_cfg=None,
                 static_cfg=None, speech_cfg=None, segment_cfg=None, stop_on_reject: bool = True,
                 threads: int | None = None, keep_foa: bool = True, section: tuple[float, float] | None = None,
                 two_pass: bool = False) -> None:
        from biaudio.clean.silence import SilenceConfig
        from biaudio.clean.speech import SpeechConfig
        from biaudio.clean.static import StaticConfig
        from biaudio.ingest.validate import ValidateConfig
        from biaudio.segment import SegmentConfig

        self.path = path = Path(path)
        self.vcfg, self.scfg = validate_cfg or ValidateConfig(), silence_cfg or SilenceConfig()
        self.stcfg, self.spcfg = static_cfg or StaticConfig(), speech_cfg or SpeechConfig()
        self.segcfg = segment_cfg or SegmentConfig()
        self.stop_on_reject, self.threads, self.keep_foa, self.section = stop_on_reject, threads, keep_foa, section
        self.res = FileAnalysis(path=path, source_id=source_id or path.stem)
        self.need_audio = self.scfg.enabled or self.spcfg.enabled or keep_foa
        self.static_size = tuple(self.stcfg.size) if self.stcfg.size else None
        st = self.st = _DecodeState(two_pass=two_pass and keep_foa)
        st.pw, st.ph = self.segcfg.proxy_dims()
        st.proxy_flags = self.segcfg.proxy_scale_flags
        if self.segcfg.detector == "none":  # frames are only counted: the smallest, cheapest proxy will do
            st.pw, st.ph, st.proxy_flags = 16, 16, "fast_bilinear"
        self.t0 = time.perf_counter()

    @property
    def two_pass(self) -> bool:
        return self.st.two_pass

    def fail(self, e: BiaudioError, stage: str) -> None:
        """Record the file's reject (the first one counts), with ``stage`` where ``e`` names none."""
        if self.res.reject is None:
            self.res.reject = e if e.stage else type(e)(e.path or str(self.path), e.reason, e.detail, stage=stage)

    # ------------------------------------------------------------------ the decode

    def open(self) -> bool:
        """Is the file there and readable? (ffprobe's cheap check, before any decode.)"""
        from biaudio.media.ffprobe import check_file

        try:
            check_file(self.path)
        except BiaudioError as e:
            self.fail(e, "probe")
            self.res.timings["probe"] = time.perf_counter() - self.t0
            return False
        return True

    def decode(self) -> bool:
        """The one-pass decode: one ffmpeg process whose input dump is the probe (no separate
        ffprobe process, see biaudio.media.header), handing out audio blocks, proxy frames and
        2-fps gray frames. The static frames are the Y plane (a plane copy; the LUT from the probe
        makes it ``format=gray``); a file that is not 8-bit YUV is decoded again with the general
        graph, once the probe has said so."""
        from biaudio.media.audio import count_audio_decode

        st, stcfg = self.st, self.stcfg
        try:
            if self.need_audio:
                count_audio_decode(self.path)
            shared_decode(self.path, None, (st.pw, st.ph), stcfg.fps, *self._outputs(), threads=self.threads,
                          proxy_flags=st.proxy_flags, static_y_plane=True, on_header=self._setup,
                          proxy_band=self.segcfg.proxy_band)
        except _Regraph as rg:  # not 8-bit YUV: the general graph (format=gray), probed already
            try:
                st.y_plane = False
                st.peaks.clear()
                st.bad_audio.clear()
                self._sized(rg.info)
                if self.need_audio:
                    count_audio_decode(self.path)  # the audio is decoded a second time too
                shared_decode(self.path, rg.info, (st.pw, st.ph), stcfg.fps, *self._outputs(), threads=self.threads,
                              proxy_flags=st.proxy_flags, static_y_plane=False, audio_block=st.sr,
                              proxy_band=self.segcfg.proxy_band)
            except BiaudioError as e:
                self.fail(e, e.stage or "decode")
                return False
        except BiaudioError as e:
            self.fail(e, e.stage or "decode")
            return False
        return self._decoded()

    def decode_audio(self) -> bool:
        """Pass 1 of 2: the audio only (its input dump is the probe, as in :meth:`decode`)."""
        from biaudio.media.audio import count_audio_decode

        try:
            if self.need_audio:
                count_audio_decode(self.path)
            shared_decode(self.path, None, None, None, None, self._on_audio, None, None, threads=self.threads,
                          on_header=self._setup)
        except BiaudioError as e:
            self.fail(e, e.stage or "decode")
            return False
        if self.st.bad_audio:
            self.res.timings["decode"] = time.perf_counter() - self.t0 - self.res.timings.get("probe", 0.0)
            self.fail(MediaError(str(self.path), "nan_audio", self.st.bad_audio[0], stage="decode"), "decode")
            return False
        return True

    def to_plan(self) -> AudioPlan | None:
        """Between the passes: the FOA as ambiX and the windows of a video without cuts that pass
        the audio filters, for the build to render early; None when there is nothing to plan (no
        such window, or a FOA that cannot be converted: :meth:`judge` reports that as before)."""
        from biaudio.segment import windows
        from biaudio.spatial.foa import to_ambix

        st, info = self.st, self.st.info
        try:
            st.foa = to_ambix(st.audio.array(), self.res.validated.convention, str(self.path))
        except BiaudioError:
            return None
        fps = float(info.fps or 30.0)
        n_frames = int(round(float(info.duration_s or 0.0) * fps))
        planned = self._in_section(windows(n_frames / fps, fps, [], self.segcfg))
        planned = self._audio_passes(planned)
        return AudioPlan(info, st.foa, st.sr, planned) if planned else None

    def decode_video(self, branches: list = ()) -> bool:
        """Pass 2 of 2: proxy and static frames; ``branches`` (VideoBranches) ride along."""
        st, stcfg = self.st, self.stcfg
        try:
            shared_decode(self.path, st.info, (st.pw, st.ph), stcfg.fps, self.static_size, None, self._on_proxy,
                          self._on_static if stcfg.enabled else None, threads=self.threads,
                          proxy_flags=st.proxy_flags, static_y_plane=st.y_plane, proxy_band=self.segcfg.proxy_band,
                          extra=list(branches))
        except BiaudioError as e:
            self.fail(e, e.stage or "decode")
            return False
        return self._decoded()

    def _decoded(self) -> bool:
        """After the (last) pass: its time, and a reject for NaN/Inf audio."""
        self.res.timings["decode"] = (time.perf_counter() - self.t0 - self.res.timings.get("probe", 0.0)
                                      - self.st.speech_s)
        if self.st.bad_audio:
            self.fail(MediaError(str(self.path), "nan_audio", self.st.bad_audio[0], stage="decode"), "decode")
            return False
        return True

    def _outputs(self) -> tuple:
        """shared_decode's (static size, on_audio, on_proxy, on_static) for the one-pass decode."""
        return (self.static_size, self._on_audio if self.need_audio else None, self._on_proxy,
                self._on_static if self.stcfg.enabled else None)

    def _setup(self, dump: list[str]) -> dict:
        """Probe + validate from ffmpeg's input dump (ffprobe when the dump is not certain), then
        size the outputs. Raising here rejects the file before anything is decoded."""
        from biaudio.ingest.validate import validate_probe
        from biaudio.media.header import parse_input_dump
        from biaudio.media.probe import probe, probe_from_dict

        path = self.path
        try:
            d = parse_input_dump(dump)
            info = probe_from_dict(path.absolute(), d) if d is not None else probe(path.absolute())
            info.path = str(path.absolute())
            self.res.validated = validate_probe(info, path, self.vcfg, self.res.source_id)
        except BiaudioError as e:
            raise type(e)(e.path or str(path), e.reason, e.detail, stage="probe") from None
        finally:
            self.res.timings["probe"] = time.perf_counter() - self.t0
        return self._sized(info)

    def _sized(self, info) -> dict:
        """(Re)create the per-file state for ``info`` and size the outputs."""
        from biaudio.clean.silence import chunk_samples
        from biaudio.clean.static import StaticAccumulator
        from biaudio.segment import CutDetector

        st, stcfg = self.st, self.stcfg
        fps = float(info.fps or 30.0)
        self.res.fps = fps
        st.sr, st.ch = int(info.sample_rate or 48000), int(info.audio_channels)
        st.n_chunk = chunk_samples(st.sr, self.scfg)
        st.audio = _Grow(min(st.ch, 4), int((info.duration_s or 0.0) * st.sr) + st.sr)
        st.det = CutDetector(fps, self.segcfg)
        st.info = info
        y_plane, lut = _static_gray(info)
        if st.two_pass:  # the video pass comes after the probe: choose its graph now
            st.y_plane = y_plane
        elif stcfg.enabled and not y_plane and st.y_plane:
            raise _Regraph(info)
        st.acc = StaticAccumulator(stcfg, lut=lut if st.y_plane else None) if stcfg.enabled else None
        st.sw, st.sh = tuple(stcfg.size) if stcfg.size else (int(info.width), int(info.height))
        spec = {"proxy": (st.pw * st.ph * 3 // 2, self._on_proxy)}
        if self.need_audio:
            spec["audio"] = (st.ch * 4 * st.sr, self._on_audio)
        if st.acc is not None:
            spec["static"] = (st.sw * st.sh, self._on_static)
        return spec

    def _on_audio(self, i: int, buf: bytes) -> None:
        from biaudio.clean.silence import chunk_peaks_db

        st = self.st
        ch, n_chunk, audio = st.ch, st.n_chunk, st.audio
        x = np.frombuffer(buf, dtype=np.float32).reshape(-1, ch).T
        if not np.isfinite(x).all():
            st.bad_audio.append(f"NaN/Inf in audio block {i}")
            x = np.nan_to_num(x)
        a0 = audio.n - audio.n % n_chunk  # chunks are cut from the start of the stream
        audio.add(x[:4])
        k = ((audio.n - a0) // n_chunk) * n_chunk
        if k:
            st.peaks.append(chunk_peaks_db(audio.buf[:, a0:a0 + k], n_chunk))

    def _on_proxy(self, i: int, buf: bytes) -> None:
        import cv2

        st = self.st
        if self.segcfg.detector == "none":
            st.det.n_frames += 1
            return
        st.det.add_bgr(cv2.cvtColor(np.frombuffer(buf, dtype=np.uint8).reshape(st.ph * 3 // 2, st.pw),
                                    cv2.COLOR_YUV2BGR_I420))

    def _on_static(self, i: int, buf: bytes) -> None:
        self.st.acc.add(i / self.stcfg.fps, np.frombuffer(buf, dtype=np.uint8).reshape(self.st.sh, self.st.sw))

    # ------------------------------------------------------------------ the verdicts

    def _in_section(self, wins: list) -> list:
        if self.section is None:
            return wins
        s0, s1 = self.section
        return [w for w in wins if w.start_s >= s0 - 1e-6 and w.end_s <= s1 + 1e-6]

    def _speech_for(self, w_channel: np.ndarray, spans) -> object:
        """speech_score, once per set of spans (the plan and the verdict ask for the same ones
        when the video has no cut)."""
        from biaudio.clean.speech import speech_score

        st = self.st
        key = None if spans is None else tuple(spans)
        if key not in st.speech_memo:
            t = time.perf_counter()
            try:
                st.speech_memo[key] = speech_score(w_channel, st.sr, self.spcfg, spans=spans)
            finally:
                st.speech_s += time.perf_counter() - t
        return st.speech_memo[key]

    def _audio_passes(self, planned: list) -> list:
        """The planned windows the silence and speech filters would keep (rendering the others
        in advance would be wasted): the same per-window verdicts as :meth:`judge`'s, from the audio pass."""
        from biaudio.clean.silence import window_silence
        from biaudio.clean.speech import window_speech

        if not planned:
            return planned
        st, scfg = self.st, self.scfg
        db = st.db()
        keep = [w for w in planned if not scfg.enabled or window_silence(db, st.sr, scfg, w.start_s, w.end_s).passed]
        if self.spcfg.enabled and keep and self.stop_on_reject:
            raw = st.audio.array()
            try:
                src = self._speech_for(raw[0] if raw.shape[0] else np.zeros(0, np.float32),
                                       [(w.start_s, w.end_s) for w in keep])
            except BiaudioError:  # e.g. a missing checkpoint: the verdict reports it (stage clean)
                return keep
            keep = [w for w in keep if window_speech(src, w.start_s, w.end_s, self.spcfg).passed]
        return keep

    def judge(self) -> FileAnalysis:
        """After the decode: the windows (shots, section), each filter's verdict on the source and
        on every window (cheap filters first), and the FOA as ambiX; returns :attr:`res`.

        The filters judge **clips** (the 8-s windows): the per-chunk peaks, per-frame-pair MSEs and
        per-VAD-frame activity were computed once over the source, then each window gets its own
        silence / speech / static ratios (``window_scores``) and verdict; failing windows go to
        ``window_rejects`` (first failing filter in the order silence, speech, static) and
        ``windows`` keeps the rest. The source-level verdict rejects the whole source only when it
        fails *and* no window passes that filter (a fully silent or frozen source, or one too short
        for any window). With ``stop_on_reject=False`` every score is computed even after a
        rejection: the speech detector then runs over the whole source, otherwise only over the
        windows that survived the silence filter.
        """
        from biaudio.segment import windows

        res, st = self.res, self.st
        fps = res.fps
        res.n_frames = st.det.n_frames
        res.cuts = st.det.cuts()
        wins = self._in_section(windows(st.det.n_frames / fps, fps, res.cuts, self.segcfg))
        res.all_windows = list(wins)
        for w in wins:
            res.window_scores[w.clip_id(res.source_id)] = {"silence": None, "speech": None, "static": None}
        failed: dict[int, BiaudioError] = {}  # window index -> first failing filter
        if not self._filter(wins, failed):
            return res
        if not wins:
            section = self.section
            detail = (f"no window inside the section {section[0]:g}-{section[1]:g} s" if section is not None else
                      f"no {self.segcfg.window_s:g}-s window fits inside a shot ({st.det.n_frames / fps:.2f} s, "
                      f"{len(res.cuts)} cut(s))")
            self.fail(RejectItem(str(self.path), "too_short", detail, stage="segment"), "segment")
        res.windows = [w for j, w in enumerate(wins) if j not in failed]
        res.window_rejects = [(wins[j], failed[j]) for j in sorted(failed)]
        if self.keep_foa and res.reject is None:
            self._keep_foa()
        return res

    def _filter(self, wins: list, failed: dict[int, BiaudioError]) -> bool:
        """Silence, speech, static (cheap first) on the source and on each window; False when the
        source is rejected and ``stop_on_reject`` (the later filters are then not run)."""
        from biaudio.clean.silence import silence_from_peaks, window_silence
        from biaudio.clean.speech import window_speech

        st, scfg, spcfg = self.st, self.scfg, self.spcfg
        sr, acc, db = st.sr, st.acc, st.db()
        if scfg.enabled and not self._record(silence_from_peaks(db, scfg), wins, failed,
                                             lambda w: window_silence(db, sr, scfg, w.start_s, w.end_s)):
            return False
        if spcfg.enabled:
            spans = None if not self.stop_on_reject else [(w.start_s, w.end_s) for j, w in enumerate(wins)
                                                          if j not in failed]
            raw = st.audio.array()
            try:
                src = self._speech_for(raw[0] if raw.shape[0] else np.zeros(0, np.float32), spans)
            except BiaudioError as e:
                self.fail(e, "clean")
                return False
            finally:
                self.res.timings["speech"] = st.speech_s  # the detector's own time, wherever it ran
            analyzed = spans is None or bool(spans)

            def per_window(w):
                if analyzed and (spans is None or any(a <= w.start_s and w.end_s <= b for a, b in spans)):
                    return window_speech(src, w.start_s, w.end_s, spcfg)
                return None

            if not self._record(src, wins, failed, per_window):
                return False
        return acc is None or self._record(acc.result(), wins, failed, lambda w: acc.window_result(w.start_s, w.end_s))

    def _record(self, src, wins: list, failed: dict[int, BiaudioError], per_window) -> bool:
        """Record the source result and each window's; False when the source is rejected."""
        res = self.res
        res.filters[src.name] = src
        any_pass = False
        for j, w in enumerate(wins):
            r = per_window(w)
            if r is None:
                continue
            res.window_scores[w.clip_id(res.source_id)][src.name] = float(r.score)
            any_pass |= r.passed
            if not r.passed and j not in failed:
                failed[j] = RejectItem(str(self.path), r.reason or src.name, r.detail, stage="clean")
        if not src.passed and not any_pass:
            self.fail(RejectItem(str(self.path), src.reason or src.name, src.detail, stage="clean"), "clean")
            return not self.stop_on_reject
        return True

    def _keep_foa(self) -> None:
        """The decoded audio as the build's FOA (ambiX), so the render needs no decode of its own."""
        from biaudio.spatial.foa import to_ambix

        res, st = self.res, self.st
        try:
            res.foa = st.foa if st.foa is not None else to_ambix(st.audio.array(), res.validated.convention,
                                                                 str(self.path))
            res.audio_sr = st.sr
        except BiaudioError as e:
            self.fail(e, "decode")


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
) -> FileAnalysis:
    """Probe, validate, filter and segment one file with a single ffmpeg decode (the steps of
    :class:`FileAnalyzer` in a row, for a caller that renders nothing during the decode).

    Never raises for bad input: the first source-level failure is returned in
    ``FileAnalysis.reject`` (with its stage) so the caller can write the reject row and go on.
    ``keep_foa``: keep the decoded audio as ``foa`` (4, T) ambiX float32 at the source rate
    ``audio_sr``, so a build can render from this decode instead of decoding the file again.
    ``section``: (start_s, end_s): only windows inside it count (a local file with a section).
    ``stop_on_reject=False`` computes every score even after a rejection (``biaudio clean``).
    """
    an = FileAnalyzer(path, source_id, validate_cfg, silence_cfg, static_cfg, speech_cfg, segment_cfg,
                      stop_on_reject=stop_on_reject, threads=threads, keep_foa=keep_foa, section=section)
    if not (an.open() and an.decode()):
        return an.res
    return an.judge()


__all__ = ["AudioPlan", "FileAnalysis", "FileAnalyzer", "analyze_file"]
