"""Dominant-direction accuracy: synthetic moving sources, and real third-party FOA with known directions."""

from __future__ import annotations

import time

import numpy as np
import pytest

from biaudio.spatial import direction as D
from biaudio.spatial import foa
from biaudio.spatial.angles import dir_to_vec, vec_to_dir

SR = 48000


def _decode(path):
    from biaudio.media import decode_audio

    return decode_audio(path)


def _diffuse(rng, T, n=48, level=0.1):
    """Isotropic noise field: independent noise from a Fibonacci set of directions."""
    grid = D.fibonacci_grid(n)
    az, el = vec_to_dir(grid)
    out = np.zeros((4, T))
    for a, e in zip(az, el, strict=True):
        out += foa.encode(rng.standard_normal(T), a, e)
    return level * out / np.sqrt(n)


def _two_source_scene(seed=0, dur=6.0):
    """Two moving sources with antiphase slow envelopes (one dominates most windows) + diffuse noise."""
    rng = np.random.default_rng(seed)
    T = int(SR * dur)
    t = np.arange(T) / SR
    az1, el1 = -60 + 120 * t / dur, 10 + 0 * t  # noise source sweeping across the front
    az2, el2 = 150 - 60 * t / dur, -20 + 30 * t / dur  # harmonic source behind, rising
    env1 = 0.5 + 0.5 * np.cos(2 * np.pi * t / 2.0)
    env2 = 1.0 - env1
    s1 = env1 * rng.standard_normal(T)
    s2 = env2 * sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (310, 620, 930, 1240, 2100))
    s2 *= np.sqrt(np.mean(s1**2) / np.mean(s2**2))
    x = foa.encode(s1, az1, el1) + foa.encode(s2, az2, el2) + _diffuse(rng, T)
    truth = dict(t=t, az=(az1, az2), el=(el1, el2), env=(env1**2, env2**2 * 1.0))
    return x.astype(np.float32), truth


def test_synthetic_two_moving_sources_median_error():
    x, tr = _two_source_scene()
    D.estimate(x[:, :SR], SR)  # warm-up: imports and grid cache are not the estimator's cost
    t0 = time.process_time()  # CPU time: robust to other jobs sharing the machine
    r = D.estimate(x, SR, D.DirectionConfig(window_s=0.2))
    el_s = time.process_time() - t0
    idx = np.clip((r.t * SR).astype(int), 0, x.shape[1] - 1)
    e1, e2 = tr["env"][0][idx], tr["env"][1][idx]
    dom = np.where(e1 >= e2, 0, 1)
    taz = np.where(dom == 0, tr["az"][0][idx], tr["az"][1][idx])
    tel = np.where(dom == 0, tr["el"][0][idx], tr["el"][1][idx])
    clear = np.abs(10 * np.log10(np.maximum(e1, 1e-9) / np.maximum(e2, 1e-9))) > 6  # one source clearly louder
    err_raw = D.angular_error_deg(r.raw_azimuth_deg, r.raw_elevation_deg, taz, tel)[clear]
    err_sm = D.angular_error_deg(r.azimuth_deg, r.elevation_deg, taz, tel)[clear]
    print(
        f"synthetic 2 moving sources + diffuse: {clear.sum()} windows, median error raw {np.median(err_raw):.2f} deg, "
        f"smoothed {np.median(err_sm):.2f} deg; estimate took {1000 * el_s:.1f} ms CPU for {x.shape[1] / SR:.0f} s"
    )
    assert clear.sum() >= 10
    assert np.median(err_raw) <= 3.0
    assert np.median(err_sm) <= 3.0
    assert el_s < 0.5  # vectorised: a few ms per second of audio
    # diffuseness: low for the scene with clear sources, high for a purely diffuse field
    rng = np.random.default_rng(5)
    diff = D.estimate(_diffuse(rng, SR, level=1.0).astype(np.float32), SR)
    print(f"diffuseness: scene median {np.median(r.diffuseness):.2f}, diffuse field median {np.median(diff.diffuseness):.2f}")
    assert np.median(diff.diffuseness) > 0.8
    assert np.median(r.diffuseness[clear]) < 0.5


