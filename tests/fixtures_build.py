"""Session fixtures of the build area, shared with other areas (review, model, eval).

``demo_build``: the built-in demo recipe (synthetic scenes, no network) built ONCE per test
session; returns the output folder (``manifest.parquet``, ``clips/``, ``previews/``...). Set
``BIAUDIO_DEMO_BUILD_DIR`` to keep it in a fixed folder between sessions: the build resumes, so
a second session reuses the finished items (a changed recipe or stage code with a changed recipe
hash rebuilds them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def run_demo_build(out_dir: Path, overrides: tuple[str, ...] = ()) -> Path:
    """Build the demo recipe into ``out_dir`` in-process (engine + real stages); raise on failure."""
    from biaudio.engine.run import build
    from biaudio.recipe import load_recipe

    recipe = load_recipe("demo", overrides)
    summary = build(recipe, out_dir)
    if summary.exit_code != 0:
        raise RuntimeError(f"demo build failed: {summary.to_dict()}")
    return Path(out_dir)


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset, built once per session (~30 clips, train/val/test all non-empty)."""
    fixed = os.environ.get("BIAUDIO_DEMO_BUILD_DIR")
    out = Path(fixed) if fixed else tmp_path_factory.mktemp("demo-build") / "demo"
    return run_demo_build(out)
