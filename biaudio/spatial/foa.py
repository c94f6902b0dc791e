"""First-order ambisonics: channel conventions, plane-wave encoding and rotation along a camera path.

Internally everything is **ambiX** (ACN order W, Y, Z, X; SN3D). Every input carries a declared
convention and is converted once at the boundary, because a wrong W gain or channel order does not
fail loudly: it silently moves every source (docs/ARCHITECTURE.md, conventions §4). Unknown conventions, wrong channel
counts and non-finite samples therefore raise instead of guessing.
"""

from __future__ import annotations

import numpy as np

from biaudio.errors import ConventionError, MediaError
from biaudio.spatial.angles import dir_to_vec

CONVENTIONS = ("ambix", "fuma", "ambix-n3d")
_SQRT2 = np.sqrt(2.0)
_SQRT3 = np.sqrt(3.0)
# P maps a vector in xyz order to the ACN order of the first-order channels (Y, Z, X).
_P = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def check_foa(x: np.ndarray, path: str | None = None, what: str = "FOA signal") -> np.ndarray:
    """Validate a ``(4, T)`` FOA array: 4 channels, at least one sample, all finite.

    Raised here (not deep in a filter) so a bad file becomes a reject row naming the reason.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != 4:
        raise MediaError(path, "not_4_channels", f"{what} must have shape (4, T), got {x.shape}")
    if x.shape[1] == 0:
        raise MediaError(path, "zero_length", f"{what} has no samples")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise MediaError(path, "non_finite_samples", f"{what} contains NaN or Inf samples")
    return x


def _check_convention(convention: str, path: str | None) -> str:
    conv = str(convention).lower()
    if conv not in CONVENTIONS:
        raise ConventionError(path, "unknown_convention", f"{convention!r} is not one of {', '.join(CONVENTIONS)}")
    return conv


def to_ambix(x: np.ndarray, convention: str, path: str | None = None) -> np.ndarray:
    """Convert ``(4, T)`` FOA in ``convention`` to ambiX (W, Y, Z, X; SN3D)."""
    conv = _check_convention(convention, path)
    x = check_foa(x, path)
    if conv == "ambix":
        return x
    if conv == "fuma":  # W X Y Z, W at -3 dB
        return np.stack([_SQRT2 * x[0], x[2], x[3], x[1]]).astype(x.dtype, copy=False)
    out = x.copy()  # ambix-n3d: first-order channels are sqrt(3) louder than SN3D
    out[1:] /= _SQRT3
    return out


def from_ambix(x: np.ndarray, convention: str, path: str | None = None) -> np.ndarray:
    """Convert ambiX ``(4, T)`` to ``convention`` (inverse of :func:`to_ambix`)."""
    conv = _check_convention(convention, path)
    x = check_foa(x, path)
    if conv == "ambix":
        return x
    if conv == "fuma":
        return np.stack([x[0] / _SQRT2, x[3], x[1], x[2]]).astype(x.dtype, copy=False)
    out = x.copy()
    out[1:] *= _SQRT3
    return out


def encode(signal: np.ndarray, az_deg: float | np.ndarray, el_deg: float | np.ndarray) -> np.ndarray:
    """Plane wave(s) to ambiX: ``W = s, Y = s d_y, Z = s d_z, X = s d_x``.

    ``az_deg``/``el_deg`` are scalars (static source) or arrays of length T (moving source,
    per-sample direction) so that tests can build exact moving ground truth.
    """
    s = np.asarray(signal, dtype=np.float64)
    if s.ndim != 1:
        raise MediaError(None, "bad_shape", f"signal must be 1-D, got {s.shape}")
    d = dir_to_vec(az_deg, el_deg)  # (3,) or (T, 3)
    if d.ndim == 2 and d.shape[0] != s.shape[0]:
        raise MediaError(None, "bad_shape", f"direction arrays have {d.shape[0]} samples, signal {s.shape[0]}")
    d = np.broadcast_to(d, (s.shape[0], 3)) if d.ndim == 1 else d
    return np.stack([s, s * d[:, 1], s * d[:, 2], s * d[:, 0]])


def foa_rotation_matrix(R: np.ndarray) -> np.ndarray:
    """FOA matrix ``M = diag(1, P Rᵀ Pᵀ)`` so that ``b_cam = M b_world`` for camera pose ``R``.

    ``R`` is world-from-camera (``angles.rotation_matrix``); W is invariant and (X, Y, Z) rotate
    as a vector, so a source at world az lands at camera az - yaw.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation must be (3,3) or (N,3,3), got {R.shape}")
    inner = _P @ np.swapaxes(R, -1, -2) @ _P.T
    M = np.zeros(R.shape[:-2] + (4, 4))
    M[..., 0, 0] = 1.0
    M[..., 1:, 1:] = inner
    return M


