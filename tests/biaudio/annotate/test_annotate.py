"""`biaudio annotate` over a real (small) demo build: batching, per-clip records, kill + rerun, Ray
actors, the manifest version chain, QA statuses and the recipe hash left alone.

Models are real ``transformers`` models with random weights built on the spot (nothing downloaded):
the caption fixtures of tests/biaudio/conftest.py (tiny Qwen2.5-Omni thinker + tiny GPT-2) and tiny CLIP +
CLAP towers for the audio-visual consistency score.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from biaudio.annotate.config import AnnotateConfig, AVConsistencyConfig
from biaudio.annotate.engine import annotate, read_record, record_path
from biaudio.errors import BiaudioError
from biaudio.stages import caption as cap
from biaudio.stages.caption import CaptionConfig, ClipRef
from tests._support.scenes import small_demo_overrides

REPO = Path(__file__).resolve().parents[3]
DEMO_SET = small_demo_overrides(4, 8, size=(480, 240), render=(128, 72))


def make_av_towers(d: Path, seed: int = 0) -> Path:
    """A CLIP image tower and a CLAP audio tower with one 8-dim projection space, random weights,
    saved as transformers checkpoints under ``d`` with the ``biaudio_av.json`` that pairs them."""
    import torch
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
    )

    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=32, patch_size=8), projection_dim=8))
    clip.save_pretrained(d / "image")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d / "image")
    clap = ClapModel(ClapConfig(
        text_config=dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64),
        audio_config=dict(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16,
                          spec_size=256, window_size=8, num_mel_bins=64, projection_hidden_size=16,
                          enable_fusion=False), projection_dim=8))
    clap.save_pretrained(d / "audio")
    ClapFeatureExtractor(feature_size=64, truncation="rand_trunc").save_pretrained(d / "audio")
    (d / "biaudio_av.json").write_text(json.dumps({"image_tower": "image", "audio_tower": "audio"}))
    return d


@pytest.fixture(scope="module")
def av_towers(tmp_path_factory) -> Path:
    return make_av_towers(tmp_path_factory.mktemp("av_towers"))


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    """A real demo build (synthetic scenes, real stages), a few clips; tests copy it before writing."""
    from tests._support.build import run_demo_build

    out = run_demo_build(tmp_path_factory.mktemp("annotate-build") / "demo", DEMO_SET)
    n = pq.read_metadata(out / "manifest.parquet").num_rows
    assert n >= 4, f"the small demo build kept only {n} clips"
    return out


@pytest.fixture
def dataset(small_build: Path, tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    shutil.copytree(small_build, out)
    return out


def _clip_variants(src: Path, d: Path) -> list[Path]:
    """Three different clips (lengths 3, 2 and 3 s, different pictures and tones) so a batch pads."""
    from biaudio.media.audio import write_audio
    from biaudio.media.video import VideoWriter

    out = []
    for k, (secs, f0) in enumerate([(3, 440.0), (2, 300.0), (3, 880.0)]):
        sr = 48000
        t = np.arange(secs * sr) / sr
        write_audio(d / f"a{k}.flac", (0.3 * np.stack([np.sin(2 * np.pi * f0 * t),
                                                      np.sin(2 * np.pi * f0 * 1.5 * t)])).astype(np.float32), sr)
        rng = np.random.default_rng(10 + k)
        with VideoWriter(d / f"c{k}.mp4", 64, 48, 8, audio=d / f"a{k}.flac") as w:
            for _ in range(secs * 8):
                w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        out.append(d / f"c{k}.mp4")
    return out


# ------------------------------------------------------------------ batching = single calls


def test_caption_batch_equals_single_calls(tiny_omni_model, tiny_text_model, tmp_path, monkeypatch):
    """Greedy decoding: N clips in one left-padded forward give the N captions of N single calls,
    for the Omni describer and for the text model; an unreadable clip gets its own reason."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clips = _clip_variants(tmp_path, tmp_path)
    c = cap.LocalModelCaptioner(CaptionConfig(backend="local-model", av_model_path=tiny_omni_model,
                                              text_model_path=tiny_text_model, max_new_tokens=8, av_video_fps=2))
    single = [c.describe(p) for p in clips]
    # the batched forward itself (no per-clip fallback): one generate for the three clips
    batch = c._generate_descriptions([c.decode_clip(p) for p in clips])
    assert batch == single
    assert c.describe_batch(clips) == single
    assert all(isinstance(t, str) for t in batch)
    lens = [c.av_inputs(p)["input_ids"].shape[1] for p in clips]
    assert len(set(lens)) > 1  # the prompts really differ in length: the batch was padded

    descs = ["a flute plays", "wind in the trees and distant traffic, a dog barks twice", "none"]
    assert c.restructure_batch(descs) == [c.restructure(d) for d in descs]

    # a silent clip (no audio stream) in the batch: it goes through its own forward, same text as alone
    from biaudio.media.video import VideoWriter

    rng = np.random.default_rng(3)
    with VideoWriter(tmp_path / "silent.mp4", 64, 48, 8) as w:
        for _ in range(16):
            w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert c.decode_clip(tmp_path / "silent.mp4")[1] is None
    mixed = [clips[0], tmp_path / "silent.mp4", clips[1]]
    assert c.describe_batch(mixed) == [single[0], c.describe(tmp_path / "silent.mp4"), single[1]]

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    res = c.caption_batch([ClipRef("x_0", "x", clips[0]), ClipRef("bad_0", "bad", junk), ClipRef("y_0", "y", clips[1])])
    assert isinstance(res[1], BiaudioError) and res[1].reason == "unreadable_clip" and "junk.mp4" in str(res[1])
    # a random text model does not write the two-field format: a per-clip reason, not a crash
    assert [r.reason for r in (res[0], res[2])] == ["caption_unparsable", "caption_unparsable"]


