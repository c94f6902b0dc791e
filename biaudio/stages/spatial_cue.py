"""Spatial-cue filter: drop binaural clips whose two ears are (almost) the same signal.

Why: the dataset teaches a model to produce left/right differences from what the camera sees. A
clip whose only source stays dead ahead (or behind), or that is fully diffuse, renders L ≈ R with a
symmetric decoder and carries no spatial lesson. The BiAudio paper drops pairs whose normalised
left/right difference is below 0.01 but does not give the formula; ours is

    lr_difference = ||L - R||_2 / (||L||_2 + ||R||_2)

over the whole clip (row 0 = left). It is 0 for identical ears, 1 for one silent ear (or
opposite-sign ears), scale-free (a gain on both ears does not change it) and cheap. The value is
stored in the manifest column ``lr_difference`` with this definition (see manifests/README.md).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from biaudio.errors import BiaudioError

FORMULA = "||L-R||2 / (||L||2 + ||R||2)"
REASON = "no_spatial_cue"


class SpatialCueConfig(BaseModel):
    """Recipe section ``spatial_cue``."""

    model_config = ConfigDict(extra="forbid")

    min_lr_difference: float = Field(0.01, ge=0.0, le=1.0)
    """Clips with ``lr_difference`` strictly below this are rejected (paper: 0.01)."""


def lr_difference(binaural: np.ndarray) -> float:
    """``||L-R||2 / (||L||2 + ||R||2)`` of a ``(2, T)`` binaural signal (row 0 = left); 0 for silence."""
    b = np.asarray(binaural, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] != 2:
        raise BiaudioError(None, "bad_binaural_shape", f"expected (2, T), got {b.shape}", "spatial_cue")
    left, right = b[0], b[1]
    den = float(np.linalg.norm(left) + np.linalg.norm(right))
    if not np.isfinite(den):
        raise BiaudioError(None, "non_finite_audio", "binaural signal has NaN/Inf", "spatial_cue")
    if den <= 0.0:
        return 0.0
    return float(np.linalg.norm(left - right) / den)


def check(binaural: np.ndarray, cfg: SpatialCueConfig) -> tuple[float, str | None, str]:
    """Score a clip: ``(lr_difference, reason or None, detail)``; reason is ``no_spatial_cue`` on reject."""
    d = lr_difference(binaural)
    if d < cfg.min_lr_difference:
        return d, REASON, f"lr_difference {d:.5f} < {cfg.min_lr_difference} ({FORMULA})"
    return d, None, f"lr_difference {d:.5f} ({FORMULA})"
