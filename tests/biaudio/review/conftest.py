"""Fixtures of the review tests: a small OUT folder (4 clips, real media, manifest v1) made once
per module, and a fresh copy of it per test so one test's decisions never leak into another."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.biaudio.review.support import build_mini_out


@pytest.fixture(scope="module")
def mini_template(tmp_path_factory) -> Path:
    return build_mini_out(tmp_path_factory.mktemp("mini") / "OUT", n=4)


@pytest.fixture
def mini_out(mini_template, tmp_path) -> Path:
    out = tmp_path / "OUT"
    shutil.copytree(mini_template, out)
    return out
