"""Equirectangular -> perspective (rectilinear) projection for a moving camera (CONVENTIONS §2-3).

Camera rays are computed once per output size; each frame only costs ``R @ rays``,
an arctan2 and an arcsin, a fixed-point map conversion and one ``cv2.remap``. ``BORDER_WRAP`` makes the ±180° seam
continuous, and the row map is clipped to ``[0, H-1]`` so views through a pole never pull in the
opposite image edge (both would otherwise show as black or garbage lines). The mapping uses the
stored frame size, so full-sphere content stored at 16:9 projects correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from biaudio.errors import MediaError
from biaudio.spatial.angles import dir_to_vec, rotation_matrix


def focal_px(out_w: int, hfov_deg: float) -> float:
    """Focal length in pixels: ``f = (w/2) / tan(hfov/2)``."""
    return (out_w / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2.0)


def vfov_deg(out_w: int, out_h: int, hfov_deg: float) -> float:
    """Vertical FOV for square pixels."""
    return float(np.rad2deg(2 * np.arctan(np.tan(np.deg2rad(hfov_deg) / 2) * out_h / out_w)))


def camera_rays(out_w: int, out_h: int, hfov_deg: float) -> np.ndarray:
    """Camera-frame rays ``(3, h*w)`` float32: ``[1, -(i+0.5-w/2)/f, -(j+0.5-h/2)/f]`` (right = -y, down = -z)."""
    f = focal_px(out_w, hfov_deg)
    i = (np.arange(out_w, dtype=np.float64) + 0.5 - out_w / 2) / f
    j = (np.arange(out_h, dtype=np.float64) + 0.5 - out_h / 2) / f
    jj, ii = np.meshgrid(j, i, indexing="ij")
    return np.stack([np.ones(out_w * out_h), -ii.ravel(), -jj.ravel()]).astype(np.float32)


def equirect_pixel(az_deg, el_deg, W: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """Equirect pixel (centres at integers) of a direction: ``x = (0.5 - az/360)W - 0.5``, ``y = (0.5 - el/180)H - 0.5``."""
    az = np.asarray(az_deg, dtype=np.float64)
    el = np.asarray(el_deg, dtype=np.float64)
    return (0.5 - az / 360.0) * W - 0.5, (0.5 - el / 180.0) * H - 0.5


def camera_pixel(
    az_deg, el_deg, yaw, pitch, roll, out_w: int, out_h: int, hfov_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a world direction lands in the perspective image: ``(x, y, visible)`` (pixel centres at integers)."""
    d = dir_to_vec(az_deg, el_deg)
    R = rotation_matrix(yaw, pitch, roll)
    dc = np.einsum("...ji,...j->...i", R, d)  # R^T d
    f = focal_px(out_w, hfov_deg)
    fwd = dc[..., 0]
    safe = np.where(fwd > 1e-9, fwd, 1e-9)
    x = out_w / 2 - f * dc[..., 1] / safe - 0.5
    y = out_h / 2 - f * dc[..., 2] / safe - 0.5
    vis = (fwd > 1e-9) & (x >= -0.5) & (x <= out_w - 0.5) & (y >= -0.5) & (y <= out_h - 0.5)
    return x, y, vis


@dataclass
class Projector:
    """Perspective views of one equirect stream: ``Projector(...).render(frame, yaw, pitch, roll)``.

    ``projection_pose`` is the spherical metadata's (prhd) yaw/pitch/roll: the stored sphere is
    rotated by it, so it is applied before the camera rotation (``R_total = R_pose @ R_cam``).
    ``prescale`` downsizes the equirect (INTER_AREA) when it is much denser than the output
    would sample it (a 90° view over 640 px of a 3840-wide frame is ~4x minified and aliases).
    """

    out_w: int
    out_h: int
    hfov_deg: float
    in_w: int
    in_h: int
    prescale: bool = True
    projection_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fixed_point: bool = True
    _rays: np.ndarray = field(init=False, repr=False)
    _src_w: int = field(init=False)
    _src_h: int = field(init=False)
    _last_pose: tuple | None = field(init=False, default=None, repr=False)
    _last_maps: tuple | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if min(self.out_w, self.out_h, self.in_w, self.in_h) <= 0 or not (0 < self.hfov_deg < 180):
            raise ValueError("sizes must be positive and 0 < hfov < 180")
        rays = camera_rays(self.out_w, self.out_h, self.hfov_deg)
        # unit rays stay unit under rotation, so elevation is one arcsin (no hypot + second atan2)
        self._rays = (rays / np.linalg.norm(rays, axis=0, keepdims=True)).astype(np.float32)
        self._pose_R = rotation_matrix(*self.projection_pose)
        self._src_w, self._src_h = self.in_w, self.in_h
        if self.prescale:
            target_w = int(round(2.0 * self.out_w * 360.0 / self.hfov_deg))
            if self.in_w > 1.25 * target_w:
                self._src_w = target_w
                self._src_h = max(2, int(round(self.in_h * target_w / self.in_w)))

    @property
    def source_size(self) -> tuple[int, int]:
        """Equirect size the maps address (after the optional pre-downscale)."""
        return self._src_w, self._src_h

    def maps(self, yaw: float, pitch: float, roll: float) -> tuple[np.ndarray, np.ndarray]:
        """Remap maps for one pose (cached for a repeated pose, e.g. a static camera)."""
        import cv2

        key = (float(yaw), float(pitch), float(roll))
        if self._last_pose == key and self._last_maps is not None:
            return self._last_maps
        R = (self._pose_R @ rotation_matrix(yaw, pitch, roll)).astype(np.float32)
        d = R @ self._rays
        az = np.arctan2(d[1], d[0])
        el = np.arcsin(np.clip(d[2], -1.0, 1.0, out=d[2]))
        W, H = self._src_w, self._src_h
        mx = ((0.5 - az * np.float32(1 / (2 * np.pi))) * W - 0.5).reshape(self.out_h, self.out_w)
        my = ((0.5 - el * np.float32(1 / np.pi)) * H - 0.5).reshape(self.out_h, self.out_w)
        np.clip(my, 0.0, H - 1.0, out=my)
        if self.fixed_point:
            maps = cv2.convertMaps(mx, my, cv2.CV_16SC2)
        else:
            maps = (mx, my)
        self._last_pose, self._last_maps = key, maps
        return maps

    def prepare(self, equirect: np.ndarray) -> np.ndarray:
        """Check the frame size and apply the pre-downscale (callable once per frame for several poses)."""
        import cv2

        if equirect.ndim < 2 or equirect.shape[0] != self.in_h or equirect.shape[1] != self.in_w:
            raise MediaError(None, "frame_size_mismatch", f"expected {self.in_w}x{self.in_h}, got {equirect.shape[1::-1]}")
        if (self._src_w, self._src_h) != (self.in_w, self.in_h):
            return cv2.resize(equirect, (self._src_w, self._src_h), interpolation=cv2.INTER_AREA)
        return equirect

    def render(self, equirect: np.ndarray, yaw: float, pitch: float, roll: float, prepared: bool = False) -> np.ndarray:
        """Perspective view ``(out_h, out_w, C)`` of an equirect frame ``(H, W, C)`` for a camera pose (degrees)."""
        import cv2

        src = equirect if prepared else self.prepare(equirect)
        m1, m2 = self.maps(yaw, pitch, roll)
        return cv2.remap(src, m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
