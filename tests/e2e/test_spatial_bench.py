"""The spatial-bench world (issue 15): scenes a saliency map cannot solve, their exact truth,
the audio-visual-synchrony two-stage baseline, and ``visaudio eval`` per scene type.

The model-vs-baseline measurement on this world lives in ``benchmarks/bench_spatial.py``
(figures in the README); ``test_visaudio_wins_on_the_hard_split`` carries its result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biaudio.synth import _disc_radii, render_foa_full, render_scene
from biaudio.synth_bench import SCENE_TYPES, bench_scene_spec, scene_type_of
from visaudio.eval import baselines as B

REPO = Path(__file__).resolve().parents[2]

SIZE = (240, 120)


def _rms_env(x: np.ndarray, sr: int, fps: float, n: int) -> np.ndarray:
    hop = sr / fps
    return np.array([np.sqrt(np.mean(x[int(round(k * hop)):int(round((k + 1) * hop))] ** 2)) for k in range(n)])


@pytest.fixture(scope="module")
def bench_scenes(tmp_path_factory) -> dict[str, tuple]:
    """One small rendered scene of each type: type -> (spec, truth dict, video path)."""
    d = tmp_path_factory.mktemp("bench")
    out = {}
    for i in range(4):
        spec = bench_scene_spec(f"b{i}", seed=100 + i, index=i, duration=3.0, size=SIZE, fps=10.0, sr=16000)
        p = render_scene(spec, d)
        out[spec.scene_type] = (spec, json.loads(p.truth_json.read_text()), p.video)
    return out


def test_scene_types_round_robin() -> None:
    assert [scene_type_of(i) for i in range(8)] == list(SCENE_TYPES) * 2
    with pytest.raises(ValueError, match="unknown synth world"):
        bench_scene_spec("x", 0, 0, world="nope")


def test_truth_flags_and_geometry(bench_scenes) -> None:
    _, t, _ = bench_scenes["distractors"]
    assert t["scene_type"] == "distractors" and t["world"] == "spatial-bench" and t["texture_drift"] is False
    srcs = t["sources"]
    assert len(srcs) == 3 and [s["sounding"] for s in srcs] == [True, False, False]
    assert all(s["visible"] for s in srcs) and {s["pulse"] for s in srcs} == {"own", "decoy"}
    assert all(f["rms_db"] < -100 for s in srcs[1:] for f in s["frames"])  # distractors are silent
    _, t, _ = bench_scenes["offscreen-static"]
    amb = t["sources"][1]
    assert amb["kind"] == "rumble" and not amb["visible"] and amb["sounding"] and amb["static"]
    az = [f["azimuth_deg"] for f in amb["frames"]]
    assert np.ptp(az) == 0.0  # fixed in the world
    d = abs((amb["frames"][0]["azimuth_deg"] - t["sources"][0]["frames"][0]["azimuth_deg"] + 180) % 360 - 180)
    assert 90 <= d <= 180  # beside or behind the visible source
    assert min(f["rms_db"] for f in amb["frames"]) > -40  # continuous: heard in every frame
    _, t, _ = bench_scenes["two-timbre"]
    a, b = t["sources"]
    assert a["visible"] and not b["visible"] and a["sounding"] and b["sounding"] and a["kind"] != b["kind"]
    _, t, _ = bench_scenes["leave-view"]
    swing = np.ptp(np.unwrap(np.deg2rad([f["azimuth_deg"] for f in t["sources"][0]["frames"]])))
    assert np.rad2deg(swing) > 40  # 3 s of a ±70-100° swing (the view is 90° wide)
    assert not t["sources"][1]["sounding"] and t["sources"][1]["visible"]


def test_only_the_sounding_disc_pulses_with_the_sound(bench_scenes) -> None:
    """Synchrony, not saliency, tells the sounding disc apart: its radius follows the loudness
    of the sound heard; a distractor's follows a sound never played."""
    spec, _, _ = bench_scenes["distractors"]
    n = int(round(spec.duration * spec.fps))
    _, sigs, raws = render_foa_full(spec)
    heard = _rms_env(sigs[0], spec.sr, spec.fps, n)
    corr = [np.corrcoef(_disc_radii(s, r, spec.sr, spec.fps, n), heard)[0, 1] for s, r in zip(spec.sources, raws, strict=True)]
    assert corr[0] > 0.9, corr
    assert max(corr[1:]) < 0.6, corr
    radii = [np.ptp(_disc_radii(s, r, spec.sr, spec.fps, n)) for s, r in zip(spec.sources, raws, strict=True)]
    assert min(radii) > 2.0  # every disc pulses visibly (degrees)


