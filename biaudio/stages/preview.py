"""The QA preview of a clip: the equirect thumbnail with the camera path, the view at the start and
the dominant-direction track drawn on it (``previews/<clip_id>.jpg``).

Apart from :mod:`biaudio.stages.render` because drawing is not rendering: the render only hands
over one small thumbnail of the source (taken from a frame it decodes anyway) and the poses; all
the geometry of the drawing (the stored frame's pose, the seam at ±180, the legend) lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biaudio import atomic
from biaudio.errors import MediaError
from biaudio.spatial.angles import rotation_matrix, vec_to_dir
from biaudio.stages.trajectory import Trajectory

if TYPE_CHECKING:
    from biaudio.stages.render import RenderConfig

STAGE = "render"  # a failed preview rejects the clip at the render stage, like a failed encode

_PATH = (255, 220, 0)  # RGB
_START = (0, 230, 0)
_VIEW = (0, 200, 255)
_DOM = (255, 0, 200)
_CLIP = (255, 60, 60)


def thumbnail(frame: np.ndarray, width: int, i420: bool = False) -> np.ndarray:
    import cv2

    if i420:
        frame = cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420)
    h, w = frame.shape[:2]
    height = max(2, int(round(width * h / w)))
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _stored_pixels(vec_world: np.ndarray, pose: tuple[float, float, float], W: int, H: int):
    """Equirect pixel of world vectors in the *stored* frame (the Projector applies ``R_pose @ d``)."""
    from biaudio.spatial.projection import equirect_pixel

    v = np.einsum("ij,...j->...i", rotation_matrix(*pose), vec_world)
    az, el = vec_to_dir(v)
    return equirect_pixel(az, el, W, H)


def _polyline(img: np.ndarray, x: np.ndarray, y: np.ndarray, color, thickness: int) -> None:
    """Draw a path on the equirect, breaking it where it crosses the ±180 seam."""
    import cv2

    W = img.shape[1]
    pts = np.stack([x, y], 1)
    start = 0
    for i in range(1, len(pts) + 1):
        if i == len(pts) or abs(pts[i, 0] - pts[i - 1, 0]) > W / 2:
            seg = np.round(pts[start:i]).astype(np.int32)
            if len(seg) >= 2:
                cv2.polylines(img, [seg.reshape(-1, 1, 2)], False, color, thickness, cv2.LINE_AA)
            elif len(seg) == 1:
                cv2.circle(img, tuple(int(v) for v in seg[0]), thickness, color, -1, cv2.LINE_AA)
            start = i


def view_outline(yaw: float, pitch: float, roll: float, cfg: RenderConfig, n: int = 64) -> np.ndarray:
    """World unit vectors ``(4n, 3)`` along the border of the perspective image (clockwise)."""
    w, h = cfg.width, cfg.height
    f = (w / 2) / np.tan(np.deg2rad(cfg.hfov_deg) / 2)
    i = np.linspace(0, w, n)
    j = np.linspace(0, h, n)
    border = np.concatenate([
        np.stack([i, np.zeros(n)], 1), np.stack([np.full(n, w), j], 1),
        np.stack([i[::-1], np.full(n, h)], 1), np.stack([np.zeros(n), j[::-1]], 1),
    ])
    rays = np.stack([np.ones(len(border)), -(border[:, 0] - w / 2) / f, -(border[:, 1] - h / 2) / f], 1)
    d = rays @ rotation_matrix(yaw, pitch, roll).T
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def write_preview(
    path: Path,
    thumb: np.ndarray,
    traj: Trajectory,
    cfg: RenderConfig,
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0),
    directions: tuple[np.ndarray, np.ndarray] | None = None,
    clip_dir: tuple[float, float] | None = None,
) -> Path:
    """QA preview: equirect thumbnail + camera path (view centre per frame), start view rectangle,
    dominant-direction track and clip direction, with a legend. JPEG via temp + ``os.replace``."""
    import cv2

    from biaudio.spatial.angles import dir_to_vec

    img = np.ascontiguousarray(thumb.copy())
    H, W = img.shape[:2]
    R = rotation_matrix(traj.yaw, traj.pitch, traj.roll)
    fwd = R[..., :, 0]  # camera x axis (the view centre) in world coordinates
    if directions is not None and len(directions[0]):
        x, y = _stored_pixels(dir_to_vec(directions[0], directions[1]), pose, W, H)
        for xi, yi in zip(x, y, strict=True):
            cv2.circle(img, (int(round(xi)), int(round(yi))), 2, _DOM, -1, cv2.LINE_AA)
    if clip_dir is not None:
        x, y = _stored_pixels(dir_to_vec(*clip_dir), pose, W, H)
        cv2.drawMarker(img, (int(round(float(x))), int(round(float(y)))), _CLIP, cv2.MARKER_CROSS, 14, 2)
    x, y = _stored_pixels(view_outline(traj.yaw[0], traj.pitch[0], traj.roll[0], cfg), pose, W, H)
    _polyline(img, x, y, _VIEW, 1)
    x, y = _stored_pixels(fwd, pose, W, H)
    _polyline(img, x, y, _PATH, 2)
    cv2.circle(img, (int(round(x[0])), int(round(y[0]))), 5, _START, -1, cv2.LINE_AA)
    legend = [("camera path (view centre)", _PATH), ("start of path", _START), ("view at start", _VIEW),
              ("dominant sound (per window)", _DOM), ("dominant sound (clip)", _CLIP)]
    # the legend goes in a strip under the picture, never over it (small previews would lose content)
    scale = 0.4
    lh = 16
    cols = 2 if W >= 480 else 1
    rows = -(-len(legend) // cols)
    strip = np.zeros((rows * lh + 6, W, 3), np.uint8)
    for n, (text, color) in enumerate(legend):
        x0 = (n % cols) * (W // cols) + 4
        yy = (n // cols + 1) * lh
        cv2.line(strip, (x0, yy - 4), (x0 + 14, yy - 4), color, 2)
        cv2.putText(strip, text, (x0 + 20, yy), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    img = np.concatenate([img, strip], axis=0)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, cfg.preview_quality])
    if not ok:
        raise MediaError(str(path), "encode_failed", "JPEG encoding failed", STAGE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, buf.tobytes())
    return path
