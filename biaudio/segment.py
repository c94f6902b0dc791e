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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class SegmentConfig(BaseModel):
    """Recipe section ``segment``. Defaults follow PIPELINE.md stage 4."""

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

    @staticmethod
    def hash_view(dumped: dict) -> dict:
        """The section as the recipe hash sees it: with the flash check off (``flash_frames: 0``) the
        detector is the one before the check existed, so its keys stay out and such a recipe keeps
        the hash (and the resumable items) it had then. With the check on the data can change, and
        so does the hash."""
        if dumped.get("flash_frames") == 0:
            return {k: v for k, v in dumped.items() if k not in ("flash_frames", "flash_structure")}
        return dumped

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


class CutDetector:
    """Streaming wrapper over a PySceneDetect detector: feed RGB proxy frames, get cut frame indices.

    With ``flash_frames > 0`` each candidate cut waits ``flash_frames`` more frames for the
    :class:`FlashCheck`. For the content detector the candidates are its raw over-threshold frames,
    and PySceneDetect's own minimum-scene-length filter (merge mode) runs on the ones that are not
    flashes, so a vetoed flash does not hide a real cut right after it and a clip without flashes
    gets exactly the cuts it got before. The adaptive detector applies its minimum length itself; its
    cuts are checked afterwards."""

    def __init__(self, fps: float, cfg: SegmentConfig | None = None) -> None:
        from scenedetect import AdaptiveDetector, ContentDetector
        from scenedetect.detector import FlashFilter

        self.cfg = cfg or SegmentConfig()
        self.fps = float(fps)
        min_len = max(1, int(round(self.cfg.min_scene_s * self.fps)))
        self._flash = FlashCheck(self.cfg) if self.cfg.flash_frames > 0 and self.cfg.detector != "none" else None
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
        return sorted({c for c in self._cuts if 0 < c < self.n_frames})


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
