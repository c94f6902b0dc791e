"""Condition encoders: video patch tokens, motion/sync stream, text, optional camera trajectory.

Why from scratch by default: nothing may be downloaded at run time, so the visual streams are
small CNNs trained with the generator. Pretrained frozen encoders from local folders
(``visaudio.pretrained``: CLIP/SigLIP patch tokens, VideoMAE/V-JEPA 2 motion, a MiniLM-style
text encoder) replace them when the config names their folders; the encoders here then only
project those features to the model width.
The patch stream keeps a spatial grid because the left/right cue lives in *where* a sounding
object is in the picture; the sync stream works on frame differences at a higher rate because
onsets are visible as motion.
"""

from __future__ import annotations

import math
import re
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from visaudio.config import Config

_MEAN = torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1)
_STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 -> (B*F, 3, H, W) normalised float."""
    B, Fn, H, W, _ = frames.shape
    x = frames.reshape(B * Fn, H, W, 3).permute(0, 3, 1, 2).float() / 255.0
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


def sincos_1d(n: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """2-D position encoding (h*w, dim): half the channels encode the row, half the column."""
    ph = sincos_1d(h, dim // 2, device)[:, None, :].expand(h, w, dim // 2)
    pw = sincos_1d(w, dim // 2, device)[None, :, :].expand(h, w, dim // 2)
    return torch.cat([ph, pw], dim=-1).reshape(h * w, dim)


def _cnn(channels: list[int], out: int) -> nn.Sequential:
    """Strided 3x3 conv stack. No normalisation layers: GroupNorm at full resolution cost ~25%
    of a CPU training step, and the adaLN-Zero transformer downstream tolerates raw scales."""
    layers: list[nn.Module] = []
    cin = 3
    for c in channels:
        layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.GELU()]
        cin = c
    layers += [nn.Conv2d(cin, out, 3, stride=2, padding=1)]
    return nn.Sequential(*layers)


class VideoEncoder(nn.Module):
    """Frames -> per-frame patch tokens on a grid (B, F, gh, gw, D)."""

    def __init__(self, cfg: Config, pretrained_dim: int | None = None):
        super().__init__()
        m = cfg.model
        self.backbone = None
        # pretrained.image: the frozen tower's pooled patch tokens arrive as features
        self.pre = nn.Linear(pretrained_dim, m.hidden) if pretrained_dim else None
        if self.pre is not None:
            self.cnn = None
        elif m.video_backbone_path:
            self.backbone = torch.jit.load(m.video_backbone_path, map_location="cpu").eval()
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            with torch.no_grad():
                c = self.backbone(torch.zeros(1, 3, cfg.data.height, cfg.data.width)).shape[1]
            self.cnn = nn.Conv2d(c, m.hidden, 1)
        else:
            self.cnn = _cnn(m.video_channels, m.hidden)

    def forward(self, frames: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre is not None:  # (B, F, rows, cols, D_image) -> (B, F, rows, cols, D)
            if features is None:
                raise ValueError("this model uses pretrained.image: pass its 'image' features")
            return self.pre(features.float())
        B, Fn = frames.shape[:2]
        x = frames_to_float(frames)
        if self.backbone is not None:
            with torch.no_grad():
                x = self.backbone(x)
        y = self.cnn(x)  # (BF, D, gh, gw)
        D, gh, gw = y.shape[1:]
        return y.permute(0, 2, 3, 1).reshape(B, Fn, gh, gw, D)


class SyncEncoder(nn.Module):
    """Frame differences at sync_fps -> one motion feature per sync frame (B, Fs, D)."""

    def __init__(self, cfg: Config, pretrained_dim: int | None = None):
        super().__init__()
        D = cfg.model.hidden
        # pretrained.motion: per-tubelet features of the frozen video model arrive as features
        self.pre = nn.Sequential(nn.Linear(pretrained_dim, D), nn.GELU()) if pretrained_dim else None
        self.cnn = None if self.pre is not None else _cnn(cfg.model.sync_channels, D)
        self.out = nn.Linear(D, D)

    def forward(self, frames: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre is not None:  # (B, M, D_motion) -> (B, M, D)
            if features is None:
                raise ValueError("this model uses pretrained.motion: pass its 'motion' features")
            return self.out(self.pre(features.float()))
        B, Fn = frames.shape[:2]
        x = frames.float() / 255.0
        d = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)  # (B,F,H,W,3)
        # motion needs timing more than detail: half resolution
        d = F.avg_pool2d(d.reshape(B * Fn, *d.shape[2:]).permute(0, 3, 1, 2), 2)
        y = self.cnn(d * 4.0)
        y = y.mean(dim=(2, 3)).reshape(B, Fn, -1)
        return self.out(F.gelu(y))


_WORD = re.compile(r"[a-z0-9']+")


def hash_tokens(caption: str | None, vocab: int, max_len: int) -> list[int]:
    """Stable (crc32) word hashing; 0 is padding, 1 is 'no caption'."""
    if caption is None:
        return [1] + [0] * (max_len - 1)
    ids = [2 + zlib.crc32(w.encode()) % (vocab - 2) for w in _WORD.findall(caption.lower())][:max_len]
    return ids + [0] * (max_len - len(ids))


class HashedTextEncoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.vocab, self.max_len = cfg.model.text_vocab, cfg.data.max_text_tokens
        self.emb = nn.Embedding(self.vocab, cfg.model.hidden)
        self.pos = nn.Parameter(torch.randn(self.max_len, cfg.model.hidden) * 0.02)

    def forward(self, captions: list[str | None], states=None, mask=None) -> torch.Tensor:
        ids = torch.tensor([hash_tokens(c, self.vocab, self.max_len) for c in captions], device=self.pos.device)
        return self.emb(ids) + self.pos


class MiniLMTextEncoder(nn.Module):
    """Frozen BERT-family token states (``visaudio.pretrained.TextPart``: transformers AutoModel,
    offline) projected to the model width; a learned sequence stands for "no caption". The frozen
    network is kept outside the module tree so checkpoints stay small; it is loaded only when
    captions arrive without precomputed ``text`` features."""

    def __init__(self, cfg: Config, text_dim: int = 384):
        super().__init__()
        self.cfg, self.max_len = cfg, cfg.data.max_text_tokens
        self.proj = nn.Linear(text_dim, cfg.model.hidden)
        self.no_caption = nn.Parameter(torch.randn(self.max_len, cfg.model.hidden) * 0.02)
        from visaudio.pretrained import PartSlot

        self._part = PartSlot()  # not a submodule; a deepcopy (EMA) shares the loaded part

    def part(self):
        if not self._part:
            from visaudio.pretrained import TextPart, shared_part

            self._part.append(shared_part(TextPart, self.cfg))
        return self._part[0]

    def forward(self, captions: list[str | None], states: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        dev = self.proj.weight.device
        if states is None:
            states, mask = self.part().features(captions)
        states, mask = states.to(dev).float(), mask.to(dev).float()
        has = (mask.sum(-1) > 0)[:, None, None]
        return torch.where(has, self.proj(states), self.no_caption[None].to(states.dtype))


def build_text_encoder(cfg: Config, text_dim: int | None = None) -> nn.Module:
    return MiniLMTextEncoder(cfg, text_dim or 384) if cfg.model.text_encoder == "minilm" else HashedTextEncoder(cfg)


class TrajectoryEncoder(nn.Module):
    """(yaw, pitch, roll) in degrees per latent step -> sin/cos + rates -> per-token condition."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(9, cfg.model.hidden), nn.GELU(), nn.Linear(cfg.model.hidden, cfg.model.hidden))

    def forward(self, traj: torch.Tensor) -> torch.Tensor:  # (B, N, 3) degrees
        r = torch.deg2rad(traj)
        rate = torch.diff(r, dim=1, prepend=r[:, :1])
        return self.mlp(torch.cat([torch.sin(r), torch.cos(r), rate * 10.0], dim=-1))
