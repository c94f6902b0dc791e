"""Shared test settings.

Third-party test material is read from ``BIAUDIO_TESTDATA`` (default ``../shared/testdata``
beside the checkout) and never copied into the project; tests that need it skip only when the
folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Session fixtures shared across areas live in plugin modules beside this file:
# fixtures_build.py (demo dataset built once), fixtures_model.py (a tiny trained run).
pytest_plugins = ["tests._support.build", "tests._support.model"]

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _testdata_root() -> Path:
    return Path(os.environ.get("BIAUDIO_TESTDATA", REPO.parent / "shared" / "testdata")).resolve()


@pytest.fixture(scope="session")
def testdata_dir() -> Path:
    root = _testdata_root()
    if not root.is_dir():
        pytest.skip(f"third-party test data not found at {root} (set BIAUDIO_TESTDATA)")
    return root


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots, reports): test-artifacts/."""
    d = REPO / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d
