"""Speech / voice-over ratio on the W (omni) channel.

Why: narration and talking-head voice-over are not spatial scene sound; Sphere360 dropped clips
with much speech (ASR character count). Here a voice-activity detector gives the fraction of the
clip that is speech. Two backends:

- ``silero`` (default): the JIT model that ships inside the ``silero-vad`` wheel; fully offline.
- ``pyannote``: pyannote.audio's VoiceActivityDetection pipeline over a segmentation checkpoint
  from a local path (no token) or a Hugging Face id with a user token. Audio is passed in memory as
  ``{"waveform": (1, T), "sample_rate": 16000}`` (no torchcodec file decoding) and telemetry is
  switched off before import.

Both produce speech segments, turned into a frame activity vector on a fixed hop covering exactly
the input duration, so scores from the two backends are comparable and aligned with the clip.

Per clip: :func:`window_speech` takes a clip's share of the source's activity vector. ``spans``
limits the detector to the parts of the source that still matter (the clips that survived the
silence filter), since the detector is the costliest part of the ingest filters; frames outside
the spans are neither speech nor counted.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from biaudio.clean import FilterResult
from biaudio.errors import BiaudioError

VAD_SR = 16000


class SpeechConfig(BaseModel):
    """Recipe section ``clean.speech``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    backend: Literal["silero", "pyannote"] = "silero"
    max_speech_ratio: float = Field(0.5, ge=0, le=1, description="reject (reason 'speech') above this ratio")
    # silero
    silero_threshold: float = Field(0.5, ge=0, le=1)
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    # pyannote
    checkpoint: str | None = Field(None, description="local checkpoint path/folder or Hugging Face model id")
    hf_token_env: str = Field("HF_TOKEN", description="environment variable holding the token for a hub id")
    onset: float = 0.5
    offset: float = 0.5
    min_duration_on: float = 0.0
    min_duration_off: float = 0.0
    # common
    frame_s: float = Field(0.02, gt=0, description="hop of the activity timeline")
    torch_threads: int | None = Field(1, description="torch intra-op threads (None = leave as is)")


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == VAD_SR:
        return x.astype(np.float32, copy=False)
    from biaudio.media.audio import resample

    return resample(x.astype(np.float64), int(sr), VAD_SR).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _silero_model():
    from silero_vad import load_silero_vad

    return load_silero_vad(onnx=False)


@functools.lru_cache(maxsize=4)
def _pyannote_pipeline(checkpoint: str, token: str | None, onset: float, offset: float, on: float, off: float):
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
    from pyannote.audio import Model
    from pyannote.audio.pipelines import VoiceActivityDetection

    model = Model.from_pretrained(checkpoint, token=token) if token else Model.from_pretrained(checkpoint)
    if model is None:
        raise BiaudioError(checkpoint, "vad_checkpoint", "pyannote could not load the checkpoint", stage="clean")
    pipe = VoiceActivityDetection(segmentation=model)
    params = {"min_duration_on": on, "min_duration_off": off}
    if not model.specifications.powerset:
        params.update(onset=onset, offset=offset)
    pipe.instantiate(params)
    return pipe


_SILERO_CHUNK = 512  # samples per Silero VAD step at 16 kHz


def silero_probs(x16: np.ndarray) -> list[float]:
    """Silero's speech probability per 512-sample step of 16-kHz audio, from one ``audio_forward`` call.

    Why not ``get_speech_timestamps``' own loop: it calls the model once per step from Python
    (~40 % of the VAD time); ``audio_forward`` runs the same steps, zero-padding the last one the
    same way, inside TorchScript and gives the same probabilities bit for bit (tested)."""
    import torch

    model = _silero_model()
    x = torch.from_numpy(np.ascontiguousarray(x16, dtype=np.float32))
    if len(x) < _SILERO_CHUNK:  # audio_forward refuses less than one step; the loop pads it
        x = torch.nn.functional.pad(x, (0, _SILERO_CHUNK - len(x)))
    model.reset_states()
    with torch.no_grad():
        probs = model.audio_forward(x, VAD_SR)[0].tolist()
    model.reset_states()
    return probs


def _segments_silero(x16: np.ndarray, cfg: SpeechConfig) -> list[tuple[float, float]]:
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    ts = get_speech_timestamps_from_probs(silero_probs(x16), sampling_rate=VAD_SR, threshold=cfg.silero_threshold,
                                          min_speech_duration_ms=cfg.min_speech_ms,
                                          min_silence_duration_ms=cfg.min_silence_ms, audio_length_samples=len(x16))
    return [(t["start"] / VAD_SR, t["end"] / VAD_SR) for t in ts]


