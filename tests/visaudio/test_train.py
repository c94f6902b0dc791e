"""Trainer and data: overfit, exact resume, DDP parity, augmentation, cache, bad input."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests._support.model import make_toy_manifest
from visaudio.checkpoint import CheckpointMismatch
from visaudio.config import ConfigError, load_config
from visaudio.data import DataError, ManifestDataset, load_manifest_split, swap_caption
from visaudio.train import Trainer, TrainingDiverged, train

torch.set_num_threads(1)
FAST = ["train.num_threads=1"]


@pytest.fixture(scope="module")
def clean4(tmp_path_factory) -> Path:
    """4 training clips of clean panned tones (no noise floor): memorisable."""
    return make_toy_manifest(tmp_path_factory.mktemp("clean4") / "m", n_train=4, n_val=1, n_test=1, duration=2.0,
                             noise=0.0)


def _csv_losses(run: Path) -> dict[int, float]:
    with open(run / "train_log.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_micro_overfits_four_clips(clean4, tmp_path):
    s = train(clean4, "micro", tmp_path / "run", max_steps=300, overrides=FAST, progress=False)
    losses = [v for _, v in s["losses"]]
    end = float(np.mean(losses[-20:]))
    ratio = losses[0] / end
    print(f"\nmicro overfit: first loss {losses[0]:.3f} -> mean of last 20 {end:.3f} (x{ratio:.1f}), "
          f"{s['samples_per_s']:.1f} samples/s")
    assert s["steps"] == 300
    assert ratio > 5.0
    # logs: CSV with per-t-bin losses, checkpoint written
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv")))
    assert len(rows) == 300 and "loss_t3" in rows[0]
    assert (tmp_path / "run" / "ckpt" / "last.pt").is_file()


def test_resume_is_exact(toy_manifest, tmp_path):
    ov = FAST + ["train.ckpt_every=1000", "data.augment=true", "train.warmup_steps=5"]
    a, b = tmp_path / "a", tmp_path / "b"
    train(toy_manifest, "micro", a, max_steps=40, overrides=ov, progress=False)
    s1 = train(toy_manifest, "micro", b, max_steps=20, overrides=ov, progress=False)
    s2 = train(toy_manifest, "micro", b, max_steps=40, overrides=ov, progress=False)
    assert s1["steps"] == 20 and s2["start_step"] == 20 and s2["steps"] == 40
    la, lb = _csv_losses(a), _csv_losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 41))
    diffs = [abs(la[k] - lb[k]) for k in la]
    print(f"\nresume: max |loss diff| over 40 steps = {max(diffs):.2e}")
    assert max(diffs) < 1e-5
    ea = torch.load(a / "ckpt" / "last.pt", weights_only=False)["ema"]
    eb = torch.load(b / "ckpt" / "last.pt", weights_only=False)["ema"]
    assert all(torch.allclose(ea[k].float(), eb[k].float(), atol=1e-5) for k in ea)


def _same(a, b) -> bool:
    """Exact (bitwise) equality of nested checkpoint values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _train_log_without_timing(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(open(run / "train_log.csv"))]


def test_trainer_is_bit_reproducible_and_resume_is_bit_exact(toy_manifest, tmp_path):
    """Every part of the step in play (augmentation, grad accumulation, warm-up + cosine schedule,
    validation, post-hoc EMA, periodic checkpoints): two runs, and a run stopped after 3 steps and
    resumed, end with the same bits in weights, EMA, optimiser and post-hoc EMA, and the same
    losses and validation figures (exact float equality, not a tolerance)."""
    ov = FAST + ["data.augment=true", "train.warmup_steps=3", "train.lr_schedule=cosine", "train.grad_accum=2",
                 "train.val_every=3", "train.val_clips=1", "train.val_steps=2", "train.ckpt_every=4",
                 "train.posthoc_ema=true", "train.posthoc_every=2"]
    a = train(toy_manifest, "micro", tmp_path / "a", max_steps=6, overrides=ov, progress=False)
    b = Trainer(toy_manifest, "micro", tmp_path / "b", max_steps=6, overrides=ov, progress=False).fit()
    c1 = train(toy_manifest, "micro", tmp_path / "c", max_steps=3, overrides=ov, progress=False)
    c2 = train(toy_manifest, "micro", tmp_path / "c", max_steps=6, overrides=ov, progress=False)
    assert c2["start_step"] == 3 and a["steps"] == b["steps"] == c2["steps"] == 6
    assert a["losses"] == b["losses"] == c1["losses"] + c2["losses"]
    assert [v["step"] for v in a["val"]] == [3.0, 6.0] and a["val"] == b["val"] == c1["val"] + c2["val"]
    keys = ("step", "model", "ema", "opt", "sched", "sampler", "data", "phema")
    ck = {r: torch.load(tmp_path / r / "ckpt" / "last.pt", weights_only=False) for r in "abc"}
    for r in "bc":
        assert all(_same(ck["a"][k], ck[r][k]) for k in keys), [k for k in keys if not _same(ck["a"][k], ck[r][k])]
        assert _train_log_without_timing(tmp_path / "a") == _train_log_without_timing(tmp_path / r)
        assert (tmp_path / "a" / "val_log.csv").read_text() == (tmp_path / r / "val_log.csv").read_text()
        for snap in sorted((tmp_path / "a" / "ema").glob("*.pt")):
            assert _same(torch.load(snap, weights_only=True), torch.load(tmp_path / r / "ema" / snap.name,
                                                                         weights_only=True)), snap.name
    assert len(list((tmp_path / "a" / "ema").glob("*.pt"))) == 3


