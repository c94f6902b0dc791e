"""`visaudio eval` end to end.

Two layers: (1) a tiny hand-made manifest (3 test clips, a bright moving blob and a binaural
rendering that follows it) with a stand-in Synthesizer, so the runner, cache, statistics, CLI and
report are tested whatever the model's state; (2) the real thing on the demo dataset's test split
with the tiny trained runs (fixtures ``demo_build``, ``tiny_run``, ``tiny_mono_run``), skipped only
while those fixtures do not exist.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from visaudio.eval import baselines as B
from visaudio.eval import metrics as M
from visaudio.eval import runner as R

SR = 16000
FPS = 10
W, H = 96, 48
HFOV = 90.0
DUR = 3.0


def _blob_azimuth(t: np.ndarray, phase: float) -> np.ndarray:
    """Camera-frame azimuth of the blob: sweeps +-35 degrees."""
    return 35.0 * np.sin(2 * np.pi * t / DUR + phase)


def _az_to_col(az: np.ndarray) -> np.ndarray:
    cx = W / 2
    return cx - cx * np.tan(np.deg2rad(az)) / np.tan(np.deg2rad(HFOV / 2))


def _make_manifest(root: Path) -> Path:
    """3 test clips + 1 train clip; static camera (yaw sweeps slowly on one clip)."""
    import soundfile as sf

    from biaudio.media.video import VideoWriter

    rows = []
    rng = np.random.default_rng(0)
    (root / "clips").mkdir(parents=True)
    for i, split in enumerate(["test", "test", "test", "train"]):
        cid = f"src{i}_0"
        phase = i * 1.3
        nf = int(DUR * FPS)
        tf = np.arange(nf) / FPS
        az_f = _blob_azimuth(tf, phase)
        with VideoWriter(root / "clips" / f"{cid}.mp4", W, H, FPS) as vw:
            yy, xx = np.mgrid[0:H, 0:W]
            bg = (rng.random((H, W, 3)) * 40).astype(np.uint8)
            for k in range(nf):
                c = _az_to_col(az_f[k])
                blob = ((xx - c) ** 2 + (yy - H / 2) ** 2) < 36
                fr = bg.copy()
                fr[blob] = (250, 200, 40)
                vw.write(fr)
        n = int(DUR * SR)
        t = np.arange(n) / SR
        x = rng.standard_normal(n) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
        b = B.itd_ild_pan(x, SR, _blob_azimuth(t, phase)) * 0.1
        sf.write(str(root / "clips" / f"{cid}.flac"), b.T, SR)
        yaw = 20.0 * np.sin(2 * np.pi * tf / DUR + 0.5 * i)
        # the camera pans (yaw) and the source follows the pictures: world azimuth = camera + yaw
        rows.append({
            "clip_id": cid, "source_id": f"src{i}", "split": split, "video_path": f"clips/{cid}.mp4",
            "audio_path": f"clips/{cid}.flac", "fps": float(FPS), "sample_rate": SR, "hfov_deg": HFOV,
            "start_s": 0.0, "end_s": DUR, "duration_s": DUR, "qa_status": "pending", "caption": "a buzzing thing",
            "trajectory": [{"t": float(a), "yaw": float(y), "pitch": 0.0, "roll": 0.0} for a, y in zip(tf, yaw, strict=True)],
            "window_directions": [{"t": float(a), "azimuth_deg": float(z + y), "elevation_deg": 0.0,
                                   "diffuseness": 0.1, "energy_db": -20.0}
                                  for a, z, y in zip(tf, az_f, yaw, strict=True)],
            "clip_azimuth_deg": float(np.mean(az_f)),
        })
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


class _FakeSynth:
    """Stand-in for visaudio.generate.Synthesizer: returns the reference plus noise (binaural run)
    or its mid plus noise (mono run), so the expected ranking is known."""

    calls = 0
    side_noises: list = []

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sample_rate = SR
        self.clip_seconds = 2.5

    @classmethod
    def from_run(cls, run_dir, device="cpu", use_ema=True):
        return cls((Path(run_dir) / "kind.txt").read_text().strip())

    def generate(self, video_path, caption=None, steps=25, cfg=4.5, seed=0, start_s=0.0, side_noise=None):
        import soundfile as sf

        type(self).calls += 1
        type(self).side_noises.append((self.kind, side_noise))
        x, sr = sf.read(str(Path(video_path).with_suffix(".flac")), dtype="float32", always_2d=True)
        x = x.T[:, : int(self.clip_seconds * sr)]
        rng = np.random.default_rng(seed)
        if self.kind == "mono":
            x = np.repeat(x.mean(0, keepdims=True), 2, 0)
        return (x + 0.02 * rng.standard_normal(x.shape)).astype(np.float32), sr


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evalmini")
    man = _make_manifest(root / "OUT")
    runs = {}
    for k in ("binaural", "mono"):
        d = root / f"run_{k}"
        d.mkdir()
        (d / "kind.txt").write_text(k)
        runs[k] = d
    return {"manifest": man, "run": runs["binaural"], "mono_run": runs["mono"], "root": root}


@pytest.fixture()
def fake_generate(monkeypatch):
    mod = types.ModuleType("visaudio.generate")
    mod.Synthesizer = _FakeSynth
    monkeypatch.setitem(sys.modules, "visaudio.generate", mod)
    _FakeSynth.calls = 0
    _FakeSynth.side_noises = []
    return _FakeSynth


@pytest.fixture(scope="module")
def mini_report(mini, tmp_path_factory) -> dict:
    """One full run on the mini manifest (all six systems), shared by the tests that read it."""
    rep = tmp_path_factory.mktemp("minireport") / "report"
    cfg = R.EvalConfig(manifest_dir=mini["manifest"], report_dir=rep, ckpt=mini["run"], mono_ckpt=mini["mono_run"],
                       systems=R.resolve_systems(None, mini["run"], mini["mono_run"]), n_boot=300, n_boot_set=20)
    mod = types.ModuleType("visaudio.generate")
    mod.Synthesizer = _FakeSynth
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "visaudio.generate", mod)
        _FakeSynth.calls = 0
        s = R.run(cfg)
        calls = _FakeSynth.calls
    return {"summary": s, "dir": rep, "cfg": cfg, "calls": calls}


def test_video_direction_follows_blob(mini) -> None:
    man = mini["manifest"]
    d = B.estimate_video_azimuth(man / "clips" / "src0_0.mp4", HFOV)
    truth = _blob_azimuth(d.t, 0.0)
    err = np.abs(d.azimuth_deg - truth)
    assert np.median(err) < 8.0, np.round(np.c_[d.azimuth_deg, truth][:10], 1)
    assert np.corrcoef(d.azimuth_deg, truth)[0, 1] > 0.9


def test_two_stage_lateralises_along_video(mini) -> None:
    """The two-stage spatialiser puts a mono signal where the video says: positive ILD for a left
    source (whichever spatialiser is available), and it says which one it used."""
    vd = B.VideoDirection(np.array([0.0, 10.0]), np.array([60.0, 60.0]), np.array([0.0, 0.0]), W)
    x = np.random.default_rng(1).standard_normal(SR)
    out, name = B.two_stage(np.stack([x, x]), SR, vd)
    assert name in {"foa-kemar-magls", "itd-ild-panner"}
    assert M.ild_db(out) > 2.0 and M.itd_seconds(out, SR, band_hz=(100, 1500)) > 1e-4


def test_runner_end_to_end(mini_report, fake_generate) -> None:
    s, rep, cfg = mini_report["summary"], mini_report["dir"], mini_report["cfg"]
    assert s["n_clips"] == 3  # the train clip is not evaluated
    assert set(s["systems"]) == set(B.ALL_SYSTEMS)
    metric_names = [m for m in M.METRICS] + ["fd_logmel"]
    for sys_, d in s["systems"].items():
        for m in metric_names:
            v = d["metrics"][m]
            assert v["n"] >= 1 and np.isfinite(v["ci_low"]) and np.isfinite(v["ci_high"]), (sys_, m, v)
            if m != "fd_logmel":  # a biased set statistic may sit outside its bootstrap interval
                assert v["ci_low"] <= v["mean"] + 1e-12 and v["mean"] <= v["ci_high"] + 1e-12, (sys_, m, v)
    S = {k: {m: v["mean"] for m, v in d["metrics"].items()} for k, d in s["systems"].items()}
    # known ordering: reference perfect, the noisy copy close, swapped and mono-like systems worse
    assert S["reference"]["lat_corr_ref"] == pytest.approx(1.0)
    assert S["visaudio"]["lat_corr_ref"] > 0.9 > S["mono"]["lat_corr_ref"]
    assert S["swapped-reference"]["lat_corr_ref"] < -0.9
    assert S["mono"]["mono_collapse"] == 1.0 and S["visaudio"]["mono_collapse"] == 0.0
    assert S["reference"]["lat_corr_az"] > 0.8
    # two-stage follows the (easy) blob: it should lateralise correctly, unlike mono
    assert S["two-stage"]["lat_corr_az"] > 0.5 > S["mono"]["lat_corr_az"]
    assert S["reference"]["fd_logmel"] == pytest.approx(0.0, abs=1e-6)
    per = pd.read_parquet(rep / "per_clip.parquet")
    assert len(per) == 3 * len(B.ALL_SYSTEMS)
    on_disk = json.loads((rep / "summary.json").read_text())
    assert set(on_disk["systems"]) == set(s["systems"]) and on_disk["settings"]["n_fft"] == 512
    comps = {(c["baseline"], c["metric"]): c for c in s["comparisons"]}
    assert comps[("mono", "lat_corr_ref")]["non_overlapping_and_better"]
    html = (rep / "index.html").read_text()
    assert "<audio" in html and "http" not in html.replace("http-equiv", "")
    assert len(list((rep / "audio").glob("*.wav"))) == 3 * len(B.ALL_SYSTEMS)
    assert mini_report["calls"] == 6  # 3 clips x (visaudio, mono); two-stage reuses mono
    # rerun: cached audio, no generation at all, identical numbers
    s2 = R.run(cfg)
    assert fake_generate.calls == 0
    assert s2["systems"]["visaudio"]["metrics"]["lat_corr_ref"] == s["systems"]["visaudio"]["metrics"]["lat_corr_ref"]
    # another report of the same manifest sharing the first one's cache: still no generation
    s3 = R.run(dataclasses.replace(cfg, report_dir=rep.parent / "other", cache_dir=rep / "cache"))
    assert fake_generate.calls == 0
    assert s3["systems"]["mono"]["metrics"]["lat_corr_ref"] == s["systems"]["mono"]["metrics"]["lat_corr_ref"]


def test_cli(mini, fake_generate, tmp_path) -> None:
    from typer.testing import CliRunner

    from visaudio.cli import app

    run = CliRunner()
    rep = tmp_path / "r"
    res = run.invoke(app, ["eval", "--manifest", str(mini["manifest"]), "--ckpt", str(mini["run"]),
                           "--baselines", "reference,swapped-reference", "--limit", "2", "--report", str(rep),
                           "--n-boot", "50", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout[res.stdout.index("{"):])
    assert list(s["systems"]) == ["visaudio", "reference", "swapped-reference"] and s["n_clips"] == 2
    bad = run.invoke(app, ["eval", "--manifest", str(mini["manifest"]), "--baselines", "mono",
                           "--report", str(rep)])
    assert bad.exit_code == 2  # mono needs --mono-ckpt
    bad = run.invoke(app, ["eval", "--manifest", str(mini["manifest"]), "--baselines", "stereo-magic",
                           "--report", str(rep)])
    assert bad.exit_code == 2
    empty = run.invoke(app, ["eval", "--manifest", str(mini["manifest"]), "--split", "val",
                             "--baselines", "reference", "--report", str(rep)])
    assert empty.exit_code == 1 and "no usable clips" in empty.output


def _open_in_chromium(index: Path, shot: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        br = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = br.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            assert page.locator("h1").inner_text() == "visaudio eval"
            assert page.locator("img").count() >= 2
            page.screenshot(path=str(shot), full_page=True)
        finally:
            br.close()
    return errors


def _real_fixtures(request) -> tuple[Path, Path, Path]:
    try:
        out = request.getfixturevalue("demo_build")
        run = request.getfixturevalue("tiny_run")
        mono = request.getfixturevalue("tiny_mono_run")
    except pytest.FixtureLookupError as e:
        pytest.skip(f"model/demo fixtures not available yet: {e.argname}")
    return Path(out), Path(run), Path(mono)


def test_demo_split_report(request, artifacts_dir, tmp_path) -> None:
    """The real thing: demo test split, tiny runs, all systems, intervals, report in Chromium."""
    out, run, mono = _real_fixtures(request)
    rep = artifacts_dir / "eval_report"
    cfg = R.EvalConfig(manifest_dir=out, report_dir=rep, ckpt=run, mono_ckpt=mono,
                       systems=R.resolve_systems(None, run, mono), steps=8, n_boot=1000, n_boot_set=50)
    s = R.run(cfg)
    assert set(s["systems"]) == set(B.ALL_SYSTEMS)
    for sys_, d in s["systems"].items():
        for m in list(M.METRICS) + ["fd_logmel"]:
            v = d["metrics"][m]
            assert {"mean", "ci_low", "ci_high", "n"} <= set(v), (sys_, m)
    S = {k: {m: v["mean"] for m, v in d["metrics"].items()} for k, d in s["systems"].items()}
    assert S["reference"]["lat_corr_ref"] == pytest.approx(1.0)
    assert S["swapped-reference"]["lat_corr_ref"] < 0
    print("\nDEMO TEST SPLIT:", json.dumps({k: {m: round(S[k][m], 3) for m in R.KEY_METRICS} for k in S}, indent=1))
    for c in s["comparisons"]:
        print(c["baseline"], c["metric"], round(c["system_mean"], 3), round(c["baseline_mean"], 3),
              "non-overlapping+better" if c["non_overlapping_and_better"] else "NOT shown better")
    errors = _open_in_chromium(rep / "index.html", artifacts_dir / "eval_report.png")
    assert errors == []


def test_report_in_chromium(mini_report, artifacts_dir) -> None:
    """The mini report opens without console errors (screenshot kept for people to look at)."""
    shot = artifacts_dir / "eval_report_mini.png"
    errors = _open_in_chromium(mini_report["dir"] / "index.html", shot)
    assert errors == [], errors
    assert shot.stat().st_size > 20_000


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(0.3, 0.1, 40)
    m, lo, hi, n = R.bootstrap_ci(v, 2000, seed=1)
    assert lo < m < hi and n == 40 and (hi - lo) < 0.1
    assert R.bootstrap_ci(v, 2000, seed=1) == (m, lo, hi, n)  # seeded: reproducible
    # NaN clips are dropped, not counted as zeros
    assert R.bootstrap_ci(np.r_[v, np.nan], 500, 1)[3] == 40
    # clips of one source move together: resampling sources widens the interval honestly
    g = np.repeat(np.arange(8), 5)
    clustered = np.repeat(rng.normal(0.3, 0.1, 8), 5) + rng.normal(0, 0.01, 40)
    _, lo_c, hi_c, _ = R.bootstrap_ci(clustered, 2000, 1, groups=g)
    _, lo_i, hi_i, _ = R.bootstrap_ci(clustered, 2000, 1)
    assert (hi_c - lo_c) > 1.5 * (hi_i - lo_i)
    # a single source: no interval can be estimated, and none is faked
    one = R.bootstrap_ci(v[:5], 500, 1, groups=np.zeros(5))
    assert np.isnan(one[1]) and np.isnan(one[2]) and one[0] == pytest.approx(v[:5].mean())
    d_mean, d_lo, d_hi, _ = R.paired_diff_ci(v + 0.05, v, 500, 1)
    assert d_mean == pytest.approx(0.05) and d_lo == pytest.approx(0.05) and d_hi == pytest.approx(0.05)


def test_a_shared_cache_refuses_the_same_clip_ids_from_another_build(mini, fake_generate, tmp_path) -> None:
    """Cached audio is named by clip id, and ids repeat across builds (every synthetic draw has
    scene_0000_0): a cache shared by two builds would hand one build's generated audio to the other's
    clips. Two copies of one manifest that differ only in recipe hash: the second is refused with
    the clip and both hashes named, nothing is generated for it, and the first build still reuses
    its cache."""
    import shutil

    builds = {}
    for h in ("aaaa1111", "bbbb2222"):
        d = tmp_path / h
        shutil.copytree(mini["manifest"], d)
        df = pd.read_parquet(d / "manifest.parquet")
        df["recipe_hash"] = h
        df.to_parquet(d / "manifest.parquet")
        builds[h] = d
    cache = tmp_path / "cache"

    def cfg(h: str) -> R.EvalConfig:
        return R.EvalConfig(manifest_dir=builds[h], report_dir=tmp_path / f"rep-{h}", ckpt=mini["run"],
                            mono_ckpt=mini["mono_run"], systems=["visaudio", "mono", "reference"], cache_dir=cache,
                            n_boot=50, n_boot_set=10, n_audio_clips=0)

    R.run(cfg("aaaa1111"))
    made = fake_generate.calls
    assert made == 6
    with pytest.raises(R.EvalError, match=r"clip \S+ .*aaaa1111.*bbbb2222"):
        R.run(cfg("bbbb2222"))
    assert fake_generate.calls == made
    R.run(cfg("aaaa1111"))  # the same build again: its cache is its own
    assert fake_generate.calls == made


def test_side_noise_reaches_visaudio_only_and_keys_its_own_cache(mini, fake_generate, tmp_path) -> None:
    """``side_noise`` (the sampler's side-noise temperature) is ViSAudio's: the mono model behind
    the two-stage baselines samples as trained, so both routes are compared on the same baselines.
    Audio generated with another temperature is cached under its own key (a cache shared across
    temperatures would hand one setting's audio to the other); the summary records it; a value
    outside [0, 1] is refused before anything is generated."""
    def cfg(sn):
        return R.EvalConfig(manifest_dir=mini["manifest"], report_dir=tmp_path / f"rep-{sn}", ckpt=mini["run"],
                            mono_ckpt=mini["mono_run"], systems=["visaudio", "mono", "reference"],
                            cache_dir=tmp_path / "cache", side_noise=sn, n_boot=50, n_boot_set=10, n_audio_clips=0)

    R.run(cfg(None))
    assert fake_generate.calls == 6 and set(fake_generate.side_noises) == {("binaural", None), ("mono", None)}
    fake_generate.side_noises.clear()
    s = R.run(cfg(0.0))
    assert fake_generate.calls == 9, "only ViSAudio's 3 clips are generated again"
    assert fake_generate.side_noises == [("binaural", 0.0)] * 3
    assert s["generation"]["side_noise"] == 0.0
    keys = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert sum(k.startswith("visaudio-") for k in keys) == 2 and any(k.endswith("-sn0") for k in keys), keys
    R.run(cfg(0.0))  # cached now
    assert fake_generate.calls == 9
    with pytest.raises(R.EvalError, match="side_noise"):
        R.run(cfg(1.5))
    assert fake_generate.calls == 9
