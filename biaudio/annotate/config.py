"""The ``annotate`` recipe section (also set by ``biaudio annotate`` options).

Why outside the recipe hash: annotations never change the build's media or rows, so turning
captions on (or changing the consistency threshold) must not make the build render everything
again. The annotation's own identity (models, checkpoint hashes, prompts) keys its per-clip
records instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from biaudio.stages.caption import CaptionConfig


class AVConsistencyConfig(BaseModel):
    """Audio-visual consistency: does the sound belong to the picture? (Sphere360's filter.)"""

    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = None
    """A local folder: one checkpoint whose model has ``get_audio_features`` and ``get_image_features``
    in one shared space (ImageBind-style), or a folder with ``biaudio_av.json`` naming an audio tower
    and an image tower (e.g. CLAP + CLIP) that were aligned to one space. ``None``: stage off."""
    frames: int = Field(4, ge=1, le=64)
    """Frames per clip, evenly spaced; their L2-normalised embeddings are averaged."""
    threshold: float | None = None
    """Score (cosine similarity, -1..1) below which a clip is marked; ``None``: score only."""
    action: Literal["reject", "flag"] = "reject"
    """What a score below the threshold does to a clip still ``pending`` in QA: ``qa_status``
    ``rejected`` or ``flagged``, with ``qa_reason`` ``av_inconsistent: ...``. Human decisions win."""


class AnnotateConfig(BaseModel):
    """Recipe section ``annotate``: which annotations ``biaudio annotate`` makes, and how it runs."""

    model_config = ConfigDict(extra="forbid")

    captions: CaptionConfig = Field(default_factory=CaptionConfig)
    """Same keys as the build's ``caption`` section; ``backend: none`` turns the caption stage off."""
    av_consistency: AVConsistencyConfig = Field(default_factory=AVConsistencyConfig)
    batch_size: int = Field(8, ge=1, le=1024)
    """Clips per model forward (greedy decoding: a batch gives the same captions as single clips)."""
    decode_threads: int = Field(4, ge=1, le=64)
    """Clips of a batch decoded at once (ffmpeg processes) before the batch's forward."""
    device: str = "auto"
    """torch device of every worker: ``auto`` (``cuda`` when a GPU is there, else ``cpu``), ``cpu``,
    ``cuda``, ``cuda:1``... Under Ray use ``cuda`` or ``auto``: each actor sees only its own GPU."""
    executor: Literal["local", "ray"] = "local"
    """``local``: one worker in this process; ``ray``: one actor per GPU (or per ``workers``)."""
    workers: int | None = Field(None, ge=1)
    """Ray actors (default: the cluster's GPUs with ``device: cuda``, else 1)."""
    ray_address: str | None = None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` if torch sees a GPU (in this process: under Ray, the actor's own), else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