def test_torchrun_two_processes_matches_one(toy_manifest, tmp_path):
    ov = ["train.batch_size=4", "train.num_threads=1", "train.ckpt_every=1000"]
    one = train(toy_manifest, "micro", tmp_path / "one", max_steps=2, overrides=ov, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731", "-m",
           "visaudio.cli", "train", "--manifest", str(toy_manifest), "--config", "micro", "--run-dir",
           str(tmp_path / "two"), "--max-steps", "2"] + [x for o in ov for x in ("--set", o)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    two = _csv_losses(tmp_path / "two")
    print(f"\nfirst-step loss: 1 process {one['losses'][0][1]:.6f}, torchrun x2 (gloo) {two[1]:.6f}")
    assert two[1] == pytest.approx(one["losses"][0][1], abs=1e-5)
    assert two[2] == pytest.approx(one["losses"][1][1], abs=1e-4)


def test_augmentation_swaps_audio_video_caption(toy_manifest):
    cfg = load_config("micro", ["data.augment=true", "data.swap_prob=1.0"])
    ds = ManifestDataset(toy_manifest, "train", cfg, augment=True)
    plain = ds[0]
    rng = np.random.default_rng(0)
    aug = ds.item(0, rng)
    assert aug["swapped"]
    s0 = int(round(aug["start_s"] * cfg.data.sample_rate))
    full, frames = ds.media(0)
    ref = full[:, s0 : s0 + cfg.window_samples]
    assert np.allclose(aug["audio"].numpy(), ref[::-1])  # channels exchanged
    k = int(round(cfg.data.sync_fps / cfg.data.fps))
    f0 = int(round(aug["start_s"] * cfg.data.fps)) * k
    assert np.array_equal(aug["frames"].numpy(), frames[f0 : f0 + cfg.n_sync_frames, :, ::-1])  # mirrored
    assert ("left" in plain["caption"]) == ("right" in aug["caption"])
    assert swap_caption("Left of the car, right side, LEFT") == "Right of the car, left side, RIGHT"
    assert plain["audio"].shape == (2, cfg.window_samples)
    assert plain["frames"].shape == (cfg.n_sync_frames, cfg.data.height, cfg.data.width, 3)


def test_mono_channels_targets_mid(toy_manifest):
    cfg = load_config("micro", ["data.channels=mono"])
    it = ManifestDataset(toy_manifest, "train", cfg)[0]
    assert torch.equal(it["audio"][0], it["audio"][1])


def test_cache_rebuilt_when_settings_or_media_change(toy_manifest, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(toy_manifest, root, ignore=shutil.ignore_patterns(".cache"))
    cfg = load_config("micro")
    ds = ManifestDataset(root, "val", cfg)
    ds.media(0)
    assert ds.cache.built == 1
    ds2 = ManifestDataset(root, "val", cfg)
    ds2.media(0)
    assert ds2.cache.built == 0  # served from cache
    ds3 = ManifestDataset(root, "val", load_config("micro", ["data.width=16"]))
    a3, f3 = ds3.media(0)
    assert ds3.cache.built == 1 and f3.shape[2] == 16
    flac = root / ds.df.iloc[0]["audio_path"]
    os.utime(flac, ns=(flac.stat().st_atime_ns, flac.stat().st_mtime_ns + 10**9))
    ds4 = ManifestDataset(root, "val", cfg)
    ds4.media(0)
    assert ds4.cache.built == 1


def test_missing_media_skipped_and_counted_rejected_dropped(toy_manifest, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(toy_manifest, root, ignore=shutil.ignore_patterns(".cache"))
    df = pd.read_parquet(root / "manifest.parquet")
    tr = df[df.split == "train"].clip_id.tolist()
    (root / "clips" / f"{tr[0]}.flac").unlink()
    df.loc[df.clip_id == tr[1], "qa_status"] = "rejected"
    df.to_parquet(root / "manifest.parquet")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = load_manifest_split(root, "train")
    assert any("media missing" in str(x.message) for x in w)
    assert out.attrs["n_missing"] == 1 and out.attrs["n_rejected"] == 1
    assert tr[0] not in set(out.clip_id) and tr[1] not in set(out.clip_id)
    assert len(out) == len(tr) - 2
    with pytest.raises(DataError, match="split 'nosuch'.*empty"):
        load_manifest_split(root, "nosuch")


def test_checkpoint_from_other_config_is_refused(toy_manifest, tmp_path):
    run = tmp_path / "run"
    train(toy_manifest, "micro", run, max_steps=1, overrides=FAST, progress=False)
    with pytest.raises(CheckpointMismatch, match="model.hidden"):
        train(toy_manifest, "micro", run, max_steps=2, overrides=FAST + ["model.hidden=32"], progress=False)
    from visaudio.generate import Synthesizer

    with pytest.raises(CheckpointMismatch):
        Synthesizer.from_run(run, config="tiny")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy_manifest, tmp_path, monkeypatch):
    import visaudio.model as vm

    run = tmp_path / "run"
    orig = vm.ViSAudio.forward
    calls = {"n": 0}

    def poisoned(self, x, t, c):
        calls["n"] += 1
        v = orig(self, x, t, c)
        return v * float("nan") if calls["n"] > 7 else v

    monkeypatch.setattr(vm.ViSAudio, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 8.*batch clip ids \['toy"):
        train(toy_manifest, "micro", run, max_steps=20, overrides=FAST + ["train.ckpt_every=5"], progress=False)
    ck = torch.load(run / "ckpt" / "last.pt", weights_only=False)
    assert ck["step"] == 5
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_train_codec_cli_then_train_and_generate_with_vae(toy_manifest, tmp_path):
    """`visaudio train-codec` writes a codec the trainer loads; its weights travel in the run's
    checkpoint so generation does not need the codec file."""
    from typer.testing import CliRunner

    from visaudio.cli import app
    from visaudio.generate import Synthesizer

    vae = ["codec.kind=vae", "codec.vae_strides=[4,5,8]", "codec.vae_channels=8", "codec.vae_latent=8"]
    args = ["train-codec", "--manifest", str(toy_manifest), "--run", str(tmp_path / "codec"), "--config", "micro",
            "--steps", "3", "--batch-size", "2"] + [x for o in vae for x in ("--set", o)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    ck = tmp_path / "codec" / "codec.pt"
    assert ck.is_file()
    s = train(toy_manifest, "micro", tmp_path / "run", max_steps=2,
              overrides=FAST + vae + [f"codec.vae_ckpt={ck}"], progress=False)
    assert s["steps"] == 2
    ck.unlink()
    syn = Synthesizer.from_run(tmp_path / "run")
    a, sr = syn.generate_frames(np.zeros((8, 24, 32, 3), np.uint8), fps=4.0, steps=2, cfg=1.0)
    assert a.shape == (2, 2 * sr) and np.isfinite(a).all()


def test_train_cli_errors_are_clean(toy_manifest, tmp_path):
    from typer.testing import CliRunner

    from visaudio.cli import app

    r = CliRunner().invoke(app, ["train", "--manifest", str(toy_manifest), "--run", str(tmp_path / "r"), "--config",
                                 "micro", "--set", "train.bogus=1"])
    assert r.exit_code == 1 and "train.bogus" in r.output
    r = CliRunner().invoke(app, ["train", "--manifest", str(tmp_path), "--run", str(tmp_path / "r"), "--config",
                                 "micro"])
    assert r.exit_code == 1 and "manifest.parquet" in r.output


def test_validation_metrics_and_tensorboard(toy_manifest, tmp_path):
    s = train(toy_manifest, "micro", tmp_path / "run", max_steps=2,
              overrides=FAST + ["train.val_every=2", "train.val_clips=2", "train.val_steps=2", "train.tensorboard=true"],
              progress=False)
    v = s["val"][-1]
    assert v["step"] == 2 and np.isfinite(v["val_loss"]) and 0.0 <= v["ild_sign_agreement"] <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "run" / "val_log.csv")))
    assert rows and "ild_sign_agreement" in rows[0]
    assert any((tmp_path / "run" / "tb").iterdir())


def test_camera_motion_dropout_withholds_the_feature(toy_manifest, tmp_path):
    """``train.camera_motion_dropout``: a dropped sample's camera-motion feature contributes
    nothing, so at 1.0 the feature's zero-initialised output layer never gets a gradient and stays
    exactly zero, while at 0.0 the same three steps move it. Out of [0, 1] is refused."""
    ov = FAST + ["model.camera_motion=true", "train.batch_size=4", "train.ckpt_every=1000", "train.lr=1e-2"]
    w = {}
    for p in (0.0, 1.0):
        train(toy_manifest, "micro", tmp_path / f"p{p}", max_steps=3, overrides=ov + [f"train.camera_motion_dropout={p}"],
              progress=False)
        w[p] = torch.load(tmp_path / f"p{p}" / "ckpt" / "last.pt", weights_only=False)["model"]["camera_motion.mlp.2.weight"]
    assert w[1.0].abs().max().item() == 0.0
    assert w[0.0].abs().max().item() > 1e-4, w[0.0].abs().max()
    with pytest.raises(ConfigError, match="camera_motion_dropout"):
        load_config("micro", ["train.camera_motion_dropout=1.5"])