def test_clip_direction_gate_and_energy_map():
    rng = np.random.default_rng(7)
    T = 2 * SR
    s = rng.standard_normal(T)
    s[: SR // 2] *= 1e-3  # quiet lead-in: gated out of the clip direction
    x = foa.encode(s, 120, -30) + 0.02 * _diffuse(rng, T)
    r = D.estimate(x.astype(np.float32), SR, D.DirectionConfig(gate_db=30))
    assert not r.loud[0] and r.loud[-1]
    assert D.angular_error_deg(r.clip_azimuth_deg, r.clip_elevation_deg, 120, -30) < 2
    m = D.energy_map(x.astype(np.float32), SR, az_step_deg=5, el_step_deg=5)
    i, j = np.unravel_index(np.argmax(m.power_db), m.power_db.shape)
    assert D.angular_error_deg(m.azimuth_deg[j], m.elevation_deg[i], 120, -30) <= 5
    assert m.azimuth_deg[0] > m.azimuth_deg[-1] and m.elevation_deg[0] > m.elevation_deg[-1]  # equirect layout
    mw = D.energy_map(x.astype(np.float32), SR, per_window=True)
    assert mw.power_db.shape[0] == len(r.t)
    recs = r.to_records()
    assert set(recs[0]) == {"t", "azimuth_deg", "elevation_deg", "diffuseness", "energy_db"}


def test_smoothing_on_sphere_across_seam():
    v = dir_to_vec(np.array([179.0, -179.0, 179.0, -179.0]), np.zeros(4))
    az, el = vec_to_dir(D.smooth_on_sphere(v, 3))
    assert np.all(np.abs(np.abs(az) - 180) < 2)  # averaging angles would give ~0 (front): wrong


# ---- real third-party data -------------------------------------------------------------------

CHAPMAN = [
    (1.1, 45, 35), (3.6, 0, 35), (6.3, -45, 35), (8.9, 45, 0), (11.0, 0, 0), (13.3, -45, 0),
    (16.0, 45, -35), (18.6, 0, -35), (20.8, -45, -35), (23.4, 90, 35), (28.4, -90, 35), (30.2, 90, 0),
    (32.3, -90, 0), (34.3, 90, -35), (36.2, None, -90), (38.2, -90, -35), (40.4, 135, 35), (43.8, 180, 35),
    (45.9, -135, 35), (47.9, 135, 0), (51.5, -135, 0), (53.7, 135, -35), (55.9, 180, -35), (57.4, -135, -35),
]  # fmt: skip


def test_chapman_fuma_positions_every_burst(testdata_dir):
    x, sr = _decode(testdata_dir / "chapman-positions-foa" / "4ch_B_FuMaNorm_FuMaOrd_speech.mp4")
    a = foa.to_ambix(x, "fuma")
    cfg = D.DirectionConfig(window_s=0.1, gate_db=20)
    errs = []
    for t, az, el in CHAPMAN:
        seg = a[:, int((t - 0.6) * sr) : int((t + 0.6) * sr)]
        caz, cel = D.clip_direction(seg, sr, cfg)
        err = abs(cel - el) if az is None else float(D.angular_error_deg(caz, cel, az, el))
        errs.append(err)
        assert err <= 5.0, f"burst at {t} s: got ({caz:.1f}, {cel:.1f}), expected ({az}, {el})"
    print(f"Chapman FuMa positions: {len(errs)} bursts, max error {max(errs):.2f} deg, median {np.median(errs):.2f} deg")
    # the same file read without the FuMa conversion must fail somewhere: the test can detect a wrong convention
    wrong = [D.angular_error_deg(*D.clip_direction(x[:, int((t - 0.6) * sr) : int((t + 0.6) * sr)], sr, cfg), az, el)
             for t, az, el in CHAPMAN if az is not None]  # fmt: skip
    assert max(wrong) > 20


def test_tau2019_cough_label(testdata_dir):
    x, sr = _decode(testdata_dir / "tau2019-seld-foa" / "split1_ir0_ov1_1.wav")
    r = D.estimate(x[:, int(0.366 * sr) :], sr, D.DirectionConfig(window_s=0.1))
    err = float(D.angular_error_deg(r.clip_azimuth_deg, r.clip_elevation_deg, -10, -10))
    print(f"TAU2019 cough: ({r.clip_azimuth_deg:.1f}, {r.clip_elevation_deg:.1f}) vs label (-10, -10): {err:.1f} deg")
    assert err <= 15.0


@pytest.mark.parametrize("name", ["JUN314mwb90_49", "pC2WmY6bkB4_251", "Wc_gzO9i38k_15"])
def test_sphere360_centre_performers(testdata_dir, name):
    """The visible performer is at the frame's centre column; the tabla player (pC2W...) sits
    below the horizon (SOURCE.md), so for it the azimuth is checked against the centre and the
    elevation against 'below the horizon' instead of the (0, 0) point."""
    x, sr = _decode(testdata_dir / "sphere360-erp-foa" / f"{name}.webm")
    r = D.estimate(x, sr)
    err = float(D.angular_error_deg(r.clip_azimuth_deg, r.clip_elevation_deg, 0, 0))
    print(f"{name}: clip direction ({r.clip_azimuth_deg:.1f}, {r.clip_elevation_deg:.1f}), {err:.1f} deg from frame centre")
    assert abs(r.clip_azimuth_deg) <= 20.0
    if name == "pC2WmY6bkB4_251":
        assert -40.0 <= r.clip_elevation_deg <= -5.0
    else:
        assert err <= 20.0


def test_sphere360_tractor_moves_right_to_left(testdata_dir):
    x, sr = _decode(testdata_dir / "sphere360-erp-foa" / "tAiVUt5vE34l_30.webm")
    r = D.estimate(x, sr, D.DirectionConfig(window_s=1.0, smooth_windows=1))
    az = r.azimuth_deg
    print("tractor per-second azimuth:", np.round(az, 1).tolist())
    assert np.all(np.diff(az) > 0), "azimuth must increase monotonically (right -> left)"
    assert abs(az[0] - (-75)) <= 15 and abs(az[-1] - 35) <= 15
    assert np.all(np.abs(r.elevation_deg) < 1e-6)  # horizontal-only FOA (Z == 0)
