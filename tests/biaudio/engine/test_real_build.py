"""The paper recipe through the engine: its Sphere360 id list resolves offline (dry run), and a
real Sphere360 clip (local file) builds end to end into a folder `biaudio validate` accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from biaudio.cli import app


def test_paper_recipe_dry_run_lists_the_sphere360_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the packaged recipe finds its source list in the checkout
    res = CliRunner().invoke(app, ["build", "biaudio", "--out", str(tmp_path / "o"), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)["planned"]
    assert {p["item_id"] for p in plan} == {"JUN314mwb90_49", "pC2WmY6bkB4_251", "Wc_gzO9i38k_15",
                                            "0B7ds6NmVBQl_20", "tAiVUt5vE34l_30"}
    assert all(p["action"] == "run" for p in plan) and not (tmp_path / "o").exists()


@pytest.mark.testdata
def test_real_sphere360_clip_builds_and_validates(testdata_dir: Path, tmp_path: Path):
    clip = testdata_dir / "sphere360-erp-foa" / "0B7ds6NmVBQl_20.webm"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "biaudio.cli", "build", "biaudio", "--out", str(out), "--json",
           "--set", f"sources=[{clip}]", "--set", "render.width=320", "--set", "render.height=180",
           "--set", "clean.speech.enabled=false", "--workers", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df = pd.read_parquet(out / "manifest.parquet")
    rej = pd.read_parquet(out / "rejects.parquet")
    assert len(df) >= 1, rej.to_dict("records")
    row = df.iloc[0]
    assert row["source_id"].startswith("0B7ds6NmVBQl_20") and row["duration_s"] == 8.0  # the paper's window
    assert (row["width"], row["height"], row["hfov_deg"]) == (320, 180, 90.0)
    assert row["foa_convention"] == "ambix" and row["decoder"] == "magls" and row["lr_difference"] >= 0.01
    v = subprocess.run([sys.executable, "-m", "biaudio.cli", "validate", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert v.returncode == 0, v.stdout
