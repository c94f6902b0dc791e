"""Equirectangular -> perspective (rectilinear) projection for a moving camera (docs/ARCHITECTURE.md,
conventions §2-3).

Camera rays are computed once per output size; each frame only costs ``R @ rays`` on a coarse
grid (every 4th pixel), an arctan2 and an arcsin, a bilinear upsampling of the two maps and one
``cv2.remap`` on the float maps (three on planar yuv420p frames). ``BORDER_WRAP`` makes the ±180° seam
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


_COARSE_STEP = 4
"""Maps are computed exactly on every 4th output pixel and bilinearly upsampled (error < 0.03 source
pixel away from the poles, about OpenCV's 1/32-pixel interpolation resolution; ~5x cheaper)."""
_COARSE_MAX_EL_DEG = 70.0
"""Views reaching beyond this elevation (near a pole, where azimuth changes fast) use exact maps."""


def _wrap(x: np.ndarray, period: np.float32) -> np.ndarray:
    """``x`` modulo ``period`` (float32), as ``x - floor(x / period) * period``.

    Why not ``np.mod``: NumPy's float modulo (fmod plus sign fix-up, per element) costs ~14x more
    and was a third of the per-frame map time. The two differ only by rounding at the period
    boundary, which the callers keep out of view (opposite the view centre / outside the crop)."""
    q = np.floor(x * (np.float32(1) / period))
    q *= period
    return x - q


def _grid_rays(out_w: int, out_h: int, f: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Unit camera rays ``(3, len(ys)*len(xs))`` float32 at pixel positions (centres at integers)."""
    jj, ii = np.meshgrid(ys.astype(np.float64), xs.astype(np.float64), indexing="ij")
    r = np.stack([np.ones(ii.size), -(ii.ravel() + 0.5 - out_w / 2) / f, -(jj.ravel() + 0.5 - out_h / 2) / f])
    return (r / np.linalg.norm(r, axis=0, keepdims=True)).astype(np.float32)


class _Plane:
    """Rays of one output plane (luma, or the half-size chroma of yuv420p) and its source size."""

    def __init__(self, out_w: int, out_h: int, hfov_deg: float, src_w: int, src_h: int, step: int = _COARSE_STEP):
        self.out_w, self.out_h, self.src_w, self.src_h = out_w, out_h, src_w, src_h
        f = focal_px(out_w, hfov_deg)
        self.rays = _grid_rays(out_w, out_h, f, np.arange(out_w), np.arange(out_h))
        # coarse grid, one step beyond the image on every side, placed where cv2.resize's
        # (pixel-centre aligned) bilinear upsampling by `step` reads it: no edge clamping
        self.step = step
        self.cw, self.ch = -(-out_w // step) + 2, -(-out_h // step) + 2
        xs = (np.arange(self.cw) + 0.5) * step - 0.5 - step
        ys = (np.arange(self.ch) + 0.5) * step - 0.5 - step
        self.coarse = _grid_rays(out_w, out_h, f, xs, ys)
        self.sin_max_el = np.float32(np.sin(np.deg2rad(_COARSE_MAX_EL_DEG)))
        self.crop: tuple[int, int, int, int] | None = None  # (x0, y0, w, h) of the source this plane reads

    def maps(self, R: np.ndarray, fixed_point: bool, exact: bool = False):
        import cv2

        W, H = self.src_w, self.src_h
        d = R @ self.coarse
        coarse = not exact and float(np.abs(d[2]).max()) <= self.sin_max_el
        if coarse:
            # azimuth unwrapped around the view centre (no pole in view, so it is continuous);
            # BORDER_WRAP in remap reads columns outside [0, W) modulo W
            az_c = np.float32(np.arctan2(R[1, 0], R[0, 0]))
            az = np.arctan2(d[1], d[0]) - az_c
            az += np.float32(np.pi)
            az = _wrap(az, np.float32(2 * np.pi))
            az += az_c - np.float32(np.pi)
            shape, sz = (self.ch, self.cw), (self.cw * self.step, self.ch * self.step)
        else:
            d = R @ self.rays
            az = np.arctan2(d[1], d[0])
            shape = (self.out_h, self.out_w)
        el = np.arcsin(np.clip(d[2], -1.0, 1.0, out=d[2]))
        mx = ((0.5 - az * np.float32(1 / (2 * np.pi))) * W - 0.5).reshape(shape)
        my = ((0.5 - el * np.float32(1 / np.pi)) * H - 0.5).reshape(shape)
        y_hi = H - 1.0
        if self.crop is not None:
            x0, y0, cw, chh = self.crop
            if cw < W:  # a column window (never one through a pole or the seam, see source_crop)
                mx = _wrap(mx - np.float32(x0), np.float32(W))
            my = my - np.float32(y0)
            y_hi = min(H - 1.0 - y0, chh - 1.0)
        # clipped before the upsampling when coarse: bilinear values are convex combinations of the
        # grid's, so they stay inside the range (and the clip touches 16x fewer values)
        np.clip(my, 0.0, y_hi, out=my)
        if coarse:
            s = self.step
            mx = cv2.resize(mx, sz, interpolation=cv2.INTER_LINEAR)[s : s + self.out_h, s : s + self.out_w]
            my = cv2.resize(my, sz, interpolation=cv2.INTER_LINEAR)[s : s + self.out_h, s : s + self.out_w]
        if fixed_point:
            return cv2.convertMaps(mx, my, cv2.CV_16SC2)
        return np.ascontiguousarray(mx), np.ascontiguousarray(my)


@dataclass
class Projector:
    """Perspective views of one equirect stream: ``Projector(...).render(frame, yaw, pitch, roll)``.

    ``projection_pose`` is the spherical metadata's (prhd) yaw/pitch/roll: the stored sphere is
    rotated by it, so it is applied before the camera rotation (``R_total = R_pose @ R_cam``).
    ``prescale`` downsizes the equirect (INTER_AREA) when it is much denser than the output
    would sample it (a 90° view over 640 px of a 3840-wide frame is ~4x minified and aliases).
    ``exact`` computes the maps at every output pixel (default: on a 4-pixel grid, upsampled,
    except near the poles; see ``_COARSE_STEP``). ``fixed_point`` converts the maps to OpenCV's
    16-bit form first: only worth it when one map serves many frames; per-frame maps go to
    ``cv2.remap`` as float (the conversion costs more than the faster remap saves).

    :meth:`render` takes and returns rgb (or gray) frames; :meth:`render_i420` takes and returns
    planar yuv420p frames ``(h*3/2, w)`` as ffmpeg pipes them (half the bytes of rgb24, no colour
    conversion anywhere; the chroma planes get their own maps at half size).
    """

    out_w: int
    out_h: int
    hfov_deg: float
    in_w: int
    in_h: int
    prescale: bool = True
    projection_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fixed_point: bool = False
    exact: bool = False
    _src_w: int = field(init=False)
    _src_h: int = field(init=False)
    _last_pose: tuple | None = field(init=False, default=None, repr=False)
    _last_maps: tuple | None = field(init=False, default=None, repr=False)
    _last_chroma: tuple | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if min(self.out_w, self.out_h, self.in_w, self.in_h) <= 0 or not (0 < self.hfov_deg < 180):
            raise ValueError("sizes must be positive and 0 < hfov < 180")
        self._pose_R = rotation_matrix(*self.projection_pose)
        self._src_w, self._src_h = self.in_w, self.in_h
        if self.prescale:
            target_w = int(round(2.0 * self.out_w * 360.0 / self.hfov_deg))
            if self.in_w > 1.25 * target_w:
                self._src_w = target_w
                self._src_h = max(2, int(round(self.in_h * target_w / self.in_w)))
        # unit rays stay unit under rotation, so elevation is one arcsin (no hypot + second atan2)
        self._luma = _Plane(self.out_w, self.out_h, self.hfov_deg, self._src_w, self._src_h)
        self._chroma: _Plane | None = None

    @property
    def source_size(self) -> tuple[int, int]:
        """Equirect size the maps address (after the optional pre-downscale)."""
        return self._src_w, self._src_h

    @property
    def crop(self) -> tuple[int, int, int, int] | None:
        return self._luma.crop

    def source_crop(self, yaw, pitch, roll, margin: int = 4, max_fraction: float = 0.8
                    ) -> tuple[int, int, int, int] | None:
        """The rectangle ``(x0, y0, w, h)`` of the (pre-scaled) equirect that the views of all these
        poses read, with ``margin`` pixels for the bilinear taps, even-aligned for yuv420p; None
        when it would be more than ``max_fraction`` of the frame.

        Why: a 90° view reads a small part of the sphere, yet decoding to a pipe costs per pixel
        (ffmpeg's copy, the kernel's, ours): a window of 8 s at 1920x1080 is ~750 MB through the
        pipe. Columns are cropped only to a window that does not cross the ±180° seam and only when
        no view comes within 20° of a pole (there every column can be needed); rows always.
        Computed on the maps' own coarse ray grid (one step beyond the image on every side)."""
        W, H = self._src_w, self._src_h
        yaw, pitch, roll = np.broadcast_arrays(np.atleast_1d(np.asarray(yaw, float)), np.asarray(pitch, float),
                                               np.asarray(roll, float))
        Rs = (self._pose_R[None] @ rotation_matrix(yaw, pitch, roll)).astype(np.float32)  # (N, 3, 3)
        # the outer ring of the coarse grid: without a pole inside the view, the extremes of
        # azimuth and elevation over the view lie on its border
        lp = self._luma
        g = lp.coarse.reshape(3, lp.ch, lp.cw)
        ring = np.concatenate([g[:, 0], g[:, -1], g[:, 1:-1, 0], g[:, 1:-1, -1]], axis=1)  # (3, M)
        d = Rs @ ring[None]  # (N, 3, M)
        el = np.arcsin(np.clip(d[:, 2], -1.0, 1.0))
        # a pole inside a view: the view (its ring's cone) contains (0, 0, +-1)
        up = np.stack([Rs[:, 2, :], -Rs[:, 2, :]])  # the poles in camera coordinates, (2, N, 3)
        tx = np.float32(np.tan(np.deg2rad(self.hfov_deg) / 2) * lp.cw * lp.step / self.out_w)
        ty = np.float32(tx * lp.ch / lp.cw)
        fwd = np.maximum(up[..., 0], 1e-6)
        pole_in = (up[..., 0] > 0) & (np.abs(up[..., 1]) / fwd <= tx) & (np.abs(up[..., 2]) / fwd <= ty)
        el_max = np.pi / 2 if pole_in[0].any() else float(el.max())
        el_min = -np.pi / 2 if pole_in[1].any() else float(el.min())
        y_lo = (0.5 - el_max / np.pi) * H - 0.5 - margin
        y_hi = (0.5 - el_min / np.pi) * H - 0.5 + margin
        y0 = max(0, int(np.floor(y_lo)) // 2 * 2)
        y1 = min(H, -(-int(np.ceil(y_hi) + 1) // 2) * 2)
        x0, x1 = 0, W
        if not pole_in.any() and float(np.abs(d[:, 2]).max()) <= float(lp.sin_max_el):
            az_c = np.arctan2(Rs[:, 1, 0], Rs[:, 0, 0]).astype(np.float64)  # view centres
            az = np.arctan2(d[:, 1], d[:, 0]).astype(np.float64) - az_c[:, None]
            az = np.mod(az + np.pi, 2 * np.pi) - np.pi + np.unwrap(az_c)[:, None]  # continuous over time
            lo, hi = float(az.min()), float(az.max())
            if hi - lo < 1.5 * np.pi:
                xa = (0.5 - hi / (2 * np.pi)) * W - 0.5 - margin
                xb = (0.5 - lo / (2 * np.pi)) * W - 0.5 + margin
                shift = np.floor(xa / W) * W
                xa, xb = xa - shift, xb - shift
                if xb < W - 1:  # inside one period: a contiguous column window
                    x0 = max(0, int(np.floor(xa)) // 2 * 2)
                    x1 = min(W, -(-int(np.ceil(xb) + 1) // 2) * 2)
        if (x1 - x0) * (y1 - y0) > max_fraction * W * H:
            return None
        return x0, y0, x1 - x0, y1 - y0

    def set_crop(self, crop: tuple[int, int, int, int] | None) -> None:
        """Frames given to :meth:`render_i420` are this rectangle of the source (from
        :meth:`source_crop`); None: whole frames."""
        if crop is not None:
            x0, y0, w, h = (int(v) for v in crop)
            if min(x0, y0) < 0 or w <= 0 or h <= 0 or x0 + w > self._src_w or y0 + h > self._src_h or (x0 | y0 | w | h) % 2:
                raise ValueError(f"crop {crop} is not an even rectangle inside {self._src_w}x{self._src_h}")
            crop = (x0, y0, w, h)
        self._luma.crop = crop
        if self._chroma is None and crop is not None:
            self._chroma_maps_plane()
        if self._chroma is not None:
            self._chroma.crop = None if crop is None else tuple(v // 2 for v in crop)
        self._last_pose = self._last_maps = self._last_chroma = None

    def _R(self, yaw: float, pitch: float, roll: float) -> np.ndarray:
        return (self._pose_R @ rotation_matrix(yaw, pitch, roll)).astype(np.float32)

    def maps(self, yaw: float, pitch: float, roll: float) -> tuple[np.ndarray, np.ndarray]:
        """Remap maps for one pose (cached for a repeated pose, e.g. a static camera)."""
        key = (float(yaw), float(pitch), float(roll))
        if self._last_pose == key and self._last_maps is not None:
            return self._last_maps
        maps = self._luma.maps(self._R(*key), self.fixed_point, self.exact)
        self._last_pose, self._last_maps, self._last_chroma = key, maps, None
        return maps

    def _chroma_maps(self, yaw: float, pitch: float, roll: float) -> tuple[np.ndarray, np.ndarray]:
        key = (float(yaw), float(pitch), float(roll))
        self.maps(*key)  # keeps the pose cache consistent
        if self._last_chroma is None:
            self._chroma_maps_plane()
            self._last_chroma = self._chroma.maps(self._R(*key), self.fixed_point, self.exact)
        return self._last_chroma

    def _chroma_maps_plane(self) -> None:
        if self._chroma is None:
            if self.out_w % 2 or self.out_h % 2 or self._src_w % 2 or self._src_h % 2:
                raise ValueError("yuv420p needs even output and source sizes")
            self._chroma = _Plane(self.out_w // 2, self.out_h // 2, self.hfov_deg, self._src_w // 2, self._src_h // 2)
            c = self._luma.crop
            self._chroma.crop = None if c is None else tuple(v // 2 for v in c)

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

        if self._luma.crop is not None:
            raise ValueError("Projector.set_crop applies to render_i420 frames only")
        src = equirect if prepared else self.prepare(equirect)
        m1, m2 = self.maps(yaw, pitch, roll)
        return cv2.remap(src, m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)

    def render_i420(self, frame: np.ndarray, yaw: float, pitch: float, roll: float,
                    out: np.ndarray | None = None) -> np.ndarray:
        """Perspective view of a planar yuv420p equirect ``(H*3/2, W)`` (already at :attr:`source_size`)
        as yuv420p ``(out_h*3/2, out_w)``, written into ``out`` when given."""
        import cv2

        W, H = (self._src_w, self._src_h) if self._luma.crop is None else self._luma.crop[2:]
        w, h = self.out_w, self.out_h
        if frame.ndim != 2 or frame.shape != (H * 3 // 2, W) or W % 2 or H % 2:
            raise MediaError(None, "frame_size_mismatch", f"expected yuv420p {W}x{H}, got {frame.shape[::-1]}")
        if out is None:
            out = np.empty((h * 3 // 2, w), np.uint8)
        cm = self._chroma_maps(yaw, pitch, roll)
        m1, m2 = self.maps(yaw, pitch, roll)
        flat, oflat = frame.reshape(-1), out.reshape(-1)
        ys, cs, ocs = W * H, (W // 2) * (H // 2), (w // 2) * (h // 2)
        cv2.remap(frame[:H], m1, m2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP, dst=out[:h])
        for k in range(2):
            src = flat[ys + k * cs : ys + (k + 1) * cs].reshape(H // 2, W // 2)
            dst = oflat[w * h + k * ocs : w * h + (k + 1) * ocs].reshape(h // 2, w // 2)
            cv2.remap(src, cm[0], cm[1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP, dst=dst)
        return out
