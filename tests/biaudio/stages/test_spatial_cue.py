"""Spatial-cue filter: formula properties (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from biaudio.errors import BiaudioError
from biaudio.stages.spatial_cue import SpatialCueConfig, check, lr_difference


def test_lr_difference_formula_properties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4800)
    assert lr_difference(np.stack([x, x])) == 0.0
    assert lr_difference(np.stack([x, np.zeros_like(x)])) == pytest.approx(1.0)
    assert lr_difference(np.stack([x, -x])) == pytest.approx(1.0)
    b = np.stack([x, 0.5 * x])
    assert lr_difference(b) == pytest.approx(0.5 / 1.5)
    assert lr_difference(10 * b) == pytest.approx(lr_difference(b))  # scale-free
    assert lr_difference(np.zeros((2, 100))) == 0.0
    with pytest.raises(BiaudioError):
        lr_difference(np.zeros((4, 10)))


def test_check_threshold():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4800)
    same = np.stack([x, x * 1.001])
    d, reason, detail = check(same, SpatialCueConfig())
    assert d < 0.01 and reason == "no_spatial_cue" and "||L-R||2" in detail
    d, reason, _ = check(np.stack([x, 0.8 * x]), SpatialCueConfig())
    assert d > 0.01 and reason is None