def rotate_along(
    foa: np.ndarray, sr: int, frame_times: np.ndarray, R: np.ndarray, crossfade: bool = True
) -> np.ndarray:
    """Rotate world FOA into the camera frame along a per-frame trajectory.

    Frame ``k`` holds pose ``R[k]`` at ``frame_times[k]``; between two frames the output is
    ``(1-g) M_k x + g M_{k+1} x`` with ``g`` going linearly 0 -> 1 over the samples in between
    (close to exact per-sample rotation, no clicks; tests/biaudio/spatial/test_foa.py measures it). ``crossfade=False``
    switches matrices at frame boundaries (only for comparison: it clicks). Before the first
    and after the last frame time the end poses hold.
    """
    x = check_foa(foa)
    ft = np.asarray(frame_times, dtype=np.float64).ravel()
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.shape[0] != ft.shape[0] or ft.shape[0] == 0:
        raise ValueError(f"{ft.shape[0]} frame times but {R.shape[0]} rotations")
    if ft.shape[0] > 1 and np.any(np.diff(ft) <= 0):
        raise ValueError("frame_times must be strictly increasing")
    M = foa_rotation_matrix(R)[:, 1:, 1:]  # W is untouched
    T = x.shape[1]
    out = np.empty_like(x)
    out[0] = x[0]
    if ft.shape[0] == 1:
        out[1:] = (M[0] @ x[1:].astype(np.float64)).astype(x.dtype)
        return out
    F = ft.shape[0]
    # sample index where each frame's pose is reached; samples outside [ft[0], ft[-1]] hold the end poses
    edges = np.clip(np.ceil(ft * sr - 1e-9).astype(np.int64), 0, T)
    M = M.astype(np.float32)
    v = x[1:].astype(np.float32, copy=False)
    y = np.empty((3, T), np.float32)
    y[:, : edges[0]] = M[0] @ v[:, : edges[0]]
    y[:, edges[-1] :] = M[-1] @ v[:, edges[-1] :]
    for k in range(F - 1):  # one short block per video frame: two 3x3 products, no per-sample matrices
        a, b = edges[k], edges[k + 1]
        if b <= a:
            continue
        seg = v[:, a:b]
        if crossfade:
            g = ((np.arange(a, b) / sr - ft[k]) / (ft[k + 1] - ft[k])).astype(np.float32)
            A = M[k] @ seg
            y[:, a:b] = A + g * (M[k + 1] @ seg - A)
        else:
            y[:, a:b] = M[k] @ seg
    out[1:] = y
    return out


def rotate_per_sample(foa: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Exact rotation with one pose per sample ``R (T, 3, 3)``: the reference the cross-fade is tested against."""
    x = check_foa(foa)
    M = foa_rotation_matrix(R)[:, 1:, 1:]
    out = x.astype(np.float64).copy()
    out[1:] = np.einsum("tij,jt->it", M, x[1:].astype(np.float64))
    return out.astype(x.dtype)
