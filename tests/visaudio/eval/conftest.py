"""Fixtures of the eval tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._support.model import TINY_OVERRIDES, TINY_STEPS, tiny_run_dir


@pytest.fixture(scope="session")
def tiny_mono_run(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mono baseline: tiny trained on the mid channel (L+R)/2 as both targets, fewer steps."""
    from visaudio.train import train

    run = tiny_run_dir(tmp_path_factory, "tiny_mono_run")
    train(demo_build, "tiny", run, max_steps=max(50, TINY_STEPS // 3),
          overrides=TINY_OVERRIDES + ["data.channels=mono"], progress=False)
    return run
