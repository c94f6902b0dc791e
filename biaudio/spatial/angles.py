"""The one place where axis and rotation conventions are written down in code.

World and camera axes: x front, y left, z up (right-handed). Azimuth counter-clockwise seen from
above (0 front, +90 left), elevation +90 up. Camera orientation (world-from-camera) is intrinsic
yaw -> pitch -> roll: ``R = Rz(yaw) @ Ry(-pitch) @ Rx(roll)``; yaw > 0 looks left, pitch > 0 looks
up, roll > 0 turns the camera clockwise seen from behind. A world direction seen by the camera is
``d_cam = R.T @ d_world``. Everything else in the project calls these functions instead of
re-deriving a sign.
"""

from __future__ import annotations

import numpy as np

ArrayLike = np.ndarray | float


def wrap_deg(a: ArrayLike) -> np.ndarray:
    """Wrap degrees to (-180, 180]."""
    a = np.asarray(a, dtype=np.float64)
    w = np.mod(a + 180.0, 360.0) - 180.0
    return np.where(w == -180.0, 180.0, w)


def dir_to_vec(az_deg: ArrayLike, el_deg: ArrayLike) -> np.ndarray:
    """Unit vector(s) ``(..., 3)`` for azimuth/elevation in degrees."""
    az = np.deg2rad(np.asarray(az_deg, dtype=np.float64))
    el = np.deg2rad(np.asarray(el_deg, dtype=np.float64))
    ce = np.cos(el)
    return np.stack([ce * np.cos(az), ce * np.sin(az), np.sin(el)], axis=-1)


def vec_to_dir(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth and elevation in degrees of vector(s) ``(..., 3)`` (need not be unit length)."""
    v = np.asarray(v, dtype=np.float64)
    az = np.rad2deg(np.arctan2(v[..., 1], v[..., 0]))
    el = np.rad2deg(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    return wrap_deg(az), el


def _rz(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _ry(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rx(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def rotation_matrix(yaw_deg: ArrayLike, pitch_deg: ArrayLike = 0.0, roll_deg: ArrayLike = 0.0) -> np.ndarray:
    """World-from-camera rotation ``R = Rz(yaw) Ry(-pitch) Rx(roll)``; ``(3, 3)`` or ``(N, 3, 3)``."""
    y = np.deg2rad(np.asarray(yaw_deg, dtype=np.float64))
    p = np.deg2rad(np.asarray(pitch_deg, dtype=np.float64))
    r = np.deg2rad(np.asarray(roll_deg, dtype=np.float64))
    if y.ndim == 0 and p.ndim == 0 and r.ndim == 0:  # one pose (per video frame): no stacking
        cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(-p), np.sin(-p), np.cos(r), np.sin(r)
        return (np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
                @ np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
                @ np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]]))
    y, p, r = np.broadcast_arrays(y, p, r)
    return _rz(y) @ _ry(-p) @ _rx(r)


def world_to_camera_dir(
    az_deg: ArrayLike, el_deg: ArrayLike, yaw_deg: ArrayLike, pitch_deg: ArrayLike = 0.0, roll_deg: ArrayLike = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Direction of a world source as seen from a camera pose (degrees in, degrees out)."""
    d = dir_to_vec(az_deg, el_deg)
    R = rotation_matrix(yaw_deg, pitch_deg, roll_deg)
    d_cam = np.einsum("...ji,...j->...i", R, d)  # R^T d
    return vec_to_dir(d_cam)


def unwrap_deg(a: ArrayLike) -> np.ndarray:
    """Unwrap a degree sequence so that interpolation never jumps across ±180."""
    return np.rad2deg(np.unwrap(np.deg2rad(np.asarray(a, dtype=np.float64))))
