"""Cleaning filters on synthetic scenes (silent, frozen, speech) and on the real Sphere360 clips."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from biaudio.clean.silence import SilenceConfig, silence_score
from biaudio.clean.speech import SpeechConfig, speech_score
from biaudio.clean.static import static_score
from biaudio.ingest.analysis import analyze_file
from biaudio.ingest.validate import ValidateConfig
from tests._support.scenes import small_scene

AMBIX_WEBM = ValidateConfig(declared_convention="ambix", declared_convention_formats=["webm"])
SMALL = dict(duration=3.0, size=(256, 128), n_sources=None)  # make_scene draws the number of sources


@pytest.fixture(scope="module")
def real(testdata_dir):
    clips = sorted((testdata_dir / "sphere360-erp-foa").glob("*.webm"))
    return {c.stem: analyze_file(c, validate_cfg=AMBIX_WEBM, stop_on_reject=False) for c in clips}


def test_real_clips_pass_silence_and_static(real):
    assert len(real) == 5
    for sid, r in real.items():
        assert r.filters["silence"].passed and r.filters["silence"].score < 0.1, sid
        assert r.filters["static"].passed, (sid, r.filters["static"].detail)
        assert r.ok, (sid, r.reject)
        assert r.windows and r.clip_ids()[0] == f"{sid}_0"
    # the waterfall clip changes shot at frame 255/256 (checked by eye); the 8-s window ends before it
    wf = real["0B7ds6NmVBQl_20"]
    assert len(wf.cuts) == 1 and abs(wf.cuts[0] - 256) <= 2, wf.cuts
    assert all(w.end_s <= (wf.cuts[0] - 2) / wf.fps for w in wf.windows)


def test_real_ambience_and_music_are_not_speech(real):
    for sid in ("0B7ds6NmVBQl_20", "pC2WmY6bkB4_251"):  # waterfall, tabla
        f = real[sid].filters["speech"]
        assert f.score <= 0.2 and f.extra["backend"] == "silero", (sid, f.detail)
        assert f.extra["checkpoint"].startswith("silero-vad")


def test_silent_and_frozen_scenes_rejected(tmp_path):
    silent = small_scene(tmp_path, "silent", 3, silent=True, **SMALL).video
    frozen = small_scene(tmp_path, "frozen", 4, frozen=True, **SMALL).video
    live = small_scene(tmp_path, "live", 5, **SMALL).video
    cfg = dict(speech_cfg=SpeechConfig(enabled=False))
    r = analyze_file(silent, **cfg)
    assert r.reject is not None and r.reject.reason == "silent" and r.reject.stage == "clean"
    assert r.filters["silence"].score > 0.9
    r = analyze_file(frozen, **cfg)
    assert r.reject is not None and r.reject.reason == "static"
    assert r.filters["static"].score > 0.85 and r.filters["silence"].passed
    assert static_score(frozen).reason == "static"  # path entry point agrees
    r = analyze_file(live, **cfg, segment_cfg=None)
    assert r.filters["static"].passed and r.filters["silence"].passed
    # the shared decode compares the Y plane through the format=gray LUT: same MSEs as format=gray
    ref = static_score(live)
    assert r.filters["static"].score == ref.score and r.filters["static"].extra == ref.extra


def test_silence_threshold_edges():
    sr = 48000
    t = np.arange(sr) / sr
    quiet = np.zeros((4, sr), np.float32)
    quiet[2] = 10 ** (-40 / 20) * np.sin(2 * np.pi * 200 * t)  # -40 dBFS peak on Z only
    assert silence_score(quiet, sr).score == 1.0
    quiet[2] *= 10 ** (10 / 20)  # -30 dBFS: above the floor on one channel is enough
    assert silence_score(quiet, sr).score == 0.0
    assert silence_score(quiet, sr, SilenceConfig(threshold_dbfs=-20)).reason == "silent"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_speech_in_360_scene_scores_high(tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Please remember to switch off the lights when you leave the "
                    "room, and close every window before it starts to rain tonight."], check=True, timeout=60)
    scene = small_scene(tmp_path, "talk", 7, duration=6.0, size=(256, 128), speech_wav=str(wav)).video
    r = analyze_file(scene, stop_on_reject=False)
    f = r.filters["speech"]
    assert f.score >= 0.5, f.detail
    assert f.reason == "speech" or f.passed == (f.score <= 0.5)


def test_pyannote_backend_on_local_random_checkpoint(tmp_path):
    os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(0)
    model = PyanNet(sample_rate=16000, num_channels=1)
    model.specifications = Specifications(problem=Problem.MULTI_LABEL_CLASSIFICATION, resolution=Resolution.FRAME,
                                          duration=5.0, classes=["speech"])
    model.setup()
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": __import__("pytorch_lightning").__version__}
    model.on_save_checkpoint(ckpt)  # pyannote's own metadata (versions, architecture, specifications)
    path = tmp_path / "seg.ckpt"
    torch.save(ckpt, path)

    sr = 48000
    rng = np.random.default_rng(0)
    w = (0.1 * rng.standard_normal(int(7.37 * sr))).astype(np.float32)
    cfg = SpeechConfig(backend="pyannote", checkpoint=str(path), min_duration_on=0.0, min_duration_off=0.0)
    f = speech_score(w, sr, cfg)
    assert 0.0 <= f.score <= 1.0
    assert f.extra["backend"] == "pyannote" and f.extra["checkpoint"] == str(path) and f.extra["local_checkpoint"]
    assert abs(f.extra["timeline_s"] - 7.37) <= cfg.frame_s
    assert len(f.extra["activity"]) == int(np.ceil(7.37 / cfg.frame_s - 1e-9))
    assert all(0 <= s < e <= 7.37 + 0.05 for s, e in f.extra["segments"])
    assert f.score == pytest.approx(np.mean(f.extra["activity"]))


def test_static_and_speech_ratios_per_window():
    """Per-clip ratios come from the per-pair / per-frame arrays of the whole source."""
    from biaudio.clean import FilterResult
    from biaudio.clean.speech import window_speech
    from biaudio.clean.static import StaticAccumulator, StaticConfig, gray_lut

    rng = np.random.default_rng(0)
    still = rng.integers(0, 255, (32, 64), dtype=np.uint8)
    acc = StaticAccumulator(StaticConfig())
    for i in range(33):  # 2 fps, 16 s: frozen for the first 8 s, then noise
        acc.add(i / 2.0, still if i <= 16 else rng.integers(0, 255, (32, 64), dtype=np.uint8))
    a, b = acc.window_result(0.0, 8.0), acc.window_result(8.0, 16.0)
    assert (a.score, a.passed, a.reason, a.extra["pairs"]) == (1.0, False, "static", 16)
    assert (b.score, b.passed, b.extra["pairs"]) == (0.0, True, 16)
    assert acc.result().score == pytest.approx(0.5) and acc.result().passed
    assert acc.window_result(20.0, 28.0).extra["pairs"] == 0 and not acc.window_result(20.0, 28.0).passed
    lut = gray_lut("tv")
    assert (lut[16], lut[235], lut[0], lut[255], lut[128]) == (0, 255, 0, 255, 130) and gray_lut("pc") is None

    cfg = SpeechConfig(frame_s=0.02)
    act = np.r_[np.ones(400), np.zeros(400)].astype(np.uint8)  # speech in 0-8 s of 16 s
    src = FilterResult("speech", 0.5, True, None, "", {
        "backend": "silero", "checkpoint": "x", "frame_s": 0.02, "activity": act.tolist()})
    w0, w1 = window_speech(src, 0.0, 8.0, cfg), window_speech(src, 8.0, 16.0, cfg)
    assert (w0.score, w0.reason, w1.score, w1.passed) == (1.0, "speech", 0.0, True)
    assert w0.extra == {"backend": "silero", "checkpoint": "x"}


def test_speech_spans_run_the_detector_only_there():
    """spans: the detector sees only those parts; the timeline still covers the whole input."""
    sr = 16000
    w = (0.05 * np.random.default_rng(1).standard_normal(6 * sr)).astype(np.float32)
    f = speech_score(w, sr, SpeechConfig(), spans=[(1.0, 3.0), (2.5, 4.0)])
    assert f.extra["analyzed_s"] == pytest.approx(3.0)
    assert len(f.extra["activity"]) == 300 and all(1.0 <= s < e <= 4.0 for s, e in f.extra["segments"])
    assert 0.0 <= f.score <= 1.0


def test_silero_one_call_equals_its_own_loop(tmp_path):
    """Our one-call Silero path (audio_forward + its own post-processing) gives exactly what
    silero's get_speech_timestamps gives, on speech and on lengths that are not whole steps."""
    import torch
    from silero_vad import get_speech_timestamps

    from biaudio.clean.speech import VAD_SR, _segments_silero, _silero_model
    from biaudio.media.audio import decode_audio

    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "One two three, the rain in Spain stays mainly in the plain."],
                   check=True, timeout=60)
    x, _ = decode_audio(wav, sr=VAD_SR)
    speech = np.concatenate([np.zeros(VAD_SR, np.float32), x[0], np.zeros(777, np.float32)])
    noise = (0.01 * np.random.default_rng(0).standard_normal(5000)).astype(np.float32)
    cfg = SpeechConfig()
    for sig in (speech, speech[: 3 * VAD_SR + 300], noise, speech[VAD_SR + 2000: VAD_SR + 2300]):
        model = _silero_model()
        model.reset_states()
        ref = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(sig)), model, threshold=cfg.silero_threshold,
                                    sampling_rate=VAD_SR, min_speech_duration_ms=cfg.min_speech_ms,
                                    min_silence_duration_ms=cfg.min_silence_ms)
        assert _segments_silero(sig, cfg) == [(t["start"] / VAD_SR, t["end"] / VAD_SR) for t in ref]
    assert _segments_silero(speech, cfg)  # the speech is found (the comparison is not between two empties)
