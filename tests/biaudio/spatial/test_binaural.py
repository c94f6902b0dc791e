"""HRIR loading, FOA -> binaural decoders (KEMAR from slab, KU100 SOFA, Omnitone reference), speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from biaudio.errors import BiaudioError
from biaudio.spatial import decoders as dc
from biaudio.spatial import foa
from biaudio.spatial.binaural import render_binaural
from biaudio.spatial.hrir import load_hrir

SR = 48000
KU100 = "sofa-hrtf/FHK_HRIR_L2354.sofa"


def _noise(n=SR // 2, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_kemar_loads_without_portaudio_and_is_resampled():
    h = load_hrir("kemar", SR)
    assert h.ir.shape[0] == 710 and h.ir.shape[1] == 2
    assert h.sr == SR and abs(h.ir.shape[2] - round(512 * SR / 44100)) <= 1  # 44.1 kHz -> 48 kHz
    assert h.el_deg.min() == pytest.approx(-40.0)
    i = h.nearest(90, 0)
    ild = 10 * np.log10(np.sum(h.ir[i, 0] ** 2) / np.sum(h.ir[i, 1] ** 2))
    assert ild > 8  # channel 0 is the left ear: louder for a source on the left
    assert load_hrir("kemar", 44100).ir.shape[2] == 512


def test_sofa_loads(testdata_dir):
    h = load_hrir(testdata_dir / KU100, SR)
    assert h.ir.shape == (2354, 2, 128) and h.sr == SR
    assert h.el_deg.min() < -85 and h.el_deg.max() > 85
    i = h.nearest(90, 0)
    assert 10 * np.log10(np.sum(h.ir[i, 0] ** 2) / np.sum(h.ir[i, 1] ** 2)) > 8
    h44 = load_hrir(testdata_dir / KU100, 44100)
    assert h44.ir.shape[2] == round(128 * 44100 / 48000)
    with pytest.raises(BiaudioError) as e:
        load_hrir(testdata_dir / "nope.sofa", SR)
    assert e.value.reason == "unknown_hrtf"


def _decoders(testdata_dir):
    out = [dc.get_decoder("kemar", k, SR) for k in ("magls", "cube")]
    if testdata_dir is not None:
        out += [dc.get_decoder(str(testdata_dir / KU100), k, SR) for k in ("magls", "cube")]
    return out


def test_decoders_ild_side_and_symmetry(testdata_dir):
    s = _noise()
    for d in _decoders(testdata_dir):
        assert d.filters.shape[:2] == (2, 4)
        ild = {az: dc.ild_db(d.decode(foa.encode(s, az, 0))) for az in (90, -90, 45, -45)}
        print(f"{d.name}: ILD +90 {ild[90]:.1f} dB, -90 {ild[-90]:.1f} dB, +45 {ild[45]:.1f} dB")
        assert ild[90] >= 4.0 and ild[-90] <= -4.0
        assert ild[45] > 1.0 and ild[-45] < -1.0
        for az, el in ((0, 0), (180, 0), (0, 45), (0, -30)):
            y = d.decode(foa.encode(s, az, el))
            np.testing.assert_allclose(y[0], y[1], atol=1e-6 * np.abs(y).max())  # L ≡ R on the median plane
    assert dc.get_decoder("kemar", "magls", SR) is dc.get_decoder("kemar", "magls", SR)  # cached


def test_compare_with_omnitone(testdata_dir):
    omni = dc.load_omnitone(testdata_dir / "omnitone-sh-hrir" / "sh_hrir_order_1.wav", SR)
    assert omni.filters.shape == (2, 4, 256)
    np.testing.assert_array_equal(omni.filters[1, 1], -omni.filters[0, 1])  # R = L with Y negated
    s = _noise()
    assert dc.ild_db(omni.decode(foa.encode(s, 90, 0))) > 4
    az = np.array([0, 30, 90, -90, 135, 180, 45, 0, 0])
    el = np.array([0, 0, 0, 0, 0, 0, 35, 60, -35])
    print("log-spectral distance to Omnitone (dB, mean of both ears), directions (az, el):", list(zip(az.tolist(), el.tolist(), strict=True)))
    for d in _decoders(testdata_dir):
        lsd = dc.log_spectral_distance(d, omni, az, el).mean(axis=1)
        print(f"  {d.name:32s}", " ".join(f"{v:5.2f}" for v in lsd), f"| mean {lsd.mean():.2f}")
        assert np.all(np.isfinite(lsd))
        assert lsd.mean() < 10.0 and lsd.max() < 15.0
    # the distance can tell decoders apart: a decoder with swapped ears is far from Omnitone
    bad = dc.BinauralDecoder(omni.filters[::-1].copy(), SR, "swapped")
    assert dc.log_spectral_distance(bad, omni, np.array([90.0]), np.array([0.0])).mean() > 5.0


def test_decode_matches_direct_convolution_and_is_fast():
    from scipy.signal import fftconvolve

    d = dc.get_decoder("kemar", "magls", SR)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 10 * SR)).astype(np.float32)
    d.decode(x[:, :1000])  # warm the filter spectra cache
    # CPU time of this process (one core: FFTs run with workers=1), so that other jobs sharing the
    # machine do not make the check flaky; wall time is printed alongside
    ts, walls = [], []
    for _ in range(3):
        c0, w0 = time.process_time(), time.perf_counter()
        y = d.decode(x)
        ts.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    ref = sum(fftconvolve(x[n, : 3 * SR].astype(np.float64), d.filters[1, n])[: 3 * SR] for n in range(4))
    np.testing.assert_allclose(y[1, : 3 * SR], ref, atol=1e-4 * np.abs(ref).max())
    c0 = time.process_time()
    render_binaural(x, SR, np.arange(301) / 30.0, np.linspace(0, 90, 301), np.zeros(301), np.zeros(301), d)
    t_full = time.process_time() - c0
    print(
        f"FOA->binaural decode 10 s @ 48 kHz: {1000 * min(ts):.1f} ms CPU ({1000 * min(walls):.1f} ms wall), "
        f"best of 3; rotate+decode {1000 * t_full:.1f} ms CPU"
    )
    assert min(ts) < 0.1
    assert t_full < 0.3  # rotation adds a few element-wise passes, no per-frame convolution


def test_bad_decoder_input():
    d = dc.get_decoder("kemar", "cube", SR)
    with pytest.raises(BiaudioError) as e:
        d.decode(np.zeros((2, 100), np.float32))
    assert e.value.reason == "not_4_channels"
    with pytest.raises(BiaudioError):
        dc.get_decoder("kemar", "vbap", SR)
    with pytest.raises(BiaudioError):
        load_hrir("not-a-set", SR)
