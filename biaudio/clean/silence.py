"""Silence filter (Sphere360): 20 ms chunks, per-chunk peak dBFS over all 4 FOA channels.

Why the peak over *all* channels: a source can sit almost entirely in X/Y/Z (e.g. near-null W
for a particular mic setup); a clip counts as silent only if no channel rises above the floor.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from biaudio.clean import FilterResult


class SilenceConfig(BaseModel):
    """Recipe section ``clean.silence``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    chunk_ms: float = Field(20.0, gt=0)
    threshold_dbfs: float = Field(-35.0, description="a chunk is silent if its peak over the channels is below")
    max_silent_ratio: float = Field(0.90, ge=0, le=1, description="clip is silent if more chunks are silent")


def chunk_samples(sr: int, cfg: SilenceConfig) -> int:
    return max(1, int(round(sr * cfg.chunk_ms / 1000.0)))


def chunk_peaks_db(x: np.ndarray, n: int) -> np.ndarray:
    """Peak dBFS over all channels of each complete ``n``-sample chunk of ``x`` (C, T)."""
    k = x.shape[1] // n
    if k == 0:
        return np.zeros(0, dtype=np.float32)
    peak = np.abs(x[:, : k * n]).reshape(x.shape[0], k, n).max(axis=(0, 2))
    return (20.0 * np.log10(np.maximum(peak, 1e-12))).astype(np.float32)


def silence_from_peaks(db: np.ndarray, cfg: SilenceConfig) -> FilterResult:
    """Verdict from per-chunk peaks (lets a streaming decoder compute peaks block by block)."""
    if db.size == 0:
        return FilterResult("silence", 1.0, False, "silent", "audio shorter than one chunk", {"chunks": 0})
    ratio = float(np.mean(db < cfg.threshold_dbfs))
    passed = ratio <= cfg.max_silent_ratio
    detail = f"{ratio:.1%} of {cfg.chunk_ms:g} ms chunks below {cfg.threshold_dbfs:g} dBFS"
    extra = {"chunks": int(db.size), "peak_dbfs": float(db.max()), "median_chunk_dbfs": float(np.median(db))}
    return FilterResult("silence", ratio, passed, None if passed else "silent", detail, extra)


def window_silence(db: np.ndarray, sr: int, cfg: SilenceConfig, start_s: float, end_s: float) -> FilterResult:
    """Verdict over the chunks of ``db`` (from :func:`chunk_peaks_db` over the whole source) that
    fall in ``[start_s, end_s)``: one clip's share of the source's chunk peaks."""
    n = chunk_samples(sr, cfg)
    i0, i1 = int(round(start_s * sr / n)), int(round(end_s * sr / n))
    r = silence_from_peaks(db[max(0, i0):max(0, i1)], cfg)
    r.detail = f"{r.detail} in {start_s:g}-{end_s:g} s"
    return r


def silence_score(foa: np.ndarray, sr: int, cfg: SilenceConfig | None = None) -> FilterResult:
    """Fraction of silent chunks; rejects with reason ``silent`` above ``max_silent_ratio``."""
    cfg = cfg or SilenceConfig()
    x = np.asarray(foa, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    return silence_from_peaks(chunk_peaks_db(x, chunk_samples(sr, cfg)), cfg)