def test_av_score_batch_equals_single(av_towers, tmp_path):
    from biaudio.annotate.avconsistency import AVEmbedder

    clips = _clip_variants(tmp_path, tmp_path)
    e = AVEmbedder(av_towers, frames=3)
    dec = [e.decode(p) for p in clips]
    assert [len(f) for f, _ in dec] == [3, 3, 3]
    batch = e.score_decoded(dec)
    single = [e.score_decoded([d])[0] for d in dec]
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert all(-1.0 <= s <= 1.0 for s in batch) and len(set(np.round(batch, 6))) == 3


def test_av_model_folder_errors(tmp_path):
    from biaudio.annotate.avconsistency import AVEmbedder

    with pytest.raises(BiaudioError) as e:
        AVEmbedder(tmp_path / "nope")
    assert e.value.reason == "model_path_missing" and "never downloaded" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BiaudioError) as e:
        AVEmbedder(tmp_path / "empty")
    assert e.value.reason == "bad_av_model"


# ------------------------------------------------------------------ the stage over a build


def _captions_file(out: Path, skip: str) -> Path:
    ids = pq.read_table(out / "manifest.parquet", columns=["clip_id"]).column("clip_id").to_pylist()
    p = out.parent / "captions.jsonl"
    p.write_text("".join(json.dumps({"clip_id": c, "caption": f"Visible sound: engine {i}, Invisible sound: birds"}) + "\n"
                         for i, c in enumerate(ids) if c != skip), encoding="utf-8")
    return p


