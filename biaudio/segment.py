"""Shot boundaries (PySceneDetect) and fixed-length windows inside shots.

Why: a training clip that spans a hard cut pairs the audio of one shot with the picture of another.
Cuts are detected on a small proxy (PySceneDetect's own advice: downscale for speed; content
differences survive), stored as *frame indices* plus fps (not timecodes, which round), and a few
frames around each cut are trimmed because detectors are often one frame off. Windows then tile
each shot with a fixed length and stride; a video that yields none is rejected as ``too_short``.

Flashes are not cuts. A frame-difference detector fires at every firework burst, lightning stroke,
strobe, headlight or auto-exposure jump (2-3 "cuts" in a 10-s fireworks clip leave no 8-s window), so
every candidate cut is checked with a few frames of look-ahead (see :class:`FlashCheck`): a picture
that comes back within ``flash_frames`` frames was a flash, and a change that only brightens or only
darkens while the structure of most of the frame survives was a burst of light. A real cut does
neither: every frame pair straddling it differs, and it changes the structure (or the colour, or
its pixels change both ways). The check runs on
the proxy frames the detector already gets (one decode).

A dissolve is a cut. Spread over a few dozen frames its frame-to-frame change stays far below the
threshold, yet a window across it mixes two shots; :class:`DissolveCheck` (``dissolve_frames``)
compares frames up to that far apart and keeps a change only where the frames between are a blend
of the two ends, the structure changed and the new picture stays, placing the cut mid-transition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class SegmentConfig(BaseModel):
    """Recipe section ``segment``. Defaults are the paper recipe's: 8-s windows without overlap inside
    PySceneDetect content-detector shots, with the flash and dissolve checks on."""

    model_config = ConfigDict(extra="forbid")

    detector: Literal["content", "adaptive", "none"] = "content"
    threshold: float = Field(27.0, description="ContentDetector threshold")
    adaptive_threshold: float = Field(3.0, description="AdaptiveDetector threshold")
    min_scene_s: float = Field(0.6, ge=0, description="shortest shot PySceneDetect may report")
    proxy_size: tuple[int, int] = Field((160, 80), description="(w, h) of the decoded proxy, even numbers (PySceneDetect: downscale for speed)")
    proxy_band: float = Field(
        0.5, gt=0, le=1, description="central fraction of the frame height the detector sees (an equirect's "
        "horizon band; the proxy is then proxy_size[1] * band rows); < 1 skips scaling the poles")
    proxy_scale_flags: str = Field("area", description="ffmpeg scaler for the proxy; fast_bilinear is cheaper but aliases (false cuts on water)")
    trim_frames: int = Field(4, ge=0, description="frames dropped on each side of a cut")
    window_s: float = Field(8.0, gt=0)
    stride_s: float | None = Field(None, gt=0, description="window start step; None = window_s (no overlap)")
    max_windows: int | None = Field(None, ge=1, description="per-video maximum (evenly spread over the video)")
    flash_frames: int = Field(
        5, ge=0, le=60, description="flash check: a candidate cut whose picture comes back within this many "
        "frames (or that only brightens/darkens with the structure kept) is a flash, not a cut; 0 = off "
        "(every PySceneDetect cut counts)")
    flash_structure: float = Field(
        0.6, ge=0, le=1, description="flash check: share of the proxy's tiles whose structure must survive a "
        "one-sided brightness change for it to count as a flash (a local burst changes the rest)")

    dissolve_frames: int = Field(
        60, ge=0, le=240, description="dissolve check: longest gradual transition (frames) detected as a shot "
        "change, the cut placed mid-transition; 0 = off (hard cuts only)")

    @staticmethod
    def hash_view(dumped: dict) -> dict:
        """The section as the recipe hash sees it: with the flash check off (``flash_frames: 0``) the
        detector is the one before the check existed, so its keys stay out and such a recipe keeps
        the hash (and the resumable items) it had then; likewise ``dissolve_frames: 0``. With a check
        on the data can change, and so does the hash."""
        out = dict(dumped)
        if out.get("dissolve_frames") == 0:
            out.pop("dissolve_frames")
        if out.get("flash_frames") == 0:
            out.pop("flash_frames")
            if "dissolve_frames" not in out:  # the dissolve check uses flash_structure too
                out.pop("flash_structure", None)
        return out

    def proxy_dims(self) -> tuple[int, int]:
        """(w, h) of the proxy frames actually decoded: the band's share of ``proxy_size`` rows."""
        w, h = self.proxy_size
        return w, max(2, int(round(h * self.proxy_band / 2)) * 2)

    @field_validator("proxy_size")
    @classmethod
    def _even(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 16 or v[1] < 16 or v[0] % 2 or v[1] % 2:
            raise ValueError(f"proxy_size must be even and >= 16, got {v}")
        return v


@dataclass(frozen=True)
class Window:
    """A window in source time; ``shot_index`` counts shots from 0."""

    start_s: float
    end_s: float
    shot_index: int

    @property
    def start_ms(self) -> int:
        return int(round(self.start_s * 1000.0))

    def clip_id(self, source_id: str) -> str:
        """Stable clip id ``<source_id>_<start_ms>`` (same source + same recipe -> same id)."""
        return f"{source_id}_{self.start_ms}"

    def to_dict(self) -> dict:
        return asdict(self)


def _content_score(a: np.ndarray, b: np.ndarray) -> float:
    """PySceneDetect's ContentDetector score (default weights) between two HSV frames: the mean
    absolute difference of hue, saturation and value, averaged."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


class FlashCheck:
    """Tells a flash from a cut at a candidate frame ``c`` (the first frame of the would-be shot).

    Two tests, either one makes the candidate a flash:

    * **comes back**: the frame before the candidate and one of the ``flash_frames`` after it, or
      the candidate frame and one of the ``flash_frames`` before the frame before it, are closer
      than half the content threshold, allowing for a yaw pan of up to 2 degrees per frame (a roll
      of the equirect's columns). A flash of up to ``flash_frames`` frames passes (its onset and
      its end), however bright, even when it clips the picture to white; a real cut never does,
      because every such pair straddles it.
    * **one-sided light**: brightness (HSV value) makes at least a quarter of the content score (a
      change of colour grade between two takes of one spot is mostly hue and saturation), at least
      80 % of the luma change across the candidate goes one way (only brighter, or only darker),
      and at least ``flash_structure`` of the proxy's tiles keep their structure (zero-mean
      normalised correlation >= 0.5, or flat on both sides) between the frames ``flash_frames``
      before and after (the same pan allowed). This catches what lasts longer than
      ``flash_frames``: a firework that blooms for a second, an auto-exposure step. A hard cut
      changes the structure everywhere, even one to a much brighter shot; a cut between two takes
      from the same spot is mostly a change of colour or changes pixels both ways; a short
      dissolve's end frames are the two different shots. What it cannot tell: a change of light
      between two takes of one spot that keeps the structure counts as a flash.
    """

    SIGN_SHARE = 0.8  # share of the changed luma that must go one way
    VALUE_SHARE = 0.25  # share of the content score that must be brightness (HSV value)
    MIN_CHANGE = 8.0  # a pixel "changed" above this many grey levels
    TILE_NCC = 0.5
    FLAT_STD = 4.0  # a tile this flat has no structure to compare
    PAN_DEG = 2.0  # fastest yaw pan (degrees per frame) the comparisons allow for

    def __init__(self, cfg: SegmentConfig) -> None:
        self.k = int(cfg.flash_frames)
        self.structure = float(cfg.flash_structure)
        self.back = 0.5 * float(cfg.threshold)
        self.frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> (hsv, blurred value)
        self.keep = 2 * self.k + 12  # frames kept: the look-back, the look-ahead, and slack for late candidates

    def add(self, i: int, bgr: np.ndarray) -> None:
        import cv2

        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        v = cv2.GaussianBlur(hsv[..., 2].astype(np.float32), (3, 3), 0)
        self.frames[i] = (hsv, v)
        self.frames.pop(i - self.keep, None)

    def _shifts(self, w: int, frames_apart: int) -> range:
        """Horizontal shifts (columns) a yaw pan of up to ``PAN_DEG`` per frame makes in
        ``frames_apart`` frames: on an equirect a yaw turn is a roll of the columns."""
        r = int(np.ceil(w * self.PAN_DEG * frames_apart / 360.0))
        return range(-r, r + 1)

    def is_flash(self, c: int, last: int) -> bool:
        """Whether candidate ``c`` is a flash, seeing frames up to ``last`` (the look-ahead is
        shorter at the end of the video)."""
        f = self.frames
        if c - 1 not in f or c not in f:
            return False
        pre = [f[c - 1 - j] for j in range(self.k + 1) if c - 1 - j in f]
        post = [f[c + k] for k in range(self.k + 1) if c + k in f and c + k <= last]
        w = f[c][1].shape[1]
        # comes back: the frame before vs a later one, or the first after vs an earlier one
        pairs = [(0, k) for k in range(1, len(post))] + [(j, 0) for j in range(1, len(pre))]
        for j, k in pairs:
            a, b = pre[j][0], post[k][0]
            if min(_content_score(a, np.roll(b, r, axis=1)) for r in self._shifts(w, j + k + 1)) < self.back:
                return True
        dh = np.abs(f[c][0].astype(np.int16) - f[c - 1][0].astype(np.int16)).reshape(-1, 3).mean(0)
        if dh[2] < self.VALUE_SHARE * float(dh.sum()):  # mostly hue/saturation: a colour change, not light
            return False
        d = f[c][1] - f[c - 1][1]
        changed = np.abs(d) > self.MIN_CHANGE
        if not changed.any():
            return False
        dc = d[changed]
        if abs(float(dc.sum())) < self.SIGN_SHARE * float(np.abs(dc).sum()):
            return False
        a, b = pre[-1][1], post[-1][1]
        kept = max(self.tiles_kept(a, np.roll(b, r, axis=1)) for r in self._shifts(w, len(pre) + len(post) - 1))
        return kept >= self.structure

    def tiles_kept(self, a: np.ndarray, b: np.ndarray) -> float:
        """Share of tiles (about square, two rows on the usual horizon band) whose structure is the
        same in ``a`` and ``b`` up to gain and offset: what a change of light leaves alone."""
        h, w = a.shape
        t = max(8, h // 2)
        kept = n = 0
        for y in range(0, h - t + 1, t):
            for x in range(0, w - t + 1, t):
                p, q = a[y:y + t, x:x + t], b[y:y + t, x:x + t]
                sp, sq = float(p.std()), float(q.std())
                n += 1
                if sp < self.FLAT_STD or sq < self.FLAT_STD:
                    kept += sp < self.FLAT_STD and sq < self.FLAT_STD
                    continue
                ncc = float(((p - p.mean()) * (q - q.mean())).mean()) / (sp * sq)
                kept += ncc >= self.TILE_NCC
        return kept / max(1, n)


class DissolveCheck:
    """Finds gradual transitions (dissolves, fades through a blend) that frame-to-frame detectors
    miss: a dissolve of n frames spreads one cut's change over n + 1 small steps (a 4-frame one stays
    at half the content threshold), so the comparison is long-range.

    For every frame ``q`` and every span ``K`` of 3, 5, 9, 17, ... frames up to ``dissolve_frames + 1``
    the frames ``p = q - K`` and ``q`` are compared. A transition between them needs all of:

    * **a big change**: their content score (the yaw pan between them undone, see below) reaches the
      content threshold, as a hard cut between them would;
    * **new structure**: fewer than ``flash_structure`` of the proxy's tiles keep their structure
      from ``p`` to ``q`` (the flash check's tile test). A change of light, a burst of fireworks, an
      exposure drift, a moving object or a pan keeps most of them; two different shots do not;
    * **a blend**: every frame between them is ``(1 - a) p + a q`` with ``a`` rising from 0 to 1
      (least squares on the pixels, the residual under ``BLEND_RESIDUAL`` of ``|q - p|^2``). A
      dissolve is exactly that; water, crowds, a camera moving forward are not a blend of the frames
      around them (a blend ghosts, motion stays sharp). Between 0.1 and 0.9, ``a`` must follow a
      straight ramp within ``RAMP`` (a step to a flash or a change of light and then a cut to
      another shot fits a blend too, with ``a`` stuck in between), and the frames outside the ramp
      must look like ``p`` or ``q`` (under half the content threshold: a flash at ``p`` makes the
      rest of its shot look like ``q`` to the fit);
    * **it stays**: none of the ``flash_frames`` frames after ``q`` returns to ``p``'s picture and
      none of those before ``p`` shows ``q``'s (a flash seen from inside is a blend too).

    Yaw pans are undone by a running estimate of the horizontal shift between consecutive frames
    (1-D cross-correlation along the rows: a yaw turn rolls the equirect's columns). The detection
    with the largest change and those whose transitions overlap it make one transition; each
    detection's cut is the first frame with ``a >= 0.5``, the transition's the median of them (one
    window may end inside a burst of light, the many around it agree). What it cannot tell: a
    dissolve between two takes of one spot that keeps the structure (as the flash check), and a
    dissolve during a fast camera move other than yaw.
    """

    BLEND_RESIDUAL = 0.12  # largest residual share of |q - p|^2 a blend may leave
    MONOTONE = 0.12  # how far a may fall back between consecutive frames (noise)
    RAMP = 0.25  # how far a may stray from a straight ramp across the transition
    GATE_SLACK = 1  # columns of slack around the pan estimate (on the half-size gate image)

    def __init__(self, cfg: SegmentConfig, flash: FlashCheck | None = None) -> None:
        self.n = int(cfg.dissolve_frames)
        self.hi = float(cfg.threshold)
        self.back = 0.5 * float(cfg.threshold)
        self.structure = float(cfg.flash_structure)
        self.tiles = flash or FlashCheck(cfg)
        self.ahead = max(2, int(cfg.flash_frames))
        ks, j = [], 1
        while True:
            k = min(2**j + 1, self.n + 1)
            ks.append(k)
            if k >= self.n + 1:
                break
            j += 1
        self.spans = sorted(set(ks))
        self.keep = self.spans[-1] + 2 * self.ahead + 4
        self.hsv: dict[int, np.ndarray] = {}  # half-size HSV (int16), for the gate
        self.rgb: dict[int, np.ndarray] = {}  # float32 colour, for the blend fit
        self.v: dict[int, np.ndarray] = {}  # blurred value, for the tile test
        self.x: dict[int, float] = {}  # accumulated yaw shift (columns of the proxy)
        self.jump: dict[int, bool] = {}  # frame-to-frame change from the frame before >= threshold
        self.found: list[tuple[float, int, int, int]] = []  # (change, zone start, zone end, cut)
        self.pan_max = 0
        self._fft: np.ndarray | None = None

    def add(self, i: int, bgr: np.ndarray) -> None:
        import cv2

        h, w = bgr.shape[:2]
        self.pan_max = int(np.ceil(w * FlashCheck.PAN_DEG / 360.0)) + 1
        f = bgr.astype(np.float32)
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        self.hsv[i] = cv2.resize(hsv, (w // 2, max(1, h // 2)), interpolation=cv2.INTER_AREA).astype(np.int16)
        self.rgb[i] = f
        v = cv2.GaussianBlur(hsv[..., 2].astype(np.float32), (3, 3), 0)
        self.v[i] = v
        fv = np.fft.rfft(v - v.mean(), axis=1)
        self.x[i] = self.x[i - 1] + self._pan(self._fft, fv) if i - 1 in self.v else 0.0
        self._fft = fv
        self.jump[i] = i - 1 in self.hsv and self._close(i - 1, i) >= self.hi
        for d in (self.hsv, self.rgb, self.v, self.x, self.jump):
            d.pop(i - self.keep, None)
        q = i - self.ahead
        for k in self.spans:
            # a span over a frame-to-frame jump holds a hard cut or a flash, which the hard-cut
            # detector and the flash check judge; the shortest span still sees 1-2-frame blends
            if q - k in self.rgb and (k == self.spans[0] or not any(self.jump.get(m, False) for m in range(q - k + 1, q + 1))):
                self._check(q - k, q, i)

    def _pan(self, fa: np.ndarray, fb: np.ndarray) -> float:
        """Columns ``s`` (sub-pixel) with ``b ~ roll(a, s)`` from the rows' spectra of ``a`` and
        ``b``, searched within the fastest yaw pan."""
        # plain cross-correlation: whitening (phase correlation) lets sensor noise in the empty high
        # frequencies drown the peak of a smooth picture
        r = np.fft.irfft((fb * np.conj(fa)).sum(0), n=2 * (fa.shape[1] - 1))
        cand = list(range(-self.pan_max, self.pan_max + 1))
        vals = [r[s % len(r)] for s in cand]
        j = int(np.argmax(vals))
        s = float(cand[j])
        if 0 < j < len(cand) - 1:  # parabolic refinement
            y0, y1, y2 = vals[j - 1], vals[j], vals[j + 1]
            den = y0 - 2 * y1 + y2
            if den < 0:
                s += 0.5 * (y0 - y2) / den
        return s

    def _shift(self, src: int, dst: int) -> int:
        return int(round(self.x[dst] - self.x[src]))

    def _close(self, a: int, b: int) -> float:
        """Content score between frames ``a`` and ``b`` on the half-size gate image, pan undone."""
        base = int(round(self._shift(a, b) / 2.0))
        return min(_content_score(np.roll(self.hsv[a], base + r, axis=1), self.hsv[b])
                   for r in (0, *range(-self.GATE_SLACK, 0), *range(1, self.GATE_SLACK + 1)))

    def _check(self, p: int, q: int, last: int) -> None:
        base = int(round(self._shift(p, q) / 2.0))
        if _content_score(np.roll(self.hsv[p], base, axis=1), self.hsv[q]) < self.hi:  # the cheap gate first
            return
        change = self._close(p, q)
        if change < self.hi:
            return
        sh = self._shift(p, q)
        kept = max(self.tiles.tiles_kept(np.roll(self.v[p], sh + r, axis=1), self.v[q]) for r in (-1, 0, 1))
        if kept >= self.structure:
            return
        alphas = []
        for m in range(p + 1, q):
            P = np.roll(self.rgb[p], self._shift(p, m), axis=1)
            Q = np.roll(self.rgb[q], self._shift(q, m), axis=1)
            d = Q - P
            dd = float((d * d).sum()) + 1e-6
            e = self.rgb[m] - P
            a = float((e * d).sum()) / dd
            if float(((e - a * d) ** 2).sum()) > self.BLEND_RESIDUAL * dd or not -self.MONOTONE <= a <= 1 + self.MONOTONE:
                return
            if alphas and a < alphas[-1] - self.MONOTONE:
                return
            alphas.append(a)
        for h in range(1, self.ahead + 1):  # a flash seen from inside: the picture comes back
            if q + h <= last and q + h in self.hsv and self._close(p, q + h) < self.back:
                return
            if p - h in self.hsv and self._close(q, p - h) < self.back:
                return
        ms = list(range(p + 1, q))
        cut = next((m for m, a in zip(ms, alphas, strict=True) if a >= 0.5), q)
        inside = [j for j, a in enumerate(alphas) if 0.1 < a < 0.9]
        if inside:  # one ramp, not a step to a plateau (a flash or a light change, then a cut)
            j0, j1 = inside[0], inside[-1]
            ramp = (np.arange(j0, j1 + 1) - j0 + 1) / (j1 - j0 + 2)
            if float(np.abs(np.asarray(alphas[j0:j1 + 1]) - ramp).max()) > self.RAMP:
                return
        for m, a in zip(ms, alphas, strict=True):  # the shots on either side are p's and q's
            if (a <= 0.1 and self._close(p, m) >= self.back) or (a >= 0.9 and self._close(m, q) >= self.back):
                return
        zone = [ms[j] for j in inside] or [cut - 1, cut]
        self.found.append((change, min(zone[0], cut - 1), max(zone[-1], cut), cut))

    def cuts(self) -> list[int]:
        """One cut per transition: the detection with the biggest change and every other one whose
        transition zone overlaps it make a group, the cut is the median of their cuts (one window may
        end inside a burst of light or the shots' own motion, the many around it agree)."""
        out: list[int] = []
        left = sorted(self.found, key=lambda d: -d[0])
        while left:
            _, lo, hi, _ = left[0]
            group = [d for d in left if not (d[2] < lo - 1 or d[1] > hi + 1)]
            out.append(int(np.median([d[3] for d in group])))
            left = [d for d in left if d not in group]
        return sorted(set(out))


class CutDetector:
    """Streaming wrapper over a PySceneDetect detector: feed RGB proxy frames, get cut frame indices.

    With ``flash_frames > 0`` each candidate cut waits ``flash_frames`` more frames for the
    :class:`FlashCheck`. For the content detector the candidates are its raw over-threshold frames,
    and PySceneDetect's own minimum-scene-length filter (merge mode) runs on the ones that are not
    flashes, so a vetoed flash does not hide a real cut right after it and a clip without flashes
    gets exactly the cuts it got before. The adaptive detector applies its minimum length itself; its
    cuts are checked afterwards. With ``dissolve_frames > 0`` the :class:`DissolveCheck` adds the
    dissolves it finds, except where a hard cut lies closer than the minimum scene length."""

    def __init__(self, fps: float, cfg: SegmentConfig | None = None) -> None:
        from scenedetect import AdaptiveDetector, ContentDetector
        from scenedetect.detector import FlashFilter

        self.cfg = cfg or SegmentConfig()
        self.fps = float(fps)
        min_len = max(1, int(round(self.cfg.min_scene_s * self.fps)))
        self._flash = FlashCheck(self.cfg) if self.cfg.flash_frames > 0 and self.cfg.detector != "none" else None
        self._dissolve = DissolveCheck(self.cfg, self._flash) if self.cfg.dissolve_frames > 0 and self.cfg.detector != "none" else None
        self._min_len = min_len
        self._merge = None
        if self.cfg.detector == "adaptive":
            self._det = AdaptiveDetector(adaptive_threshold=self.cfg.adaptive_threshold, min_scene_len=min_len)
        elif self.cfg.detector == "content":
            if self._flash is not None:  # every over-threshold frame; the length filter runs after the check
                self._det = ContentDetector(threshold=self.cfg.threshold, min_scene_len=0)
                self._merge = FlashFilter(FlashFilter.Mode.MERGE, min_len)
            else:
                self._det = ContentDetector(threshold=self.cfg.threshold, min_scene_len=min_len)
        else:
            self._det = None
        self._cuts: list[int] = []
        self._pending: list[int] = []  # candidates waiting for their look-ahead
        self._next = 0  # content + flash check: next frame to pass through the length filter
        self.flashes: list[int] = []  # candidates the flash check rejected
        self.dissolves: list[int] = []  # cuts the dissolve check added
        self.n_frames = 0

    def _tc(self, i: int):
        from scenedetect.common import FrameTimecode

        return FrameTimecode(i, fps=self.fps)

    def add(self, frame_rgb: np.ndarray) -> None:
        """Feed the next frame, RGB (h, w, 3) or gray (h, w)."""
        if self._det is None:
            self.n_frames += 1
            return
        bgr = np.ascontiguousarray(frame_rgb[..., ::-1]) if frame_rgb.ndim == 3 else np.repeat(frame_rgb[..., None], 3, 2)
        self.add_bgr(bgr)

    def add_bgr(self, frame_bgr: np.ndarray) -> None:
        """Feed the next frame in OpenCV's BGR order (what PySceneDetect expects)."""
        i = self.n_frames
        self.n_frames += 1
        if self._det is None:
            return
        found = [int(tc.frame_num) for tc in self._det.process_frame(self._tc(i), frame_bgr) or []]
        if self._dissolve is not None:
            self._dissolve.add(i, frame_bgr)
        if self._flash is None:
            self._cuts += found
            return
        self._flash.add(i, frame_bgr)
        self._pending += found
        self._resolve(i - self._flash.k, i)

    def _resolve(self, upto: int, last: int) -> None:
        """Judge the candidates up to frame ``upto`` (seeing frames up to ``last``)."""
        ready = [c for c in self._pending if c <= upto]
        if not ready and self._merge is None:
            return
        self._pending = [c for c in self._pending if c > upto]
        real = set()
        for c in ready:
            if self._flash.is_flash(c, last):
                self.flashes.append(c)
            else:
                real.add(c)
        if self._merge is None:
            self._cuts += sorted(real)
            return
        for c in range(self._next, upto + 1):  # every frame, in order, through the length filter
            for tc in self._merge.filter(self._tc(c), c in real):
                self._cuts.append(int(tc.frame_num))
        self._next = max(self._next, upto + 1)

    def cuts(self) -> list[int]:
        if self._det is not None and self.n_frames:
            late = [int(tc.frame_num) for tc in self._det.post_process(self._tc(self.n_frames - 1)) or []]
            if self._flash is None:
                self._cuts += late
            else:
                self._pending += late
                self._resolve(self.n_frames - 1, self.n_frames - 1)
        hard = sorted({c for c in self._cuts if 0 < c < self.n_frames})
        if self._dissolve is None:
            return hard
        # a dissolve near a hard cut is that cut (or closer to it than PySceneDetect's shortest shot)
        soft = [c for c in self._dissolve.cuts() if 0 < c < self.n_frames and all(abs(c - h) >= self._min_len for h in hard)]
        self.dissolves = soft
        return sorted(hard + soft)


def detect_cuts(frames: Iterable[np.ndarray], fps: float, cfg: SegmentConfig | None = None) -> tuple[list[int], int]:
    """(cut frame indices, frames seen) for RGB proxy frames at the source fps."""
    det = CutDetector(fps, cfg)
    for f in frames:
        det.add(f)
    return det.cuts(), det.n_frames


def find_cuts(path: str | Path, cfg: SegmentConfig | None = None) -> list[int]:
    """Cut frame indices of a video file (first frame of each new shot), decoded once on a proxy."""
    from biaudio.media import iter_frames, probe

    cfg = cfg or SegmentConfig()
    path = Path(path).absolute()  # a relative name starting with '-' must not reach ffprobe as an option
    info = probe(path)
    cuts, _ = detect_cuts(iter_frames(path, size=cfg.proxy_dims(), info=info, band=cfg.proxy_band), info.fps or 30.0, cfg)
    return cuts


def shots(n_frames: int, cuts: list[int]) -> list[tuple[int, int]]:
    """Shots as half-open frame ranges ``[a, b)``."""
    edges = [0, *sorted(c for c in cuts if 0 < c < n_frames), n_frames]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=False) if b > a]


def windows(duration_s: float, fps: float, cuts: list[int], cfg: SegmentConfig | None = None) -> list[Window]:
    """Fixed windows inside shots, trimmed ``trim_frames`` at every cut; [] if nothing fits."""
    cfg = cfg or SegmentConfig()
    fps = float(fps)
    n_frames = int(round(duration_s * fps))
    stride = cfg.stride_s or cfg.window_s
    out: list[Window] = []
    eps = 1e-6
    for k, (a, b) in enumerate(shots(n_frames, cuts)):
        fa = a + (cfg.trim_frames if a > 0 else 0)
        fb = b - (cfg.trim_frames if b < n_frames else 0)
        t0 = fa / fps
        t1 = min(fb / fps, duration_s)
        t = t0
        while t + cfg.window_s <= t1 + eps:
            out.append(Window(round(t, 6), round(t + cfg.window_s, 6), k))
            t += stride
    if cfg.max_windows and len(out) > cfg.max_windows:
        idx = np.linspace(0, len(out) - 1, cfg.max_windows).round().astype(int)
        out = [out[i] for i in sorted(set(idx.tolist()))]
    return out
