"""Peak limiting, written once (``biaudio.media.audio.peak_gain`` / ``limit_peak``) for the synthetic
scenes, the clip render, generation, the eval report's listening copies and ``biaudio core``."""

from __future__ import annotations

import numpy as np

from biaudio.media.audio import limit_peak, peak_gain


def test_gain_brings_the_peak_to_the_limit_and_keeps_the_ratio():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1000)).astype(np.float32) * 3
    peak = float(np.max(np.abs(x)))
    g = peak_gain(x, 0.9)
    assert g == 0.9 / peak  # the builds' arithmetic exactly (float64 division), so their bytes do not move
    y = limit_peak(x, 0.9)
    assert y.dtype == np.float32 and abs(float(np.max(np.abs(y))) - 0.9) < 1e-6
    np.testing.assert_allclose(y[0] / y[1], x[0] / x[1], rtol=1e-5)  # one global gain: L/R ratio unchanged
    # a separate target: above 1.0 -> down to 0.99 (generation's rule)
    assert peak_gain(x, 1.0, target=0.99) == 0.99 / peak


def test_under_the_limit_is_untouched():
    x = np.array([[0.5, -0.89], [0.1, 0.0]])
    assert peak_gain(x, 0.9) == 1.0
    assert limit_peak(x, 0.9) is x  # not even a copy: the exact bytes survive
    assert peak_gain(np.zeros((2, 0)), 0.9) == 1.0  # empty
    assert peak_gain(np.array([-0.9]), 0.9) == 1.0  # at the limit is not over it
    assert peak_gain(np.array([-1.8]), 0.9) == 0.5  # a negative peak counts