def _segments_pyannote(x16: np.ndarray, cfg: SpeechConfig) -> tuple[list[tuple[float, float]], dict]:
    import torch

    if not cfg.checkpoint:
        raise BiaudioError(None, "vad_checkpoint", "clean.speech.backend=pyannote needs clean.speech.checkpoint", stage="clean")
    local = os.path.exists(cfg.checkpoint)
    token = None if local else os.environ.get(cfg.hf_token_env)
    try:
        pipe = _pyannote_pipeline(cfg.checkpoint, token, cfg.onset, cfg.offset, cfg.min_duration_on, cfg.min_duration_off)
    except BiaudioError:
        raise
    except Exception as e:  # hub/network/format errors from pyannote or huggingface_hub
        raise BiaudioError(cfg.checkpoint, "vad_checkpoint", f"{type(e).__name__}: {e}", stage="clean") from None
    audio = {"waveform": torch.from_numpy(x16)[None], "sample_rate": VAD_SR, "uri": "w"}
    ann = pipe(audio)
    segs = [(float(s.start), float(s.end)) for s in ann.get_timeline().support()]
    return segs, {"local_checkpoint": local}


def activity_from_segments(segments: list[tuple[float, float]], duration_s: float, frame_s: float) -> np.ndarray:
    """Binary activity per ``frame_s`` hop over ``[0, duration_s)`` (frame centre inside a segment)."""
    n = max(1, int(math.ceil(duration_s / frame_s - 1e-9)))
    centres = (np.arange(n) + 0.5) * frame_s
    act = np.zeros(n, dtype=bool)
    for s, e in segments:
        act |= (centres >= s) & (centres < min(e, duration_s))
    return act


@functools.lru_cache(maxsize=1)
def _silero_version() -> str:
    from importlib.metadata import version

    return version("silero-vad")


def _merge(spans: list[tuple[float, float]], duration: float) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted((max(0.0, float(a)), min(duration, float(b))) for a, b in spans):
        if b <= a:
            continue
        if out and a <= out[-1][1] + 1e-9:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def speech_score(w: np.ndarray, sr: int, cfg: SpeechConfig | None = None,
                 spans: list[tuple[float, float]] | None = None) -> FilterResult:
    """Speech ratio of the W channel ``w`` (T,); rejects with reason ``speech`` above the threshold.

    ``spans``: run the detector only on these ``(start_s, end_s)`` parts (each on its own, the
    detector state reset); the ratio is then over those parts. ``None`` = the whole input.

    ``extra``: backend, checkpoint, segments (s), the activity timeline (``frame_s`` hop, covering
    the input duration) and its length in seconds, and ``analyzed_s`` (seconds the detector saw).
    """
    cfg = cfg or SpeechConfig()
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 1:
        raise BiaudioError(None, "bad_shape", f"speech_score wants the W channel (T,), got {w.shape}", stage="clean")
    duration = w.shape[0] / float(sr)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    x16 = _resample(w, sr)
    extra: dict = {"backend": cfg.backend, "checkpoint": cfg.checkpoint if cfg.backend == "pyannote" else None}
    if cfg.backend == "silero":
        extra["checkpoint"] = f"silero-vad {_silero_version()} (bundled JIT)"
    parts = [(0.0, duration)] if spans is None else _merge(spans, duration)
    segs: list[tuple[float, float]] = []
    for a, b in parts:
        i0, i1 = int(round(a * VAD_SR)), min(x16.shape[0], int(round(b * VAD_SR)))
        if i1 <= i0:
            continue
        x = x16 if (i0, i1) == (0, x16.shape[0]) else np.ascontiguousarray(x16[i0:i1])
        if cfg.backend == "silero":
            found = _segments_silero(x, cfg)
        else:
            found, more = _segments_pyannote(x, cfg)
            extra.update(more)
        segs += [(a + s, min(b, a + e)) for s, e in found]
    act = activity_from_segments(segs, duration, cfg.frame_s)
    if spans is None:
        ratio = float(act.mean()) if act.size else 0.0
        analyzed = duration
    else:
        mask = activity_from_segments(parts, duration, cfg.frame_s)
        ratio = float(act[mask].mean()) if mask.any() else 0.0
        analyzed = float(sum(b - a for a, b in parts))
    passed = ratio <= cfg.max_speech_ratio
    extra.update(segments=[[round(s, 3), round(e, 3)] for s, e in segs], frame_s=cfg.frame_s,
                 activity=act.astype(np.uint8).tolist(), timeline_s=act.size * cfg.frame_s, duration_s=duration,
                 analyzed_s=analyzed)
    detail = f"speech {ratio:.1%} of {analyzed:.2f} s ({cfg.backend})"
    return FilterResult("speech", ratio, passed, None if passed else "speech", detail, extra)


def window_speech(source: FilterResult, start_s: float, end_s: float, cfg: SpeechConfig | None = None) -> FilterResult:
    """One clip's speech verdict from the source's result (its ``activity`` frames in the window)."""
    cfg = cfg or SpeechConfig()
    ex = source.extra
    hop = float(ex.get("frame_s", cfg.frame_s))
    act = np.asarray(ex.get("activity", []), dtype=np.uint8)[int(round(start_s / hop)):int(round(end_s / hop))]
    ratio = float(act.mean()) if act.size else 0.0
    passed = ratio <= cfg.max_speech_ratio
    extra = {k: ex[k] for k in ("backend", "checkpoint") if k in ex}
    detail = f"speech {ratio:.1%} in {start_s:g}-{end_s:g} s ({extra.get('backend', cfg.backend)})"
    return FilterResult("speech", ratio, passed, None if passed else "speech", detail, extra)
