"""Settings and session fixtures shared by every test folder (see tests/README.md for the layout).

Third-party test material is read from ``BIAUDIO_TESTDATA`` (default ``../shared/testdata``
beside the checkout) and never copied into the project; tests that need it skip only when the
folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._support.build import run_demo_build
from tests._support.model import TINY_OVERRIDES, TINY_STEPS, tiny_run_dir

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


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo recipe (synthetic scenes, no network) built ONCE per session (~30 clips,
    train/val/test all non-empty); the output folder (``manifest.parquet``, ``clips/``,
    ``previews/``...). Used by the engine, review, visaudio and e2e folders. Set
    ``BIAUDIO_DEMO_BUILD_DIR`` to keep it in a fixed folder between sessions: the build resumes, so a
    second session reuses the finished items (a changed recipe hash rebuilds them)."""
    fixed = os.environ.get("BIAUDIO_DEMO_BUILD_DIR")
    out = Path(fixed) if fixed else tmp_path_factory.mktemp("demo-build") / "demo"
    return run_demo_build(out)


@pytest.fixture(scope="session")
def tiny_run(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny config trained ONCE per session on the demo build for TINY_STEPS steps (batch 8); the
    run dir (used by visaudio/eval and e2e)."""
    from visaudio.train import train

    run = tiny_run_dir(tmp_path_factory, "tiny_run")
    s = train(demo_build, "tiny", run, max_steps=TINY_STEPS, overrides=TINY_OVERRIDES, progress=False)
    print(f"\n[tiny_run] steps {s['steps']} first loss {s['first_loss']} last loss {s['last_loss']} "
          f"samples/s {s['samples_per_s']}")
    return run
