"""Equirect -> perspective projection, and the end-to-end sign checks of conventions §7.1-7.2 (docs/ARCHITECTURE.md):
a marker and a sound at the same world direction land on the same image side, the same FOA
azimuth and the same louder ear, for several camera poses."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from biaudio.errors import MediaError
from biaudio.spatial import decoders as dc
from biaudio.spatial import direction as D
from biaudio.spatial import foa
from biaudio.spatial.angles import rotation_matrix
from biaudio.spatial.binaural import render_binaural
from biaudio.spatial.projection import Projector, camera_pixel, equirect_pixel

SR = 48000
W, H = 1920, 960
OW, OH, FOV = 640, 360, 90.0


def _dot_frame(az, el, W=W, H=H, radius=6):
    """Black equirect with a red dot at (az, el) (drawn twice near the seam so it wraps)."""
    eq = np.zeros((H, W, 3), np.uint8)
    x, y = equirect_pixel(az, el, W, H)
    for dx in (-W, 0, W):
        cv2.circle(eq, (int(round(float(x))) + dx, int(round(float(y)))), radius, (255, 0, 0), -1)
    return eq


def _locate(img):
    m = img[..., 0].astype(int) > 100
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    return float(xs.mean()), float(ys.mean())


@pytest.fixture(scope="module")
def decoder():
    return dc.get_decoder("kemar", "magls", SR)


@pytest.fixture(scope="module")
def world_foa():
    s = np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32)
    return foa.encode(s, 30.0, 10.0).astype(np.float32)


def _audio_checks(world, decoder, yaw, pitch, roll):
    cam = foa.rotate_along(world, SR, np.array([0.0]), rotation_matrix(yaw, pitch, roll)[None])
    r = D.estimate(cam, SR)
    b = render_binaural(world, SR, np.array([0.0]), [yaw], [pitch], [roll], decoder)
    return r.clip_azimuth_deg, r.clip_elevation_deg, dc.ild_db(b)


@pytest.mark.parametrize(
    "pose, side, foa_dir",
    [
        ((0, 0, 0), "left", (30, 10)),
        ((60, 0, 0), "right", (-30, 10)),
        ((30, 10, 0), "centre", (0, 0)),
        ((30, 10, 45), "centre", (0, 0)),
        ((30, 10, -120), "centre", (0, 0)),
    ],
)
def test_marker_side_foa_azimuth_and_louder_ear_agree(pose, side, foa_dir, decoder, world_foa):
    """Conventions §7.1 with the source at world (az 30, el 10)."""
    yaw, pitch, roll = pose
    x, y, vis = camera_pixel(30, 10, yaw, pitch, roll, OW, OH, FOV)
    img = Projector(OW, OH, FOV, W, H).render(_dot_frame(30, 10), yaw, pitch, roll)
    found = _locate(img)
    assert vis and found is not None
    assert abs(found[0] - x) < 1.5 and abs(found[1] - y) < 1.5  # rendered dot == analytic pixel
    az, el, ild = _audio_checks(world_foa, decoder, yaw, pitch, roll)
    print(f"pose {pose}: marker x={found[0]:.1f} (centre {OW / 2 - 0.5}), FOA ({az:.1f}, {el:.1f}), ILD {ild:+.2f} dB")
    assert D.angular_error_deg(az, el, *foa_dir) < 1.0
    cx = OW / 2 - 0.5
    if side == "left":
        assert found[0] < cx - 50 and ild > 3
    elif side == "right":
        assert found[0] > cx + 50 and ild < -3
    else:
        assert abs(found[0] - cx) < 1.5 and abs(found[1] - (OH / 2 - 0.5)) < 1.5 and abs(ild) < 0.5


def test_random_poses_marker_side_matches_ear(decoder, world_foa):
    rng = np.random.default_rng(11)
    checked = 0
    proj = Projector(OW, OH, FOV, W, H)
    frame = _dot_frame(30, 10)
    while checked < 6:
        yaw, pitch, roll = rng.uniform(-10, 70), rng.uniform(-20, 30), 0.0
        x, _, vis = camera_pixel(30, 10, yaw, pitch, roll, OW, OH, FOV)
        if not vis or abs(x - OW / 2) < 60:
            continue
        found = _locate(proj.render(frame, yaw, pitch, roll))
        az, _, ild = _audio_checks(world_foa, decoder, yaw, pitch, roll)
        left = found[0] < OW / 2
        assert left == (az > 0) == (ild > 0), (yaw, pitch, found, az, ild)
        checked += 1


@pytest.mark.parametrize("pose", [(180, 0, 0), (-180, 0, 0), (179.9, 30, 0), (0, 90, 0), (0, -90, 0), (135, 89, 40), (-45, -80, 10)])
def test_seam_and_poles_without_black_lines(pose):
    """Conventions §7.2: constant colour and a texture must come out without near-black pixels."""
    proj = Projector(OW, OH, FOV, W, H)
    flat = np.full((H, W, 3), 180, np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    tex = np.stack([60 + (xx * 7 + yy * 3) % 190, 60 + (yy * 5) % 190, 60 + (xx % 97) * 2], -1).astype(np.uint8)
    assert proj.render(flat, *pose).min() >= 179
    assert proj.render(tex, *pose).min() >= 55


def test_border_constant_would_show_the_seam():
    """The check above can fail: the same maps with BORDER_CONSTANT blend black into the seam."""
    proj = Projector(OW, OH, FOV, W, H, fixed_point=False)
    flat = np.full((H, W, 3), 180, np.uint8)
    mins = []
    for pose in ((179.9, 0, 0), (0, 90, 0), (180, 30, 0)):
        mx, my = proj.maps(*pose)
        bad = cv2.remap(flat, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mins.append(int(bad.min()))
    assert min(mins) < 150, mins  # vs >= 179 with BORDER_WRAP


def test_16_9_stored_equirect_and_prescale():
    for w, h in ((1920, 1080), (3840, 1920)):
        frame = _dot_frame(-40, 20, w, h, radius=10)
        for ow, oh, fov in ((640, 360, 90.0), (224, 224, 90.0)):
            proj = Projector(ow, oh, fov, w, h)
            x, y, vis = camera_pixel(-40, 20, -30, 15, 0, ow, oh, fov)
            found = _locate(proj.render(frame, -30, 15, 0))
            assert vis and found is not None
            assert abs(found[0] - x) < 2.0 and abs(found[1] - y) < 2.0
    assert Projector(224, 224, 90, 3840, 1920).source_size[0] < 3840  # pre-downscaled against aliasing
    assert Projector(640, 360, 90, 1920, 960).source_size == (1920, 960)
    with pytest.raises(MediaError):
        Projector(OW, OH, FOV, W, H).render(np.zeros((100, 200, 3), np.uint8), 0, 0, 0)


def test_projection_pose_applied_before_camera():
    frame = _dot_frame(30, 10)
    posed = Projector(OW, OH, FOV, W, H, projection_pose=(90, 0, 0)).render(frame, -60, 0, 0)
    plain = Projector(OW, OH, FOV, W, H).render(frame, 30, 0, 0)
    assert np.abs(posed.astype(int) - plain.astype(int)).max() <= 1


def test_camera_pixel_and_equirect_pixel_conventions():
    assert equirect_pixel(0, 0, W, H) == (W / 2 - 0.5, H / 2 - 0.5)
    x, _ = equirect_pixel(90, 0, W, H)
    assert x == pytest.approx(W / 4 - 0.5)  # left of centre
    _, y = equirect_pixel(0, 90, W, H)
    assert y == pytest.approx(-0.5)  # top edge
    _, _, vis = camera_pixel(180, 0, 0, 0, 0, OW, OH, FOV)
    assert not vis
    _, y, _ = camera_pixel(0, 20, 0, 0, 0, OW, OH, FOV)
    assert y < OH / 2  # up is up


def test_projection_speed():
    proj = Projector(OW, OH, FOV, W, H)
    eq = np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)
    proj.render(eq, 0, 0, 0)
    n = 20
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core, and CPU time: robust to other jobs sharing the machine
    try:
        c0 = time.process_time()
        for k in range(n):
            proj.render(eq, 3.0 * k, 10.0, 2.0)
        ms = 1000 * (time.process_time() - c0) / n
    finally:
        cv2.setNumThreads(threads)
    print(f"projection 1920x960 -> 640x360, moving camera: {ms:.1f} ms CPU/frame (one thread)")
    assert ms < 40


@pytest.mark.parametrize("pose", [(0, 0, 0), (179.9, 20, 5), (-100, 30, 10), (45, 40, -8), (-170, -35, 3)])
def test_coarse_maps_match_exact_maps(pose):
    """Maps from the 4-pixel grid (upsampled) agree with per-pixel maps to a small fraction of a pixel
    (azimuth compared modulo the width: the coarse maps are unwrapped around the view centre)."""
    fast = Projector(OW, OH, FOV, 1920, 1080, fixed_point=False)
    exact = Projector(OW, OH, FOV, 1920, 1080, fixed_point=False, exact=True)
    (fx, fy), (ex, ey) = fast.maps(*pose), exact.maps(*pose)
    dx = np.abs((fx - ex + 960) % 1920 - 960)
    assert dx.max() < 0.05 and np.abs(fy - ey).max() < 0.05


@pytest.mark.parametrize("pose", [(-30, 15, 0), (150, -20, 8), (0, 80, 0)])
def test_i420_render_matches_rgb_render(pose):
    """The planar yuv420p path (decoder -> remap per plane -> encoder) shows the same picture."""
    frame = _dot_frame(-40, 20, radius=10)
    frame[..., 1] = 90  # some colour everywhere, so chroma is exercised
    proj = Projector(OW, OH, FOV, W, H)
    i420 = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
    out = proj.render_i420(i420, *pose)
    assert out.shape == (OH * 3 // 2, OW)
    via_yuv = cv2.cvtColor(out, cv2.COLOR_YUV2RGB_I420).astype(int)
    direct = cv2.cvtColor(cv2.cvtColor(proj.render(frame, *pose), cv2.COLOR_RGB2YUV_I420), cv2.COLOR_YUV2RGB_I420)
    assert np.abs(via_yuv - direct.astype(int)).mean() < 2.0
    a, b = _locate(via_yuv.astype(np.uint8)), _locate(direct)
    assert (a is None) == (b is None)
    if a is not None:
        assert abs(a[0] - b[0]) < 1.5 and abs(a[1] - b[1]) < 1.5
    with pytest.raises(MediaError):
        proj.render_i420(np.zeros((100, 200), np.uint8), *pose)


@pytest.mark.parametrize("case", ["static", "drift", "seam", "high_pitch", "pole"])
def test_source_crop_renders_the_same_views(case):
    """Rendering from only the rectangle ``source_crop`` returns equals rendering from the whole
    frame (up to 1/32-px map rounding), for views that cross the seam or reach a pole too."""
    import cv2

    from biaudio.spatial.projection import Projector

    W, H, n = 960, 480, 40
    rng = np.random.default_rng(5)
    frame = cv2.resize(rng.integers(0, 255, (H * 3 // 2 // 8, W // 8), np.uint8), (W, H * 3 // 2),
                       interpolation=cv2.INTER_CUBIC)
    poses = {"static": (np.full(n, 30.0), np.zeros(n), np.zeros(n)),
             "drift": (np.linspace(-20, 40, n), np.linspace(-10, 15, n), np.linspace(-5, 5, n)),
             "seam": (np.linspace(170, 190, n), np.zeros(n), np.zeros(n)),
             "high_pitch": (np.zeros(n), np.linspace(40, 60, n), np.zeros(n)),
             "pole": (np.zeros(n), np.full(n, 85.0), np.zeros(n))}[case]
    full = Projector(320, 180, 90.0, W, H, prescale=False)
    cut = Projector(320, 180, 90.0, W, H, prescale=False)
    crop = cut.source_crop(*poses)
    assert crop is not None
    x0, y0, cw, ch = crop
    assert all(v % 2 == 0 for v in crop) and cw * ch < 0.8 * W * H
    if case in ("seam", "pole", "high_pitch"):
        assert (x0, cw) == (0, W)  # no column window across the seam or near a pole
    else:
        assert cw < W / 2
    if case == "pole":
        assert y0 == 0
    cut.set_crop(crop)
    Y, U, V = frame[:H], frame[H:H + H // 4].reshape(H // 2, W // 2), frame[H + H // 4:].reshape(H // 2, W // 2)
    sub = np.concatenate([Y[y0:y0 + ch, x0:x0 + cw].ravel(), U[y0 // 2:(y0 + ch) // 2, x0 // 2:(x0 + cw) // 2].ravel(),
                          V[y0 // 2:(y0 + ch) // 2, x0 // 2:(x0 + cw) // 2].ravel()]).reshape(ch * 3 // 2, cw)
    for k in range(0, n, 6):
        a = full.render_i420(frame, poses[0][k], poses[1][k], poses[2][k]).astype(int)
        b = cut.render_i420(sub, poses[0][k], poses[1][k], poses[2][k]).astype(int)
        d = np.abs(a - b)
        assert d.mean() < 0.01 and np.percentile(d, 99.9) <= 1, (k, d.mean(), d.max())
    with pytest.raises(ValueError):
        cut.set_crop((1, 0, 10, 10))  # odd offsets do not fit yuv420p chroma