def test_invisible_sources_are_not_drawn(bench_scenes) -> None:
    from biaudio.media import iter_frames

    spec, t, video = bench_scenes["offscreen-static"]
    frames = np.stack(list(iter_frames(video, size=SIZE)))
    for s in t["sources"]:
        col = np.array(s["color"])
        n = int((np.abs(frames.astype(int) - col).max(axis=-1) < 40).sum())
        assert (n > 50) == s["visible"], (s["name"], n)


def _pulse_frames(n: int = 40, W: int = 96, H: int = 54, pan_px: float = 1.0, seed: int = 0, sounding: int = 0):
    """Textured grey background panning left->right by ``pan_px`` per frame (a camera turning
    left), three saturated discs fixed in the world; disc ``sounding`` pulses with ``env``, the
    others with unrelated envelopes. Returns frames, env, the sounding disc's column per frame."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    big = ndimage.gaussian_filter(rng.random((H, 4 * W)), 2.0)
    big = (big - big.min()) / np.ptp(big) * 120 + 60
    envs = [np.clip(ndimage.gaussian_filter1d(rng.random(n), 1.5) * 3 - 1, 0, 1) for _ in range(3)]
    xs_world = [W * 1.6, W * 2.0, W * 2.4]
    yy, xx = np.mgrid[0:H, 0:W]
    frames, cols = [], []
    for k in range(n):
        off = W * 1.5 - pan_px * k  # view window start in the panorama
        img = np.repeat(big[:, int(off):int(off) + W][..., None], 3, -1)
        for j, (xw, e) in enumerate(zip(xs_world, envs, strict=True)):
            r = 3 + 5 * e[k]
            m = (xx - (xw - off)) ** 2 + (yy - H / 2) ** 2 < r**2
            img[m] = [(255, 0, 0), (0, 255, 0), (0, 0, 255)][j]
        frames.append(img.astype(np.uint8))
        cols.append(xs_world[sounding] - off)
    return np.stack(frames), envs[sounding], np.array(cols)


def test_sync_baseline_finds_the_sounding_disc_and_the_camera_turn() -> None:
    fps, sr, hfov = 10.0, 8000, 90.0
    frames, env, cols = _pulse_frames()
    n, W = len(frames), frames.shape[2]
    yaw = B.camera_yaw_from_frames(frames, hfov)
    f = (W / 2) / np.tan(np.deg2rad(hfov / 2))
    assert abs(yaw[-1] - np.rad2deg(np.arctan(1.0 / f)) * (n - 1)) < 3.0  # ~1 px/frame to the right = left turn
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(int(n / fps * sr)) * np.repeat(0.05 + env, int(sr / fps))
    d = B.sync_azimuth_from_frames(frames, fps, hfov, audio, sr)
    truth = -np.rad2deg(np.arctan((cols - W / 2) / f))
    sal = B.azimuth_from_frames(frames, fps, hfov)
    err_sync = np.median(np.abs(d.azimuth_deg - truth))
    err_sal = np.median(np.abs(sal.azimuth_deg - truth))
    assert err_sync < 6.0, (err_sync, err_sal)
    assert err_sal > 10.0 > 2 * err_sync  # saliency cannot tell the three discs apart


@pytest.fixture(scope="module")
def bench_build(tmp_path_factory) -> Path:
    """A 4-scene spatial-bench build (one of each type), every clip in the test split."""
    from biaudio.engine.run import build
    from biaudio.recipe import load_recipe

    out = tmp_path_factory.mktemp("bench-build") / "bench"
    recipe = load_recipe("spatial-bench", ["sources.0.synth.scenes=4", "sources.0.synth.duration=4.5",
                                           "sources.0.synth.size=[480,240]", "segment.max_windows=1",
                                           "split.val_fraction=0.0", "split.test_fraction=1.0"])
    s = build(recipe, out)
    assert s.exit_code == 0, s.to_dict()
    return out


def test_eval_reports_each_scene_type_with_camera_truth(bench_build, tmp_path) -> None:
    from visaudio.eval import runner as R

    cfg = R.EvalConfig(manifest_dir=bench_build, report_dir=tmp_path / "rep",
                       systems=["reference", "swapped-reference", "mono-duplicated-reference"], n_boot=50,
                       n_boot_set=10, n_audio_clips=0)
    summary = R.run(cfg)
    types = set(summary["by_scene_type"])
    assert types == set(SCENE_TYPES), types
    for t in types:
        ms = summary["by_scene_type"][t]["systems"]
        assert ms["reference"]["lat_corr_ref"]["mean"] == pytest.approx(1.0) or \
            np.isnan(ms["reference"]["lat_corr_ref"]["mean"])
    ct = pd.read_parquet(tmp_path / "rep" / "camera_truth.parquet")
    assert {"azimuth_cam_deg", "in_view", "visible", "sounding", "scene_type"} <= set(ct.columns)
    amb = ct[(ct.scene_type == "offscreen-static") & (ct.source == "s1")]
    assert len(amb) and not amb.in_view.any() and amb.sounding.all()
    # the camera-frame truth of a world-static source moves exactly against the camera yaw
    man = pd.read_parquet(bench_build / "manifest.parquet")
    row = man[man.clip_id == amb.clip_id.iloc[0]].iloc[0]
    yaw = np.interp(amb.t, [r["t"] for r in row.trajectory], [r["yaw"] for r in row.trajectory])
    rel = np.rad2deg(np.unwrap(np.deg2rad(amb.azimuth_cam_deg.to_numpy() + yaw)))
    assert np.ptp(rel) < 6.0  # pitch/roll of the camera path add a little
    per_clip = pd.read_parquet(tmp_path / "rep" / "per_clip.parquet")
    assert set(per_clip.scene_type) == set(SCENE_TYPES)
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Per scene type" in html and all(f"{t} (" in html for t in SCENE_TYPES)


# --------------------------------------------------------------------------------------------
# The win on the hard split, at the CI budget
# --------------------------------------------------------------------------------------------

WIN_SCENES, WIN_STEPS, WIN_MONO_STEPS, WIN_GEN_STEPS = 12, 120, 40, 10
WIN_METRICS = ("lat_corr_ref", "motion_consistency")
# Measured on this test's own budget (numbers in the xfail reason below); the README's table
# has the larger benchmark (benchmarks/bench_spatial.py).
WIN_XFAIL = pytest.mark.xfail(strict=True, reason=(
    "not reached at this budget (12 scenes, tiny 120 + mono 40 CPU steps, 10 Euler steps, cfg 4.5; measured "
    "2026-12-05, paired visaudio - baseline, 95 % cluster bootstrap): corr with the reference ILD +0.20 "
    "[0.06, 0.35] vs two-stage (a 40-step mono model), +0.08 [-0.25, 0.25] vs two-stage-sync; motion consistency "
    "-0.03 [-0.33, 0.28] and -0.24 [-0.49, -0.09]; ILD sign agreement -0.15 [-0.25, -0.05] and -0.26 "
    "[-0.44, -0.07] (worse). At 200 + 60 steps: corr +0.11 [-0.20, 0.40] / +0.11 [-0.28, 0.40], motion -0.04 "
    "[-0.28, 0.30] / -0.21 [-0.47, 0.17], sign -0.09 [-0.22, 0.00] / -0.24 [-0.57, -0.02]. This budget "
    "trains the shipped tiny config on 7 train scenes. The README's benchmark (both routes 300 steps on the "
    "72-scene bench's train split + the 120-scene spatial-bench-train draw; centred camera motion, attended "
    "lateral pooling, 4-s windows, cfg 7) meets every criterion with each of three seeds on the "
    "spatial-bench-confirm draw (motion consistency vs two-stage-sync +0.09 [0.02, 0.15], +0.14 [0.08, 0.21], "
    "+0.10 [0.03, 0.16]) and is no worse than tiny as shipped on the demo over three seeds. Sampled with side-noise "
    "temperature 0 (generate.side_noise) and judged once on a fifth draw (spatial-bench-fresh2), it meets every "
    "criterion for seeds 1 and 2 and for the three-seed mean; seed 0 ties two-stage-sync on motion consistency "
    "(+0.04 [-0.02, 0.10]). That budget (two builds, two 300-step trainings, 144 clips evaluated) does not fit "
    "the CI's 30 minutes."))


@pytest.fixture(scope="module")
def bench_win_report(tmp_path_factory) -> dict:
    """A 12-scene spatial-bench build; tiny binaural (WIN_STEPS) and mono (WIN_MONO_STEPS) runs
    on its train split; ``visaudio eval`` of its test split with both two-stage baselines."""
    import os

    from biaudio.engine.run import build
    from biaudio.recipe import load_recipe
    from visaudio.eval import runner as R
    from visaudio.train import train

    root = tmp_path_factory.mktemp("bench-win")
    out = root / "bench"
    # the split the measured numbers below were taken with (the recipe's own is now half test)
    s = build(load_recipe("spatial-bench", [f"sources.0.synth.scenes={WIN_SCENES}", "split.val_fraction=0.2",
                                            "split.test_fraction=0.3"]), out)
    assert s.exit_code == 0, s.to_dict()
    threads = os.environ.get("VISAUDIO_TEST_THREADS", "1")
    ov = ["train.batch_size=8", "train.val_every=100000", "train.ckpt_every=100", "train.warmup_steps=20",
          "train.lr=1e-3", "train.ema_decay=0.99", "train.tensorboard=false", f"train.num_threads={threads}"]
    train(out, "tiny", root / "bin", max_steps=WIN_STEPS, overrides=ov, progress=False)
    train(out, "tiny", root / "mono", max_steps=WIN_MONO_STEPS, overrides=ov + ["data.channels=mono"], progress=False)
    cfg = R.EvalConfig(manifest_dir=out, report_dir=root / "report", ckpt=root / "bin", mono_ckpt=root / "mono",
                       systems=["visaudio", "two-stage", "two-stage-sync", "reference"], steps=WIN_GEN_STEPS,
                       n_boot=500, n_boot_set=20, n_audio_clips=0)
    return R.run(cfg)


@WIN_XFAIL
def test_visaudio_wins_on_the_hard_split(bench_win_report) -> None:
    """ViSAudio better than every two-stage baseline on corr with the reference ILD and on
    motion consistency (paired 95 % cluster-bootstrap interval of the difference above 0), and
    not worse on ILD sign agreement (paired interval not entirely below 0)."""
    s = bench_win_report
    found = {(c["metric"], c["baseline"]): c for c in s["comparisons"]}
    summary = {f"{m}/{b}": (round(c["paired_diff_mean"], 3), [round(v, 3) for v in c["paired_diff_ci"]])
               for (m, b), c in found.items()}
    print("\n[bench win]", json.dumps(summary))
    for base in B.TWO_STAGE_SYSTEMS:
        for m in WIN_METRICS:
            assert found[(m, base)]["paired_better"], (m, base, summary)
        assert found[("ild_sign_agreement", base)]["paired_diff_ci"][1] > 0, (base, summary)


def test_centred_camera_motion_keeps_the_turn_and_drops_its_net_direction() -> None:
    """``model.camera_motion_centered``: for a steady pan the centred features keep the yaw ramp
    (the same steps as the start-referenced yaw) but every odd feature (rate, yaw, sin yaw,
    sin 2 yaw) averages to zero over the window, so the net turn is no static offset a model could
    read a side from; a pan the other way gives the negated ramp. The switch needs camera motion
    and changes the architecture hash."""
    import torch
    from scipy import ndimage

    from visaudio.config import ConfigError, load_config
    from visaudio.motion import yaw_features

    g = ndimage.gaussian_filter(np.random.default_rng(1).random((48, 240)), 2)
    g = np.repeat(((g - g.min()) / np.ptp(g) * 255)[..., None], 3, -1).astype(np.uint8)
    left = torch.from_numpy(np.stack([g[:, 60 - k: 124 - k] for k in range(24)]))[None]  # content moves right
    right = torch.from_numpy(np.stack([g[:, 60 + k: 124 + k] for k in range(24)]))[None]
    start, cen = yaw_features(left)[0], yaw_features(left, centered=True)[0]
    assert start[-1, 1] > 0.3  # a clear left turn, referenced to the first frame: a positive offset
    assert torch.allclose(cen[:, 1] - cen[0, 1], start[:, 1] - start[0, 1], atol=1e-5)
    odd = [0, 1, 2, 4]
    assert cen[:, odd].mean(0).abs().max() < 1e-3, cen[:, odd].mean(0)
    assert start[:, odd].mean(0).abs().min() > 0.05, start[:, odd].mean(0)
    cr = yaw_features(right, centered=True)[0]
    assert torch.allclose(cr[:, 1], -cen[:, 1], atol=0.01), (cr[:, 1], cen[:, 1])
    with pytest.raises(ConfigError, match="camera_motion_centered"):
        load_config("tiny", ["model.camera_motion_centered=true"])
    on = ["model.camera_motion=true"]
    assert load_config("tiny", on).arch_hash() != load_config("tiny", on + ["model.camera_motion_centered=true"]).arch_hash()


def test_camera_yaw_estimate_follows_the_camera_not_the_demos_drifting_texture(demo_build: Path) -> None:
    """The demo's background texture turns by itself (4 px per frame of the 960-px equirect at 15 fps:
    90 degrees over a 4-s clip) while its grid, labels and discs stay fixed in the world. The
    model's camera-yaw estimate (``model.camera_motion``, at the tiny config's 64x48 and 16 fps) must
    follow the camera's trajectory, not the texture: were it fooled, every clip's end yaw would be off
    by about +90 degrees. Measured on the demo's 32 clips: mean end error +2.6 degrees, median
    |error| 9.4 (noisy at 64 px), correlation with the true end yaw 0.69. The synchrony two-stage's
    estimate (96 px, 10 fps) likewise: +2.2, 3.5, 0.93."""
    import torch

    from biaudio.media.video import iter_frames
    from biaudio.spatial.angles import unwrap_deg
    from visaudio.motion import yaw_features

    est, est_sync, true, true_sync = [], [], [], []
    for r in pd.read_parquet(demo_build / "manifest.parquet").itertuples():
        tr = unwrap_deg([p["yaw"] for p in r.trajectory])
        ts = [p["t"] for p in r.trajectory]
        fr = np.stack(list(iter_frames(demo_build / r.video_path, size=(64, 48), fps=16.0)))
        est.append(float(np.degrees(yaw_features(torch.from_numpy(fr)[None])[0, -1, 1])))
        true.append(np.interp((len(fr) - 1) / 16.0, ts, tr) - tr[0])
        fr = np.stack(list(iter_frames(demo_build / r.video_path, size=(96, 54), fps=10.0)))
        est_sync.append(B.camera_yaw_from_frames(fr, r.hfov_deg)[-1])
        true_sync.append(np.interp((len(fr) - 1) / 10.0, ts, tr) - tr[0])
    for e, t, min_corr in ((est, true, 0.5), (est_sync, true_sync, 0.8)):
        e, t = np.array(e), np.array(t)
        assert len(e) >= 20 and np.percentile(np.abs(t), 75) > 10.0, t  # the cameras do turn
        assert abs(np.mean(e - t)) < 10.0, (e - t)
        assert np.corrcoef(e, t)[0, 1] > min_corr, (e, t)


def test_camera_motion_condition_measures_the_pan() -> None:
    """``model.camera_motion``: the measured shift of a panning textured picture, and a zero
    contribution before training (the switch must not change an untrained model)."""
    import torch
    from scipy import ndimage

    from visaudio.config import load_config
    from visaudio.model import ViSAudio
    from visaudio.motion import horizontal_shifts

    g = ndimage.gaussian_filter(np.random.default_rng(0).random((48, 200)), 2)
    g = np.repeat(((g - g.min()) / np.ptp(g) * 255)[..., None], 3, -1).astype(np.uint8)
    seq = np.stack([g[:, 20 - k: 84 - k] for k in range(6)])  # the view moves left: content moves right 1 px
    dx = horizontal_shifts(torch.from_numpy(seq)[None])[0]
    assert dx[0] == 0 and torch.allclose(dx[1:], torch.ones(5), atol=0.05), dx
    torch.manual_seed(0)
    on = ViSAudio(load_config("tiny", ["model.camera_motion=true"]), 642)
    torch.manual_seed(0)
    off = ViSAudio(load_config("tiny"), 642)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("camera_motion.")})
    frames = torch.from_numpy(np.stack([np.resize(seq[k % 6], (48, 64, 3)) for k in range(32)]))[None]
    a, b = on.encode_conditions(frames, [None]), off.encode_conditions(frames, [None])
    assert torch.equal(a.spacetime, b.spacetime)
    assert load_config("tiny").arch_hash() != load_config("tiny", ["model.camera_motion=true"]).arch_hash()


def test_paired_seeds_averages_each_setting_over_its_seeds_before_pairing(tmp_path: Path) -> None:
    """``benchmarks/paired_seeds.py``: per clip, each setting's metric is its mean over the seeds'
    reports; the paired difference is the mean of those per-clip differences. Two seeds of A at
    1.0 and 0.0 on one clip average to 0.5; B's single report sets the other side."""
    import importlib.util

    from biaudio.manifest import write_frame

    spec = importlib.util.spec_from_file_location("paired_seeds", REPO / "benchmarks" / "paired_seeds.py")
    ps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ps)

    def report(name: str, sign: list[float]) -> Path:
        d = tmp_path / name
        d.mkdir()
        n = len(sign)
        write_frame(pd.DataFrame({"clip_id": [f"c{i}" for i in range(n)], "system": "visaudio",
                                  "source_id": [f"s{i // 2}" for i in range(n)], "ild_sign_agreement": sign,
                                  "lat_corr_ref": [0.1] * n, "motion_consistency": [0.0] * n}), d / "per_clip.parquet")
        return d

    a0, a1 = report("a0", [1.0, 1.0, 1.0, 1.0]), report("a1", [0.0, 1.0, 1.0, 1.0])
    b = report("b", [0.5, 0.5, 0.5, 0.5])
    out = ps.main(["--a", str(a0), str(a1), "--b", str(b), "--n-boot", "200"])
    assert out["n_clips"] == 4 and out["n_scenes"] == 2
    assert out["a"]["ild_sign_agreement"] == 0.875 and [s["ild_sign_agreement"] for s in out["a"]["seeds"]] == [1.0, 0.75]
    assert out["paired"]["ild_sign_agreement"]["diff"] == 0.375
    lo, hi = out["paired"]["ild_sign_agreement"]["ci"]
    assert 0.0 < lo <= 0.375 <= hi <= 0.5
    assert out["paired"]["lat_corr_ref"]["diff"] == 0.0
