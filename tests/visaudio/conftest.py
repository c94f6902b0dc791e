"""Fixtures shared by the visaudio test folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._support.model import make_toy_manifest


@pytest.fixture(scope="session")
def toy_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small hand-made manifest (see :func:`tests._support.model.make_toy_manifest`), made once."""
    return make_toy_manifest(tmp_path_factory.mktemp("toy") / "toy")
