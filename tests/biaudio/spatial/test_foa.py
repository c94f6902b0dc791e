"""FOA conventions, encoding, rotation along a trajectory (docs/ARCHITECTURE.md conventions §4, §7.3) and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from biaudio.errors import BiaudioError, ConventionError, MediaError
from biaudio.spatial import direction as D
from biaudio.spatial import foa
from biaudio.spatial.angles import rotation_matrix, vec_to_dir, world_to_camera_dir

SR = 48000


def _foa_dir(b: np.ndarray) -> tuple[float, float]:
    """Direction of a single plane wave from its (X, Y, Z) = ACN channels 3, 1, 2."""
    b = np.asarray(b, dtype=np.float64).reshape(4, -1)
    az, el = vec_to_dir(b[[3, 1, 2]] @ b[0])
    return float(az), float(el)


def test_encode_axes_follow_conventions():
    s = np.ones(4)
    for az, el, expect in [(0, 0, [1, 0, 0, 1]), (90, 0, [1, 1, 0, 0]), (-90, 0, [1, -1, 0, 0]), (0, 90, [1, 0, 1, 0])]:
        np.testing.assert_allclose(foa.encode(s, az, el)[:, 0], expect, atol=1e-12)


@pytest.mark.parametrize("conv", ["fuma", "ambix-n3d", "ambix"])
def test_convention_round_trip_and_levels(conv):
    rng = np.random.default_rng(1)
    a = foa.encode(rng.standard_normal(1000), 30, 10)
    x = foa.from_ambix(a, conv)
    np.testing.assert_allclose(foa.to_ambix(x, conv), a, atol=1e-12)
    if conv == "fuma":  # W at -3 dB, order W X Y Z
        np.testing.assert_allclose(x[0], a[0] / np.sqrt(2))
        np.testing.assert_allclose(x[1], a[3])
        np.testing.assert_allclose(x[2], a[1])
        np.testing.assert_allclose(x[3], a[2])
    if conv == "ambix-n3d":
        np.testing.assert_allclose(x[1:], a[1:] * np.sqrt(3))


def test_fuma_and_ambix_give_same_directions():
    """Conventions §7.3: the same field stored as FuMa and as ambiX estimates the same directions."""
    rng = np.random.default_rng(2)
    for az, el in [(30, 10), (-135, -35), (180, 35), (90, 0), (0, -60)]:
        field = foa.encode(rng.standard_normal(SR // 2), az, el) + 0.05 * rng.standard_normal((4, SR // 2))
        fuma = foa.from_ambix(field, "fuma")
        r_amb = D.estimate(foa.to_ambix(field, "ambix"), SR)
        r_fuma = D.estimate(foa.to_ambix(fuma, "fuma"), SR)
        assert D.angular_error_deg(r_amb.clip_azimuth_deg, r_amb.clip_elevation_deg, az, el) < 1.0
        assert D.angular_error_deg(r_fuma.clip_azimuth_deg, r_fuma.clip_elevation_deg, az, el) < 1.0
        np.testing.assert_allclose(r_fuma.raw_azimuth_deg, r_amb.raw_azimuth_deg, atol=1e-3)
        # reading FuMa data as if it were ambiX is wrong, and visibly so (a test that could fail);
        # (-135, -35) is skipped: its xyz is nearly invariant under the channel permutation
        if (az, el) == (-135, -35):
            continue
        r_wrong = D.estimate(fuma, SR)
        assert D.angular_error_deg(r_wrong.clip_azimuth_deg, r_wrong.clip_elevation_deg, az, el) > 10


def test_rotation_matrix_matches_single_axis_formulas_and_camera_dirs():
    rng = np.random.default_rng(3)
    b = foa.encode(np.ones(1), 30, 10)[:, 0]
    psi = np.deg2rad(40)
    M = foa.foa_rotation_matrix(rotation_matrix(40, 0, 0))
    W, Y, Z, X = b
    np.testing.assert_allclose(M @ b, [W, Y * np.cos(psi) - X * np.sin(psi), Z, X * np.cos(psi) + Y * np.sin(psi)], atol=1e-12)
    for _ in range(20):
        yaw, pitch, roll = rng.uniform(-180, 180), rng.uniform(-89, 89), rng.uniform(-180, 180)
        az, el = rng.uniform(-180, 180), rng.uniform(-80, 80)
        bc = foa.foa_rotation_matrix(rotation_matrix(yaw, pitch, roll)) @ foa.encode(np.ones(1), az, el)
        caz, cel = world_to_camera_dir(az, el, yaw, pitch, roll)
        gaz, gel = _foa_dir(bc)
        assert D.angular_error_deg(gaz, gel, caz, cel) < 1e-4
    Ms = foa.foa_rotation_matrix(rotation_matrix(np.arange(5.0), 0, 0))
    assert Ms.shape == (5, 4, 4)


def _hf_residual_db(ref: np.ndarray, test: np.ndarray, sr: int, f_lo: float = 4000.0) -> float:
    """Energy of (test - ref) above f_lo relative to the energy of ref (dB)."""
    from scipy.signal import butter, sosfilt

    e = (test - ref)[1:].astype(np.float64)
    if f_lo > 0:
        e = sosfilt(butter(4, f_lo, btype="highpass", fs=sr, output="sos"), e, axis=1)
    return float(10 * np.log10(np.sum(e**2) / np.sum(ref[1:].astype(np.float64) ** 2)))


def test_crossfaded_pan_matches_per_sample_rotation():
    """A 90°/s pan: cross-faded per-frame rotation is ≥ 45 dB below exact per-sample rotation at
    high frequency, and switching matrices without the cross-fade is clearly worse (clicks)."""
    sr, fps, dur = SR, 30.0, 2.0
    T = int(sr * dur)
    t = np.arange(T) / sr
    # low-frequency tones: any high-frequency residual is produced by the rotation itself
    s = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t + 1.0)
    world = foa.encode(s, 45.0, 10.0).astype(np.float32)
    ft = np.arange(0, dur + 1 / fps, 1 / fps)
    yaw_f = 90.0 * ft
    exact = foa.rotate_per_sample(world, rotation_matrix(90.0 * t, 5.0, 0.0))
    xf = foa.rotate_along(world, sr, ft, rotation_matrix(yaw_f, 5.0, 0.0))
    hard = foa.rotate_along(world, sr, ft, rotation_matrix(yaw_f, 5.0, 0.0), crossfade=False)
    r_xf = _hf_residual_db(exact, xf, sr)
    r_hard = _hf_residual_db(exact, hard, sr)
    full_xf = _hf_residual_db(exact, xf, sr, f_lo=0.0)
    full_hard = _hf_residual_db(exact, hard, sr, f_lo=0.0)
    print(
        f"90 deg/s pan vs per-sample rotation: HF (>4 kHz) residual cross-fade {r_xf:.1f} dB, hard switch "
        f"{r_hard:.1f} dB; full-band cross-fade {full_xf:.1f} dB, hard switch {full_hard:.1f} dB"
    )
    assert r_xf <= -45.0
    assert full_xf <= -45.0
    assert r_hard > r_xf + 10.0
    assert full_hard > full_xf + 20.0
    np.testing.assert_array_equal(xf[0], world[0])  # W untouched


def test_rotate_along_static_and_bad_times():
    x = foa.encode(np.ones(100), 0, 0)
    y = foa.rotate_along(x, SR, np.array([0.0]), rotation_matrix(90, 0, 0)[None])
    assert _foa_dir(y) == pytest.approx((-90.0, 0.0), abs=1e-9)
    with pytest.raises(ValueError):
        foa.rotate_along(x, SR, np.array([0.0, 0.0]), rotation_matrix([0, 1], 0, 0))
    with pytest.raises(ValueError):
        foa.rotate_along(x, SR, np.array([0.0, 1.0]), rotation_matrix([0], 0, 0))


def test_bad_input_raises_clear_errors():
    x = np.zeros((4, 10), np.float32)
    with pytest.raises(ConventionError) as e:
        foa.to_ambix(x, "ambisonic-quad")
    assert e.value.reason == "unknown_convention"
    with pytest.raises(ConventionError):
        foa.from_ambix(x, "sn3d?")
    for bad in (np.zeros((2, 10)), np.zeros((10, 4)), np.zeros(40), np.zeros((9, 10))):
        with pytest.raises(MediaError) as e:
            foa.to_ambix(bad, "ambix")
        assert e.value.reason == "not_4_channels"
    with pytest.raises(MediaError) as e:
        foa.to_ambix(np.zeros((4, 0)), "fuma")
    assert e.value.reason == "zero_length"
    nan = x.copy()
    nan[2, 5] = np.nan
    for fn in (lambda: foa.to_ambix(nan, "ambix"), lambda: D.estimate(nan, SR), lambda: foa.rotate_along(nan, SR, [0.0], np.eye(3))):
        with pytest.raises(BiaudioError) as e:
            fn()
        assert e.value.reason == "non_finite_samples"
