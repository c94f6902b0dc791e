"""Shot boundaries (PySceneDetect) and fixed-length windows inside shots.

Why: a training clip that spans a hard cut pairs the audio of one shot with the picture of another.
Cuts are detected on a small proxy (PySceneDetect's own advice: downscale for speed; content
differences survive), stored as *frame indices* plus fps (not timecodes, which round), and a few
frames around each cut are trimmed because detectors are often one frame off. Windows then tile
each shot with a fixed length and stride; a video that yields none is rejected as ``too_short``.
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
    stride_s: float | None = Field(None, description="window start step; None = window_s (no overlap)")
    max_windows: int | None = Field(None, ge=1, description="per-video maximum (evenly spread over the video)")

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


class CutDetector:
    """Streaming wrapper over a PySceneDetect detector: feed RGB proxy frames, get cut frame indices."""

    def __init__(self, fps: float, cfg: SegmentConfig | None = None) -> None:
        from scenedetect import AdaptiveDetector, ContentDetector

        self.cfg = cfg or SegmentConfig()
        self.fps = float(fps)
        min_len = max(1, int(round(self.cfg.min_scene_s * self.fps)))
        if self.cfg.detector == "adaptive":
            self._det = AdaptiveDetector(adaptive_threshold=self.cfg.adaptive_threshold, min_scene_len=min_len)
        elif self.cfg.detector == "content":
            self._det = ContentDetector(threshold=self.cfg.threshold, min_scene_len=min_len)
        else:
            self._det = None
        self._cuts: list[int] = []
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
        for tc in self._det.process_frame(self._tc(i), frame_bgr) or []:
            self._cuts.append(int(tc.frame_num))

    def cuts(self) -> list[int]:
        if self._det is not None and self.n_frames:
            for tc in self._det.post_process(self._tc(self.n_frames - 1)) or []:
                self._cuts.append(int(tc.frame_num))
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
