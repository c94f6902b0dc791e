"""Static-video filter (Sphere360): frames at 2 fps, grayscale, MSE between consecutive frames.

Why a streaming accumulator: the build decodes each file once at a low resolution and feeds the
same frames to shot detection and to this filter (:func:`biaudio.ingest.analysis.analyze_file`), so the
filter takes frames one at a time with their timestamps and samples them at ``fps`` itself.
MSE is measured at the source size by default: measured on the real Sphere360 test clips, a
static-camera performer scene has median MSE 2.6-5.6 at 1920 px but 0.4-1.1 at 256x128, so at proxy
size every such clip would count as static. Gray frames at 2 fps are cheap to hand over; the decode
itself is shared.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from biaudio.clean import FilterResult


class StaticConfig(BaseModel):
    """Recipe section ``clean.static``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    fps: float = Field(2.0, gt=0, description="sampling rate of the compared frames")
    mse_threshold: float = Field(5.0, description="a pair of consecutive frames is static below this MSE (0-255 gray)")
    max_static_ratio: float = Field(0.85, ge=0, le=1, description="clip is static if more pairs are static")
    size: tuple[int, int] | None = Field(
        None, description="compare at (w, h); None = source size. The MSE threshold depends on it: "
        "downscaling averages noise away, and real static-camera Sphere360 clips fall under MSE 5 below ~1920 px")


def gray_lut(color_range: str | None) -> np.ndarray | None:
    """Y-plane code -> ``format=gray`` value: ``None`` for full-range ("pc"/"jpeg") video, else the
    limited-range expansion ``clip(round((y - 16) * 255 / 219))`` ffmpeg applies."""
    if (color_range or "").lower() in ("pc", "jpeg", "full"):
        return None
    return np.clip(np.round((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


def _to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame.astype(np.float32)
    f = frame.astype(np.float32)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


class StaticAccumulator:
    """Feed ``(t_seconds, frame)``; keeps one frame per 1/fps step and the consecutive MSEs.

    ``lut``: applied to 2-D uint8 frames first (the Y plane -> ``format=gray``, :func:`gray_lut`).
    ``pair_t``: (t of the first frame, t of the second) of each MSE, for per-window ratios.
    """

    def __init__(self, cfg: StaticConfig | None = None, lut: np.ndarray | None = None) -> None:
        self.cfg = cfg or StaticConfig()
        self.lut = lut
        self._next_t = 0.0
        self._prev: np.ndarray | None = None
        self._prev_t = 0.0
        self.mses: list[float] = []
        self.pair_t: list[tuple[float, float]] = []
        self.n_sampled = 0

    def add(self, t: float, frame: np.ndarray) -> None:
        import cv2  # exact sum of squared differences on uint8, ~20x faster than a float numpy pass

        if t + 1e-6 < self._next_t:
            return
        self._next_t = max(self._next_t + 1.0 / self.cfg.fps, t)
        if frame.ndim == 2 and frame.dtype == np.uint8:
            g = cv2.LUT(frame, self.lut) if self.lut is not None else frame
        else:
            g = np.clip(_to_gray(frame) + 0.5, 0, 255).astype(np.uint8)
        if self._prev is not None and self._prev.shape == g.shape:
            self.mses.append(float(cv2.norm(g, self._prev, cv2.NORM_L2SQR)) / g.size)
            self.pair_t.append((self._prev_t, float(t)))
        self._prev, self._prev_t = g, float(t)
        self.n_sampled += 1

    def _verdict(self, m: np.ndarray, where: str) -> FilterResult:
        cfg = self.cfg
        if m.size == 0:
            return FilterResult("static", 1.0, False, "static", f"no frame pair at {cfg.fps:g} fps {where}".strip(),
                                {"pairs": 0})
        ratio = float(np.mean(m < cfg.mse_threshold))
        passed = ratio <= cfg.max_static_ratio
        detail = f"{ratio:.1%} of {len(m)} frame pairs at {cfg.fps:g} fps with MSE < {cfg.mse_threshold:g}"
        extra = {"pairs": int(m.size), "median_mse": float(np.median(m)), "max_mse": float(m.max())}
        return FilterResult("static", ratio, passed, None if passed else "static", f"{detail} {where}".strip(), extra)

    def result(self) -> FilterResult:
        if not self.mses:
            return FilterResult("static", 1.0, False, "static", f"only {self.n_sampled} frame(s) sampled", {"pairs": 0})
        return self._verdict(np.asarray(self.mses), "")

    def window_result(self, start_s: float, end_s: float) -> FilterResult:
        """The verdict over the pairs whose two frames both lie in ``[start_s, end_s]``."""
        eps = 1e-6
        m = np.asarray([v for v, (a, b) in zip(self.mses, self.pair_t, strict=True)
                        if a >= start_s - eps and b <= end_s + eps], dtype=np.float64)
        return self._verdict(m, f"in {start_s:g}-{end_s:g} s")


def static_score(frames: Iterable[np.ndarray] | str | Path, cfg: StaticConfig | None = None,
                 fps_in: float | None = None) -> FilterResult:
    """Static ratio of a clip.

    ``frames``: a path (decoded here at ``cfg.fps``, gray, ``cfg.size``), or an iterable of frames
    that are already at ``cfg.fps`` (``fps_in=None``) or at ``fps_in`` (then subsampled by time).
    """
    cfg = cfg or StaticConfig()
    acc = StaticAccumulator(cfg)
    if isinstance(frames, (str, Path)):
        from biaudio.media import iter_frames

        frames = iter_frames(Path(frames).absolute(), size=tuple(cfg.size) if cfg.size else None, fps=cfg.fps, gray=True)
        fps_in = cfg.fps
    step = 1.0 / (fps_in or cfg.fps)
    for i, f in enumerate(frames):
        acc.add(i * step, f)
    return acc.result()
