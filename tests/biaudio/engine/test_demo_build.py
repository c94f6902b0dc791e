"""The real demo build (engine + real stages, fixture ``demo_build``): it validates, every reader
reads it, the splits are usable, and its directions / binaural audio agree with the synthetic
ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import soundfile as sf

from biaudio.engine.run import build
from biaudio.recipe import load_recipe
from biaudio.spatial.angles import dir_to_vec, world_to_camera_dir
from biaudio.synth import load_truth


def _truth(out: Path, source_id: str) -> dict:
    (path,) = list((out / "sources").glob(f"synth-*/{source_id}.json"))
    return load_truth(path)


def _dominant(truth: dict, t: float, margin_db: float = 6.0) -> tuple[float, float] | None:
    """(az, el) of the clearly loudest source at source time t, or None when none is clear."""
    fr = int(round(t * truth["fps"]))
    levels = []
    for s in truth["sources"]:
        f = s["frames"][min(fr, len(s["frames"]) - 1)]
        levels.append((f.get("rms_db", 0.0), f["azimuth_deg"], f["elevation_deg"]))
    levels.sort(reverse=True)
    if levels[0][0] < -60 or (len(levels) > 1 and levels[0][0] - levels[1][0] < margin_db):
        return None
    return levels[0][1], levels[0][2]


def test_demo_build_validates_and_reads_everywhere(demo_build):
    out = demo_build
    r = subprocess.run([sys.executable, "-m", "biaudio.cli", "validate", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)
    rep = json.loads(r.stdout)
    assert r.returncode == 0, rep["problems"][:10]
    assert rep["n_clips"] >= 24 and rep["n_files_checked"] == 2 * rep["n_clips"]

    df = pd.read_parquet(out / "manifest.parquet")
    t = pq.read_table(out / "manifest.parquet")
    n_duck = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{out / 'manifest.parquet'}')").fetchone()[0]
    assert len(df) == t.num_rows == n_duck == rep["n_clips"]
    # splits: all non-empty, >= 4 test sources, no source in two splits
    per_src = df.groupby("source_id")["split"].nunique()
    assert (per_src == 1).all()
    assert (df.groupby("group_id")["split"].nunique() == 1).all()
    assert (df["group_id"] == df["source_id"]).all()  # every synthetic scene is its own video
    assert df["section_start_s"].isna().all()  # whole videos: start_s is the time in the scene file
    src_split = df.groupby("split")["source_id"].nunique()
    assert set(src_split.index) == {"train", "val", "test"} and src_split["test"] >= 4
    assert (df["qa_status"] == "pending").all()
    assert (df["num_frames"] == df["trajectory"].map(len)).all()
    st = json.loads((out / "stats.json").read_text())
    assert st["clips"]["kept"] == len(df) and st["items"]["pending"] == 0


def test_demo_directions_match_ground_truth(demo_build):
    df = pd.read_parquet(demo_build / "manifest.parquet")
    errors = []
    for _, row in df.iterrows():
        truth = _truth(demo_build, row["source_id"])
        for w in row["window_directions"]:
            dom = _dominant(truth, row["start_s"] + w["t"])
            if dom is None:
                continue
            a, b = dir_to_vec(w["azimuth_deg"], w["elevation_deg"]), dir_to_vec(*dom)
            errors.append(np.degrees(np.arccos(np.clip(float(np.dot(a, b)), -1, 1))))
    assert len(errors) > 100
    assert np.median(errors) <= 5.0, f"median per-window direction error {np.median(errors):.2f} deg"


def test_demo_binaural_ild_follows_the_source_side_in_camera_coordinates(demo_build):
    df = pd.read_parquet(demo_build / "manifest.parquet")
    agree = total = 0
    for _, row in df.iterrows():
        truth = _truth(demo_build, row["source_id"])
        audio, sr = sf.read(demo_build / row["audio_path"], always_2d=True)
        left, right = audio[:, 0], audio[:, 1]
        traj = row["trajectory"]
        hop = int(round(sr / row["fps"]))
        energy = np.array([np.sum(audio[i * hop:(i + 1) * hop] ** 2) for i in range(len(traj))])
        loud = energy > energy.max() * 10 ** (-20 / 10)
        for i, p in enumerate(traj):
            dom = _dominant(truth, row["start_s"] + p["t"])
            if dom is None or not loud[i]:
                continue
            az_cam, _ = world_to_camera_dir(dom[0], dom[1], p["yaw"], p["pitch"], p["roll"])
            if not 20 <= abs(float(az_cam)) <= 160:  # near the median plane the side is ambiguous
                continue
            sl = slice(i * hop, (i + 1) * hop)
            ild = 10 * np.log10((np.sum(left[sl] ** 2) + 1e-12) / (np.sum(right[sl] ** 2) + 1e-12))
            agree += (ild > 0) == (float(az_cam) > 0)  # +az = left
            total += 1
    assert total > 200
    assert agree / total >= 0.9, f"ILD sign matches the source side in {agree}/{total} loud frames"


def test_demo_rerun_does_nothing(demo_build):
    before = (demo_build / "manifest.parquet").read_bytes()
    s = build(load_recipe("demo"), demo_build)
    assert s.exit_code == 0 and s.processed == []
    assert (demo_build / "manifest.parquet").read_bytes() == before


def test_ray_executor_with_the_real_stages_matches_the_local_demo(demo_build, tmp_path):
    """Two demo scenes built by Ray tasks (a real local Ray cluster) give the same clip ids and the
    same per-frame trajectories as the process-pool demo build."""
    out = tmp_path / "ray"
    recipe = load_recipe("demo", ["sources.0.synth.scenes=2", "execution.executor=ray", "execution.workers=2"])
    s = build(recipe, out)
    assert s.exit_code == 0, s.to_dict()
    ray_df = pd.read_parquet(out / "manifest.parquet")
    local = pd.read_parquet(demo_build / "manifest.parquet")
    local = local[local["source_id"].isin(["scene_0000", "scene_0001"])]
    assert list(ray_df["clip_id"]) == list(local["clip_id"]) and len(ray_df) >= 2
    for a, b in zip(ray_df["trajectory"], local["trajectory"], strict=True):
        assert [dict(p) for p in a] == [dict(p) for p in b]
    assert json.loads((out / "stats.json").read_text())["last_run"]["executor"] == "ray"
