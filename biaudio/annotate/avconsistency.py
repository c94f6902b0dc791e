"""Audio-visual consistency score: cosine similarity of a clip's picture and sound embeddings.

Why: Sphere360 dropped clips whose sound does not belong to the picture (background music,
voice-over, post-produced audio) with an ImageBind score threshold. Here the embedding model is
pluggable and local (``local_files_only``, nothing downloaded):

* one checkpoint folder whose model has both ``get_image_features`` and ``get_audio_features``
  returning vectors in one space (an ImageBind-style model), or
* a folder with ``biaudio_av.json`` = ``{"image_tower": "<subfolder>", "audio_tower": "<subfolder>"}``,
  each a ``transformers`` checkpoint (e.g. a CLIP image tower and a CLAP audio tower). The two towers
  must have been aligned to one space (trained jointly, or a projection folded into one of them):
  off-the-shelf CLIP and CLAP each align to *text*, not to each other, and their cosine means nothing.

The score is ``cos(mean_f normalize(image(frame_f)), normalize(audio(clip)))``; the soundtrack is
mixed to mono at the audio tower's rate (the towers take one channel).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from biaudio.errors import BiaudioError

STAGE = "av_consistency"
SPEC_NAME = "biaudio_av.json"


def _features(out: Any):
    """transformers 5 returns a model output (``pooler_output`` = the projected embedding); 4.x a tensor."""
    return getattr(out, "pooler_output", None) if not hasattr(out, "shape") else out


class AVEmbedder:
    """Loads the towers once (per worker) and embeds batches of clips."""

    def __init__(self, model_path: Path, device: str = "cpu", frames: int = 4):
        self.path = Path(model_path)
        self.device = device
        self.frames = frames
        if not self.path.is_dir():
            raise BiaudioError(self.path, "model_path_missing",
                               "av_consistency.model_path is not a local folder (models are never downloaded)", STAGE)
        spec = self.path / SPEC_NAME
        if spec.is_file():
            try:
                d = json.loads(spec.read_text(encoding="utf-8"))
                self.image_dir, self.audio_dir = self.path / d["image_tower"], self.path / d["audio_tower"]
            except (ValueError, KeyError, TypeError) as e:
                raise BiaudioError(spec, "bad_av_model", f"needs image_tower and audio_tower ({e})", STAGE) from None
        elif (self.path / "config.json").is_file():
            self.image_dir = self.audio_dir = self.path
        else:
            raise BiaudioError(self.path, "bad_av_model", f"neither {SPEC_NAME} nor config.json in the folder", STAGE)
        for p in {self.image_dir, self.audio_dir}:
            if not (p / "config.json").is_file():
                raise BiaudioError(p, "model_path_missing", "tower folder has no config.json", STAGE)
        self._loaded: tuple[Any, Any, Any, Any] | None = None

    def model_names(self) -> list[str]:
        """The towers' ``model_type``s (recorded in the manifest)."""
        names = []
        for p in dict.fromkeys([self.image_dir, self.audio_dir]):
            try:
                names.append(json.loads((p / "config.json").read_text(encoding="utf-8")).get("model_type", "?"))
            except ValueError:
                names.append("?")
        return names

    def load(self):
        if self._loaded is None:
            from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoModel

            try:
                image_model = AutoModel.from_pretrained(str(self.image_dir), local_files_only=True)
                audio_model = image_model if self.audio_dir == self.image_dir else AutoModel.from_pretrained(
                    str(self.audio_dir), local_files_only=True)
                image_proc = AutoImageProcessor.from_pretrained(str(self.image_dir), local_files_only=True)
                audio_fe = AutoFeatureExtractor.from_pretrained(str(self.audio_dir), local_files_only=True)
            except (OSError, ValueError, ImportError) as e:
                raise BiaudioError(self.path, "model_load_failed", f"audio-visual embedding model: {e}", STAGE) from None
            for m, what in ((image_model, "get_image_features"), (audio_model, "get_audio_features")):
                if not hasattr(m, what):
                    raise BiaudioError(self.path, "bad_av_model", f"{type(m).__name__} has no {what}", STAGE)
            image_model.to(self.device).eval()
            audio_model.to(self.device).eval()
            self._loaded = (image_model, audio_model, image_proc, audio_fe)
        return self._loaded

    def decode(self, video_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(``frames`` evenly spaced RGB frames, mono float32 audio at the audio tower's rate)."""
        from biaudio.media.audio import decode_audio
        from biaudio.media.probe import probe
        from biaudio.media.video import iter_frames

        _, _, _, fe = self.load()
        info = probe(video_path)
        dur = float(info.duration_s or 0) or 1.0
        frames = list(iter_frames(video_path, fps=self.frames / dur, info=info))[: self.frames]
        if not frames:
            raise BiaudioError(video_path, "no_frames", "no video frame decoded", STAGE)
        sr = int(getattr(fe, "sampling_rate", None) or 48000)
        x, _ = decode_audio(video_path, sr=sr)
        return np.stack(frames), x.mean(axis=0).astype(np.float32)

    def score_decoded(self, decoded: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        """Scores of N decoded clips: one image forward for all their frames, one audio forward."""
        import torch

        image_model, audio_model, image_proc, fe = self.load()
        counts = [len(f) for f, _ in decoded]
        frames = [fr for f, _ in decoded for fr in f]
        with torch.no_grad():
            px = image_proc(images=frames, return_tensors="pt").to(self.device)
            img = _features(image_model.get_image_features(**px)).float()
            sr = int(getattr(fe, "sampling_rate", None) or 48000)
            feats = fe([a for _, a in decoded], sampling_rate=sr, return_tensors="pt").to(self.device)
            aud = _features(audio_model.get_audio_features(**feats)).float()
        if img.shape[-1] != aud.shape[-1]:
            raise BiaudioError(self.path, "bad_av_model",
                               f"image embeddings have {img.shape[-1]} dims, audio {aud.shape[-1]}: "
                               "the towers must share one space", STAGE)
        img = torch.nn.functional.normalize(img, dim=-1)
        aud = torch.nn.functional.normalize(aud, dim=-1)
        out, k = [], 0
        for i, n in enumerate(counts):
            v = torch.nn.functional.normalize(img[k:k + n].mean(dim=0), dim=-1)
            out.append(float((v * aud[i]).sum()))
            k += n
        return out
