"""Metrics on synthetic signals with known answers (no model, no dataset: fast)."""

from __future__ import annotations

import numpy as np
import pytest

from visaudio.eval import metrics as M

SR = 16000


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def _frac_delay(x: np.ndarray, d: float) -> np.ndarray:
    """Delay by d samples (fractional allowed) with an exact frequency-domain phase ramp."""
    n = len(x)
    X = np.fft.rfft(x)
    k = np.arange(len(X))
    return np.fft.irfft(X * np.exp(-2j * np.pi * k * d / n), n)


@pytest.mark.parametrize("d", [0.0, 1.0, -3.0, 2.5, -0.25, 7.375, 12.0, -15.6])
def test_itd_from_delay(d: float) -> None:
    x = _noise(SR // 2)
    left, right = x, _frac_delay(x, d)  # right delayed by d: left leads for d > 0
    tau = M.gcc_phat(left, right, SR, max_tau=1e-3, upsample=16)
    assert abs(tau * SR - d) <= 1 / 8, (tau * SR, d)
    # band-limited to where binaural ITD lives: still sub-sample accurate
    tau_b = M.gcc_phat(left, right, SR, max_tau=1e-3, upsample=16, band_hz=(100, 1500))
    assert abs(tau_b * SR - d) <= 1 / 8, (tau_b * SR, d)


@pytest.mark.parametrize("fs", [16000, 48000])
def test_itd_other_rate_and_sign(fs: int) -> None:
    x = _noise(fs // 2, 3)
    d = 10.4
    tau = M.itd_seconds(np.stack([_frac_delay(x, d), x]), fs)  # left delayed: right leads
    assert abs(tau * fs + d) <= 1 / 8
    # delays beyond 1 ms are outside the physiological range and get clipped
    far = M.itd_seconds(np.stack([x, _frac_delay(x, 0.003 * fs)]), fs)
    assert abs(far) <= 1e-3 + 1e-9


@pytest.mark.parametrize("g", [0.25, 0.5, 1.0, 2.0, 3.7])
def test_ild_from_gain(g: float) -> None:
    x = _noise(SR, 1)
    sig = np.stack([g * x, x])
    assert M.ild_db(sig) == pytest.approx(20 * np.log10(g), abs=1e-6)
    fr = M.frame_ild(sig)
    assert np.allclose(fr, 20 * np.log10(g), atol=1e-6)
    # per-bin ILD error of a gain-g signal against a centred one is 20 log10 g in every band
    ref = M.prepare(np.stack([x, x]), SR)
    est = M.prepare(sig, SR)
    m = M.reference_metrics(est, ref)
    assert m["ild_error_db"] == pytest.approx(abs(20 * np.log10(g)), abs=1e-3)
    assert m["ild_frame_error_db"] == pytest.approx(abs(20 * np.log10(g)), abs=1e-3)
    for lo, hi in M.DEFAULT.ild_bands_hz:
        assert m[f"ild_error_band_{int(lo)}_{int(hi)}_db"] == pytest.approx(abs(20 * np.log10(g)), abs=1e-3)


def _moving_scene(seconds: float = 4.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A world-static noise source seen by a camera that yaws +-60 deg: ITD+ILD panned binaural.

    Returns (binaural (2,T), camera yaw at each ILD frame, sin(az_cam) at each ILD frame).
    """
    from visaudio.eval.baselines import itd_ild_pan

    n = int(seconds * SR)
    t = np.arange(n) / SR
    yaw = 60 * np.sin(2 * np.pi * t / seconds)  # camera turns left then right
    az_cam = 20.0 - yaw  # source at world azimuth +20 deg
    # amplitude-modulated noise: realistic level fluctuations
    x = _noise(n, seed) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    b = itd_ild_pan(x, SR, az_cam)
    _, tf = M.frames(b)
    yaw_f = np.interp(tf, t, yaw)
    lat_f = np.sin(np.deg2rad(np.interp(tf, t, az_cam)))
    return b, yaw_f, lat_f


def test_identical_inputs_zero_distances() -> None:
    b, yaw, lat = _moving_scene()
    ref = M.prepare(b, SR)
    m = M.reference_metrics(ref, ref, ctx=M.Context(lat, yaw))
    for k in ["stft_distance", "env_distance", "mag_distance", "phase_distance", "ild_error_db",
              "ild_frame_error_db", "ipd_error_rad", "itd_error_us", "coherence_error", "width_error_db"]:
        assert m[k] == pytest.approx(0.0, abs=1e-9), k
    assert m["snr_db"] >= 100.0
    assert m["lat_corr_ref"] == pytest.approx(1.0)
    assert m["ild_sign_agreement"] == 1.0
    # the panned reference follows the geometry it was rendered from
    assert m["lat_corr_az"] > 0.9
    assert m["motion_consistency"] > 0.5
    assert m["mono_collapse"] == 0.0


def test_swap_hurts_direction_metrics_only() -> None:
    b, yaw, lat = _moving_scene(seed=2)
    ref = M.prepare(b, SR)
    ctx = M.Context(lat, yaw)
    good = M.reference_metrics(ref, ref, ctx=ctx)
    bad = M.reference_metrics(ref[::-1].copy(), ref, ctx=ctx)
    for k in M.DIRECTION_SENSITIVE:
        hib = M.METRICS[k][0]
        if hib:
            margin = 0.5 if k in {"lat_corr_ref", "lat_corr_az", "motion_consistency", "ild_sign_agreement"} else 5.0
            assert bad[k] < good[k] - margin, (k, good[k], bad[k])
        else:
            assert bad[k] > good[k] + 1e-3 and bad[k] > 0.05, (k, good[k], bad[k])
    assert bad["lat_corr_ref"] < -0.9 and bad["ild_sign_agreement"] == 0.0
    # coherence and width do not know left from right
    assert bad["coherence_error"] == pytest.approx(0.0, abs=1e-9)
    assert bad["width_error_db"] == pytest.approx(0.0, abs=1e-9)
    assert bad["width_db"] == pytest.approx(good["width_db"], abs=1e-9)


def test_mono_collapse_and_width() -> None:
    b, _, _ = _moving_scene(seed=4)
    ref = M.prepare(b, SR)
    mono = np.repeat(ref.mean(axis=0, keepdims=True), 2, axis=0)
    m = M.reference_metrics(mono, ref)
    assert m["mono_collapse"] == 1.0
    assert m["ild_frame_error_db"] > 1.0
    # a constant ILD follows nothing: correlation 0 (not NaN, which would drop the clip), and
    # its 0 dB sign is a coin toss
    assert m["lat_corr_ref"] == 0.0
    assert m["ild_sign_agreement"] == 0.5
    assert M.width_db(ref) > m["width_db"] + 20


def test_prepare_normalises_without_touching_ild() -> None:
    x = _noise(48000, 5)
    sig = np.stack([0.3 * x, 0.1 * x])
    p = M.prepare(sig, 48000)
    assert p.shape == (2, 16000)
    assert np.sqrt(np.mean(p**2)) == pytest.approx(M.DEFAULT.target_rms, rel=1e-6)
    assert M.ild_db(p) == pytest.approx(20 * np.log10(3), abs=0.05)
    with pytest.raises(ValueError):
        M.prepare(x, 48000)


def test_fd_logmel() -> None:
    a = [M.logmel_features(M.prepare(np.stack([_noise(SR, i), _noise(SR, i + 10)]), SR)) for i in range(3)]
    assert M.fd_logmel(a, a) == pytest.approx(0.0, abs=1e-4)
    # a quieter right ear is a different distribution of (left, right) log-mel frames
    b = [M.logmel_features(M.prepare(np.stack([_noise(SR, i), 0.1 * _noise(SR, i + 10)]), SR)) for i in range(3)]
    assert M.fd_logmel(b, a) > 10 * (M.fd_logmel(a, a) + 1e-3)
