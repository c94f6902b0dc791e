"""Feature store and streaming trainer: prepare -> shards -> train -> generate, resume, disjoint
ranks, workers, bad shards, config mismatch; gradient accumulation, LR schedule, post-hoc EMA."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._support.model import make_toy_manifest
from visaudio.cli import app
from visaudio.config import load_config
from visaudio.data import DataError
from visaudio.store import StoreError, prepare
from visaudio.stream import BatchStream, StoreDataset, StreamingDataset
from visaudio.train import lr_factor, train

torch.set_num_threads(1)
FAST = ["train.num_threads=1", "train.ckpt_every=1000", "data.augment=true", "train.warmup_steps=3"]


@pytest.fixture(scope="module")
def toy7(tmp_path_factory) -> Path:
    """7 training clips (shards of 2 leave a short last shard), 2 val clips."""
    return make_toy_manifest(tmp_path_factory.mktemp("toy7") / "m", n_train=7, n_val=2, n_test=1, duration=2.0)


@pytest.fixture(scope="module")
def store(toy7, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "s"
    s = prepare(toy7, "micro", out, shard_size=2, log=lambda m: None)
    assert s["complete"] and s["clips_written"] == 9 and not s["failed"]
    assert s["splits"]["train"] == {"clips": 7, "shards": 4, "skipped_done": 0, "written": 4}
    return out


def _losses(run: Path) -> dict[int, float]:
    with open(run / "train_log.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_store_holds_what_the_per_clip_path_decodes(store, toy7):
    from visaudio.data import ManifestDataset

    cfg = load_config("micro")
    sd = StoreDataset(store, "train", cfg)
    md = ManifestDataset(toy7, "train", cfg, cache_dir=store.parent / "cache")
    assert sorted(sd.clip_ids) == sorted(md.clip_ids) and sd.shard_sizes == [2, 2, 2, 1]
    for i, cid in enumerate(sd.clip_ids):
        a, f = sd.media(i)
        a2, f2 = md.media(md.clip_ids.index(cid))
        assert np.array_equal(a, a2) and np.array_equal(f, f2) and f.dtype == np.uint8
    # the tar is a plain WebDataset-layout tar
    import tarfile

    names = tarfile.open(sd.key_dir / "train" / "shard-000000.tar").getnames()
    assert names[:3] == ["000000.audio.npy", "000000.frames.npy", "000000.meta.json"]


def test_prepare_resumes_per_shard_and_refuses_a_changed_plan(store, toy7):
    key = next(p for p in store.iterdir() if p.is_dir())
    tar1 = key / "train" / "shard-000001.tar"
    before = {p.name: p.stat().st_mtime_ns for p in (key / "train").glob("*.tar")}
    (key / "train" / "shard-000001.json").unlink()  # killed after the tar, before its sidecar
    (key / "train" / ".shard-000002.tar.tmp-99999").write_bytes(b"half a shard")  # killed mid-shard
    with pytest.raises(StoreError, match="incomplete: 1 of 4 shard"):
        StoreDataset(store, "train", load_config("micro"))
    s = prepare(toy7, "micro", store, shard_size=2, log=lambda m: None)
    assert s["splits"]["train"]["written"] == 1 and s["splits"]["train"]["skipped_done"] == 3 and s["complete"]
    after = {p.name: p.stat().st_mtime_ns for p in (key / "train").glob("*.tar")}
    assert {k for k in after if after[k] != before[k]} == {tar1.name}  # finished shards untouched
    with pytest.raises(StoreError, match="planned for 7 clips in shards of 2"):
        prepare(toy7, "micro", store, shard_size=3, log=lambda m: None)


def test_config_mismatch_and_bad_shard_are_clear_errors(store, tmp_path):
    with pytest.raises(StoreError, match=r"decode.w 32 \(store\)|has no shards for this config.*w 32"):
        StoreDataset(store, "train", load_config("micro", ["data.width=16"]))
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(store, bad)
    key = next(p for p in bad.iterdir() if p.is_dir())
    t = key / "train" / "shard-000000.tar"
    data = bytearray(t.read_bytes())
    side = json.loads((key / "train" / "shard-000000.json").read_text())
    off, size = side["samples"][0]["members"]["audio"]
    data[off:off + size] = b"\0" * size  # same size, garbage content
    t.write_bytes(bytes(data))
    ds = StoreDataset(bad, "train", load_config("micro"))
    with pytest.raises(DataError, match=r"bad shard .*shard-000000.tar: sample 0 \(audio\)"):
        ds.item_at(0, 0, None)
    # through the CLI: one line, exit 1, no traceback
    r = CliRunner().invoke(app, ["train", "--store", str(bad), "--config", "micro", "--run", str(tmp_path / "r"),
                                 "--max-steps", "2", "--set", "train.num_threads=1"])
    assert r.exit_code == 1 and "bad shard" in r.output and "Traceback" not in r.output, r.output


def test_two_ranks_read_disjoint_samples_and_workers_keep_the_order(store):
    cfg = load_config("micro", ["data.augment=true"])
    ds = StoreDataset(store, "train", cfg, augment=True)
    n = len(ds)

    def ids(rank, world, workers, k, start=0):
        bs = BatchStream(StreamingDataset(ds, 0, rank, world, start, block=4), workers=workers)
        got = bs.take(k)
        bs.close()
        return [(x["g"], x["clip_id"], x["swapped"], x["start_s"]) for x in got]

    one = ids(0, 1, 0, 2 * n)
    assert sorted(c for _, c, _, _ in one[:n]) == sorted(ds.clip_ids)  # an epoch = every sample once
    assert [c for _, c, _, _ in one[:n]] != [c for _, c, _, _ in one[n:]]  # reshuffled per epoch
    r0, r1 = ids(0, 2, 0, 7), ids(1, 2, 0, 7)
    e0 = {c for g, c, _, _ in r0 if g < n}
    e1 = {c for g, c, _, _ in r1 if g < n}
    assert not e0 & e1 and e0 | e1 == set(ds.clip_ids)  # disjoint within the epoch, all covered
    assert sorted(r0 + r1) == one[:14]  # the two ranks together = the one-process stream
    assert ids(0, 1, 2, 2 * n) == one  # two loader workers: same examples, same order
    assert ids(0, 1, 0, 5, start=9) == one[9:14]  # resume from a position = the stream from there


def test_store_train_resume_and_generate(store, tmp_path):
    """prepare -> train on shards (2 loader workers) -> kill at step 6 -> resume -> same loss
    curve as an uninterrupted run -> generate from the run."""
    ov = FAST + ["train.num_workers=2", "train.shuffle_block=4"]
    a, b = tmp_path / "a", tmp_path / "b"
    sa = train(None, "micro", a, max_steps=12, overrides=ov, progress=False, store=store)
    assert sa["n_train"] == 7 and sa["n_val"] == 2
    train(None, "micro", b, max_steps=6, overrides=ov, progress=False, store=store)
    ck = torch.load(b / "ckpt" / "last.pt", weights_only=True)
    assert ck["data"]["g"] == 6 * 4 and (ck["data"]["epoch"], ck["data"]["pos"]) == divmod(24, 7)
    assert ck["data"]["source"].startswith("store:") and {"shard", "offset"} <= set(ck["data"])
    sb = train(None, "micro", b, max_steps=12, overrides=ov, progress=False, store=store)
    assert sb["start_step"] == 6
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 13))
    assert max(abs(la[k] - lb[k]) for k in la) < 1e-5
    # latent statistics were computed once and kept in the store
    assert len(list(store.glob("*/train/latent_stats-*.pt"))) == 1
    from tests._support.model import _write_mp4

    vid = tmp_path / "v.mp4"
    _write_mp4(vid, np.full((24, 24, 32, 3), 90, np.uint8), 8.0)
    r = CliRunner().invoke(app, ["generate", str(vid), "--ckpt", str(a), "--out", str(tmp_path / "g.mp4"), "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.flac").is_file()


def test_grad_accumulation_matches_one_batch(toy7, tmp_path):
    ov = ["train.num_threads=1", "train.ckpt_every=1000", "train.batch_size=4"]
    one = train(toy7, "micro", tmp_path / "one", max_steps=3, overrides=ov, progress=False)
    acc = train(toy7, "micro", tmp_path / "acc", max_steps=3, overrides=ov + ["train.grad_accum=2"], progress=False)
    d = [abs(x[1] - y[1]) for x, y in zip(one["losses"], acc["losses"], strict=True)]
    assert max(d) < 1e-4, d  # same examples, same noise, same update
    with pytest.raises(Exception, match="not a multiple of train.grad_accum"):
        load_config("micro", ["train.batch_size=4", "train.grad_accum=3"])


def test_lr_warmup_then_decay():
    tc = load_config("micro", ["train.warmup_steps=10", "train.max_steps=110", "train.lr_schedule=cosine",
                               "train.min_lr_ratio=0.1"]).train
    f = [lr_factor(s, tc) for s in range(0, 200)]
    assert f[0] == pytest.approx(0.1) and f[8] == pytest.approx(0.9) and f[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(f[9:], f[10:], strict=False)) and f[109] == pytest.approx(0.1) and f[150] == pytest.approx(0.1)
    assert lr_factor(59, tc) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    tl = load_config("micro", ["train.warmup_steps=1", "train.max_steps=101", "train.lr_schedule=linear",
                               "train.min_lr_ratio=0"]).train
    assert lr_factor(50, tl) == pytest.approx(0.5)
    assert lr_factor(500, load_config("micro").train) == 1.0  # the default stays constant


def test_posthoc_ema_synthesises_an_unseen_width(tmp_path):
    """Snapshots of the sigma_rel 0.05 and 0.10 EMAs reproduce the 0.08 EMA tracked directly."""
    from visaudio.phema import PowerEMA, synthesize

    torch.manual_seed(0)
    m = torch.nn.Linear(4, 4)
    track = PowerEMA(m, [0.05, 0.10])
    ref = PowerEMA(m, [0.08])
    (tmp_path / "ema").mkdir()
    for step in range(1, 401):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05 + 0.01 * np.sin(step / 40))
        track.update(m, step)
        ref.update(m, step)
        if step % 25 == 0:
            torch.save(track.state_dict(), tmp_path / "ema" / f"phema-{step:08d}.pt")
    syn, info = synthesize(tmp_path, 0.08)
    assert info["step"] == 400 and info["n_snapshots"] == 16
    err = max(float((syn[k] - ref.states[0][k]).abs().max()) for k in syn)
    spread = max(float((track.states[0][k] - track.states[1][k]).abs().max()) for k in syn)
    assert err < 0.1 * spread, (err, spread)


def test_posthoc_ema_run_exports_a_generation_checkpoint(store, tmp_path):
    run = tmp_path / "r"
    ov = FAST + ["train.posthoc_ema=true", "train.posthoc_every=3"]
    train(None, "micro", run, max_steps=6, overrides=ov, progress=False, store=store)
    assert sorted(p.name for p in (run / "ema").iterdir()) == ["phema-00000003.pt", "phema-00000006.pt"]
    r = CliRunner().invoke(app, ["posthoc-ema", "--run", str(run), "--sigma-rel", "0.07", "--out", str(tmp_path / "p.pt")])
    assert r.exit_code == 0, r.output
    ck = torch.load(tmp_path / "p.pt", weights_only=True)
    assert ck["step"] == 6 and set(ck["ema"]) == set(torch.load(run / "ckpt" / "last.pt", weights_only=True)["ema"])
    from tests._support.model import _write_mp4

    vid = tmp_path / "v.mp4"
    _write_mp4(vid, np.full((12, 24, 32, 3), 90, np.uint8), 8.0)
    r = CliRunner().invoke(app, ["generate", str(vid), "--ckpt", str(tmp_path / "p.pt"), "--out", str(tmp_path / "g.mp4"),
                                 "--steps", "2"])
    assert r.exit_code == 0, r.output  # the synthesised EMA generates


def test_train_cli_needs_store_or_manifest(tmp_path):
    r = CliRunner().invoke(app, ["train", "--run", str(tmp_path / "r"), "--config", "micro"])
    assert r.exit_code == 2 and "--store" in r.output
    r = CliRunner().invoke(app, ["train", "--store", str(tmp_path / "none"), "--run", str(tmp_path / "r"),
                                 "--config", "micro"])
    assert r.exit_code == 1 and "no feature store" in r.output and "Traceback" not in r.output, r.output
    assert os.path.isdir(tmp_path / "r")  # the run folder probe ran; nothing else written


def _prepare_train_generate(manifest: Path, tmp_path: Path) -> dict:
    """The user's path through the CLI: prepare -> train --store -> generate on one of the clips."""
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", "--manifest", str(manifest), "--config", "micro", "--out", str(tmp_path / "st"),
                            "--shard-size", "8", "--json"])
    assert r.exit_code == 0, r.output
    prep = json.loads(r.stdout.strip().splitlines()[-1])
    assert prep["complete"] and prep["clips_written"] >= 1
    r = runner.invoke(app, ["train", "--store", str(tmp_path / "st"), "--config", "micro", "--run", str(tmp_path / "run"),
                            "--max-steps", "3", "--set", "train.num_threads=1", "--set", "train.val_every=3"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    import pandas as pd

    video = manifest / pd.read_parquet(manifest / "manifest.parquet").iloc[0]["video_path"]
    r = runner.invoke(app, ["generate", str(video), "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "g.mp4"),
                            "--steps", "2"])
    assert r.exit_code == 0, r.output
    import soundfile as sf

    a, sr = sf.read(str(tmp_path / "g.flac"))
    assert a.shape[1] == 2 and np.isfinite(a).all() and sr == 8000
    return {"prepare": prep, "train": summary}


def test_demo_build_prepare_train_generate(demo_build, tmp_path):
    out = _prepare_train_generate(demo_build, tmp_path)
    assert out["prepare"]["splits"]["train"]["clips"] == out["train"]["n_train"] >= 10
    assert out["train"]["n_val"] >= 1 and out["train"]["steps"] == 3


@pytest.mark.testdata
def test_real_sphere360_build_prepare_train_generate(testdata_dir, tmp_path):
    """A real Sphere360 clip built by `biaudio build biaudio`, then the whole ViSAudio path."""
    import subprocess
    import sys

    clip = testdata_dir / "sphere360-erp-foa" / "0B7ds6NmVBQl_20.webm"
    out = tmp_path / "b"
    r = subprocess.run([sys.executable, "-m", "biaudio.cli", "build", "biaudio", "--out", str(out), "--json",
                        "--set", f"sources=[{clip}]", "--set", "render.width=320", "--set", "render.height=180",
                        "--set", "clean.speech.enabled=false", "--workers", "1"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = _prepare_train_generate(out, tmp_path)
    assert res["train"]["n_train"] >= 1 and res["prepare"]["failed"] == []


class _ColumnPart:
    """A frozen part for the test: per-frame mean brightness of the left and right picture halves
    (a real, deterministic encoder; its fingerprint names its settings)."""

    name = "image"
    fingerprint = "column-means-v1"

    def __init__(self, fps: float):
        self.rates = {"colmeans": fps}

    def encode(self, frames, audio, caption):
        w = frames.shape[2] // 2
        return {"colmeans": np.stack([frames[:, :, :w].mean((1, 2, 3)), frames[:, :, w:].mean((1, 2, 3))], -1)
                .astype(np.float32)}


def test_frozen_part_features_and_their_mirror_are_stored(toy7, tmp_path, monkeypatch):
    import visaudio.pretrained

    monkeypatch.setattr(visaudio.pretrained, "frozen_parts", lambda cfg, device="cpu": [_ColumnPart(cfg.data.sync_fps)])
    s = prepare(toy7, "micro", tmp_path / "st", splits=("train",), shard_size=4, log=lambda m: None)
    plain = prepare.__globals__["store_key"](prepare.__globals__["store_settings"](load_config("micro"), []))
    assert s["key"] != plain  # the part's fingerprint is part of the key
    cfg = load_config("micro", ["data.swap_prob=1.0", "data.clip_seconds=1.0"])
    ds = StoreDataset(tmp_path / "st", "train", cfg, augment=True)
    raw = ds.reader.sample(0, 0)
    f = raw["features"]
    assert set(f) == {"colmeans", "mirror/colmeans"} and f["colmeans"].dtype == np.float16
    assert f["colmeans"].shape[0] == raw["frames"].shape[0] == 16  # the whole 2-s clip at 8 fps
    assert np.allclose(f["mirror/colmeans"], f["colmeans"][:, ::-1])  # left and right halves exchanged
    it = ds.item_at(0, 0, np.random.default_rng(0))  # swap_prob 1: the mirrored example
    s0 = int(round(it["start_s"] * 8))
    assert it["swapped"] and it["features"]["colmeans"].shape[0] == cfg.n_sync_frames == 8  # cropped to the window
    assert torch.equal(it["features"]["colmeans"], torch.from_numpy(f["mirror/colmeans"][s0:s0 + 8]))
    assert torch.equal(ds[0]["features"]["colmeans"], torch.from_numpy(f["colmeans"][:8]))
    monkeypatch.undo()
    with pytest.raises(StoreError, match="parts.image 'column-means-v1' \\(store\\) != None"):
        StoreDataset(tmp_path / "st" / s["key"], "train", load_config("micro"))


def test_prepare_split_over_ranks_writes_each_shard_once(toy7, tmp_path):
    quiet = {"splits": ("train",), "shard_size": 2, "log": lambda m: None}
    r1 = prepare(toy7, "micro", tmp_path / "st", rank=1, world=2, **quiet)
    assert not r1["complete"] and r1["clips_written"] == 3  # shards 1 and 3 (2 + 1 clips)
    with pytest.raises(StoreError, match="incomplete: 2 of 4"):
        StoreDataset(tmp_path / "st", "train", load_config("micro"))
    r0 = prepare(toy7, "micro", tmp_path / "st", rank=0, world=2, **quiet)
    assert r0["complete"] and r0["clips_written"] == 4
    assert len(StoreDataset(tmp_path / "st", "train", load_config("micro"))) == 7


def test_torchrun_two_ranks_on_the_store_match_one_process(store, tmp_path):
    """Real DDP (gloo, 2 processes, a loader worker each): the latent statistics are all-reduced
    and each rank streams its own half of every global batch, so the losses equal one process's."""
    import subprocess
    import sys

    ov = ["train.batch_size=4", "train.num_threads=1", "train.ckpt_every=1000", "data.augment=true"]
    one = train(None, "micro", tmp_path / "one", max_steps=3, overrides=ov, progress=False, store=store)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29737", "-m",
           "visaudio.cli", "train", "--store", str(store), "--config", "micro", "--run-dir", str(tmp_path / "two"),
           "--max-steps", "3"] + [x for o in ov + ["train.num_workers=1"] for x in ("--set", o)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    two = _losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3]
    assert max(abs(two[k] - v) for k, v in one["losses"]) < 1e-4, (two, one["losses"])