def test_annotate_versions_qa_and_recipe_hash(dataset: Path, av_towers: Path):
    from biaudio.recipe import load_recipe, recipe_hash
    from biaudio.review import qa
    from biaudio.review.db import QADatabase, db_path

    out = dataset
    orig_bytes = (out / "manifest.parquet").read_bytes()
    orig = pq.read_table(out / "manifest.parquet")
    build_json = (out / ".state" / "build.json").read_bytes()
    ids = orig.column("clip_id").to_pylist()
    missing = ids[-1]
    cfg = AnnotateConfig(captions=CaptionConfig(backend="file", file=_captions_file(out, missing)),
                         av_consistency=AVConsistencyConfig(model_path=av_towers, frames=2), batch_size=3)

    s1 = annotate(out, cfg)
    assert s1.stages["caption"]["annotated"] == len(ids) - 1 and s1.stages["caption"]["failed"] == 1
    assert s1.stages["av_consistency"]["annotated"] == len(ids)
    assert s1.failures == [{"stage": "caption", "clip_id": missing, "ok": False, "reason": "no_caption",
                            "detail": s1.failures[0]["detail"]}]
    v1 = out / "manifest_versions" / "manifest.v1.parquet"
    assert v1.read_bytes() == orig_bytes  # the build's manifest is the first version of the chain
    m1 = pq.read_table(out / "manifest.parquet")
    rows = {r["clip_id"]: r for r in m1.to_pylist()}
    assert rows[ids[0]]["caption"] == "Visible sound: engine 0, Invisible sound: birds"
    assert rows[ids[0]]["caption_visible"] == "engine 0" and rows[ids[0]]["caption_backend"] == "file"
    assert rows[missing]["caption"] is None and rows[missing]["caption_error"].startswith("no_caption")
    assert m1.schema.field("av_score").type == "double"
    scores = {c: rows[c]["av_score"] for c in ids}
    assert all(-1 <= v <= 1 for v in scores.values())
    assert {r["qa_status"] for r in rows.values()} == {"pending"}  # no threshold: scores only
    meta = json.loads(m1.schema.metadata[b"biaudio.annotations"])
    assert meta["av_consistency"]["identity"]["models"][0]["model_types"] == ["clip", "clap"]
    assert len(meta["av_consistency"]["identity"]["models"][0]["sha256"]) == 64
    assert len(meta["caption"]["identity"]["file_sha256"]) == 64
    # the build's columns, recipe hash and state are untouched
    for name in orig.column_names:
        if not name.startswith(("caption", "qa_")):
            assert m1.column(name).equals(orig.column(name)), name
    rh = recipe_hash(load_recipe("demo", DEMO_SET))
    assert set(m1.column("recipe_hash").to_pylist()) == {rh}
    assert (out / ".state" / "build.json").read_bytes() == build_json
    from biaudio.manifest import read_manifest

    read_manifest(out)  # still a valid v1 manifest for every reader
    from biaudio.engine.check import validate

    assert validate(out, check_media=False).ok

    # a person accepts the lowest-scoring clip (the real QA flow: qa.sqlite + qa apply -> v2)
    low = min(ids, key=lambda c: scores[c])
    QADatabase(db_path(out)).record(low, 1, "alice", "accept")
    qa.apply(out)
    assert (out / "manifest_versions" / "manifest.v2.parquet").is_file()
    assert pq.read_table(out / "manifest.parquet").column("av_score").to_pylist() == m1.column("av_score").to_pylist()

    # a threshold: no model runs again (records), pending clips below it are rejected, alice's stays
    thr = float(np.median(list(scores.values())))
    s2 = annotate(out, cfg.model_copy(update={"av_consistency": cfg.av_consistency.model_copy(update={"threshold": thr})}))
    assert s2.stages["av_consistency"]["planned"] == 0 and s2.stages["caption"]["planned"] == 0
    assert s2.stages["caption"]["failed_kept"] == 1
    m2 = {r["clip_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert m2[low]["qa_status"] == "accepted"
    below = [c for c in ids if scores[c] < thr and c != low]
    assert below and all(m2[c]["qa_status"] == "rejected" and m2[c]["qa_reason"].startswith("av_inconsistent")
                         for c in below)
    assert all(m2[c]["qa_status"] == "pending" for c in ids if scores[c] >= thr)
    assert s2.qa == {"rejected": len(below)}
    assert json.loads(pq.read_schema(out / "manifest.parquet").metadata[b"biaudio.annotate"])["previous_version"] \
        == "manifest.v3.parquet"

    # the same run again changes nothing: no new version, the very same bytes
    unchanged = (out / "manifest.parquet").read_bytes()
    s3 = annotate(out, cfg.model_copy(update={"av_consistency": cfg.av_consistency.model_copy(update={"threshold": thr})}))
    assert s3.previous_version is None and not (out / "manifest_versions" / "manifest.v4.parquet").exists()
    assert (out / "manifest.parquet").read_bytes() == unchanged
    # dropping the threshold lifts the automatic rejections (and only those)
    annotate(out, cfg)
    m4 = {r["clip_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert m4[low]["qa_status"] == "accepted" and all(m4[c]["qa_status"] == "pending" for c in below)

    # the failed clip keeps its reason until --retry-failed, which redoes only it (attempt 2)
    before = {c: record_path(out, "caption", c).stat().st_mtime_ns for c in ids}
    s5 = annotate(out, cfg, retry_failed=["no_caption"])
    assert s5.stages["caption"]["planned"] == 1
    assert read_record(out, "caption", missing)["attempt"] == 2
    assert all(record_path(out, "caption", c).stat().st_mtime_ns == before[c] for c in ids if c != missing)

    # `biaudio build` again (a resumed build rewrites the manifest): the annotations stay
    from tests._support.build import run_demo_build

    keep = pq.read_table(out / "manifest.parquet").to_pylist()
    run_demo_build(out, DEMO_SET)
    again = pq.read_table(out / "manifest.parquet").to_pylist()
    cols = ["caption", "caption_visible", "caption_error", "caption_model", "av_score", "av_model", "qa_status"]
    assert [{c: r[c] for c in cols} for r in again] == [{c: r[c] for c in cols} for r in keep]


def test_annotate_cli_kill_and_rerun(dataset: Path, av_towers: Path):
    """SIGKILL mid-run, rerun: every clip ends with exactly one record, those written before the
    kill are untouched, and the manifest gets every score."""
    out = dataset
    ids = pq.read_table(out / "manifest.parquet", columns=["clip_id"]).column("clip_id").to_pylist()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "biaudio.cli", "annotate", str(out), "--av-model", str(av_towers), "-b", "1",
           "--set", "av_consistency.frames=2", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rec_dir = out / ".state" / "annotate" / "av_consistency"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (rec_dir.is_dir() and any(rec_dir.glob("*.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p.name: p.read_bytes() for p in rec_dir.glob("*.json")}
    assert 1 <= len(first) < len(ids), f"kill landed after {len(first)} of {len(ids)} clips"
    assert not (out / "manifest_versions").exists()  # killed before the manifest: nothing half-written
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summ = json.loads(r.stdout)
    assert summ["stages"]["av_consistency"]["already_done"] == len(first)
    assert summ["stages"]["av_consistency"]["annotated"] == len(ids) - len(first)
    for name, data in first.items():
        assert (rec_dir / name).read_bytes() == data
    recs = [json.loads(p.read_text()) for p in rec_dir.glob("*.json")]
    assert sorted(x["clip_id"] for x in recs) == sorted(ids) and {x["attempt"] for x in recs} == {1}
    m = pq.read_table(out / "manifest.parquet")
    assert None not in m.column("av_score").to_pylist()


def test_annotate_ray_actors_match_local(dataset: Path, av_towers: Path, tmp_path: Path):
    """Two real Ray actors (CPU) on the same records give the same scores as one local worker."""
    local = tmp_path / "local"
    shutil.copytree(dataset, local)
    cfg = AnnotateConfig(av_consistency=AVConsistencyConfig(model_path=av_towers, frames=2), batch_size=2)
    annotate(local, cfg)
    s = annotate(dataset, cfg.model_copy(update={"executor": "ray", "workers": 2}))
    assert s.exit_code == 0 and "ray: 2 actor(s)" in s.notes
    a = pq.read_table(local / "manifest.parquet", columns=["clip_id", "av_score"]).to_pylist()
    b = pq.read_table(dataset / "manifest.parquet", columns=["clip_id", "av_score"]).to_pylist()
    assert [r["clip_id"] for r in a] == [r["clip_id"] for r in b]
    np.testing.assert_allclose([r["av_score"] for r in a], [r["av_score"] for r in b], atol=1e-5)
    workers = {read_record(dataset, "av_consistency", r["clip_id"])["worker"] for r in b}
    assert len(workers) == 2  # both actors worked


def test_annotate_cli_errors(dataset: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from biaudio.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["annotate", str(dataset), "--json"])
    assert r.exit_code == 2 and "nothing_to_annotate" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["annotate", str(dataset), "--av-model", str(tmp_path / "missing"), "--json"])
    assert r.exit_code == 2 and "never downloaded" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["annotate", str(dataset), "--captions", "local-model", "--json"])
    assert r.exit_code == 2 and "av_model_path" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["annotate", str(tmp_path), "--av-model", str(tmp_path), "--json"])
    assert r.exit_code == 2 and "no manifest" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["annotate", str(dataset), "--av-action", "delete", "--json"])
    assert r.exit_code == 2 and "action" in json.loads(r.stdout)["error"]
    assert not (dataset / "manifest_versions").exists()
