"""World FOA + camera trajectory -> binaural audio for that camera.

Rotate first (one matrix per video frame, cross-faded across the frame's samples), then apply
the fixed decoder: the decoder is linear and time-invariant, so this order costs eight FFT
convolutions in total however the camera moves (docs/ARCHITECTURE.md, conventions §4-5).
"""

from __future__ import annotations

import numpy as np

from biaudio.spatial.angles import rotation_matrix
from biaudio.spatial.decoders import BinauralDecoder
from biaudio.spatial.foa import check_foa, rotate_along


def render_binaural(
    foa_world: np.ndarray,
    sr: int,
    frame_times: np.ndarray,
    yaw: np.ndarray,
    pitch: np.ndarray,
    roll: np.ndarray,
    decoder: BinauralDecoder,
) -> np.ndarray:
    """Binaural ``(2, T)`` float32 (row 0 = left) heard by a camera with per-frame pose in degrees."""
    x = check_foa(foa_world)
    if decoder.sr != sr:
        raise ValueError(f"decoder built for {decoder.sr} Hz, audio is {sr} Hz")
    ft = np.atleast_1d(np.asarray(frame_times, dtype=np.float64))
    y, p, r = (np.broadcast_to(np.atleast_1d(np.asarray(a, dtype=np.float64)), ft.shape) for a in (yaw, pitch, roll))
    R = rotation_matrix(y, p, r)
    return decoder.decode(rotate_along(x, sr, ft, R))
