"""Generation: Euler sampler with classifier-free guidance, on any perspective video.

The model works on windows of ``clip_seconds``. A longer video is generated window by window
(consecutive windows, each with its own seed offset) and trimmed to the video's length, so the
output always has the video's duration. A video shorter than one window is refused with a clear
error (``VideoTooShortError``) rather than padded: padding would make the model describe frames
that do not exist. Videos at any size and frame rate are resampled to the model's (stretching,
not cropping, so horizontal positions - the side cue - are kept).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from biaudio.atomic import atomic_path
from visaudio.checkpoint import (
    CKPT_NAME,
    CheckpointUnreadable,
    build_model,
    load_checkpoint,
    load_weights,
    newest_checkpoint,
)
from visaudio.config import Config, check_side_noise, load_config
from visaudio.data import DataError, VideoTooShortError, read_video_frames


class GenerationError(RuntimeError):
    """Generation cannot give usable audio (bad sampler settings, non-finite output)."""


def check_sampler_args(steps: int, cfg: float, side_noise: float | None = None) -> None:
    """Refuse settings that would silently give noise: 0 Euler steps returns the prior noise
    itself, and a NaN/inf guidance scale makes every sample NaN; a side-noise temperature
    outside [0, 1] is none the model knows."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GenerationError(f"steps must be a whole number >= 1 (e.g. 25), got {steps!r}")
    if not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
        raise GenerationError(f"cfg (guidance scale) must be a finite number (e.g. 4.5; 1.0 = no guidance), "
                              f"got {cfg!r}")
    if side_noise is not None:
        try:
            check_side_noise(side_noise)
        except ValueError as e:
            raise GenerationError(str(e)) from None


def video_duration(path: str | Path) -> float:
    from biaudio.media.ffprobe import duration

    d = duration(path)
    if d is None:
        raise VideoTooShortError(f"cannot read the duration of {path} (ffprobe found none)")
    return d


class Synthesizer:
    def __init__(self, model, codec, config: Config, device: str = "cpu"):
        self.model, self.codec, self.config = model.eval(), codec.eval(), config
        self.device = torch.device(device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu", use_ema: bool = True,
                 config: str | Path | Config | None = None) -> Synthesizer:
        """Load a run's last checkpoint. ``config`` (optional) must describe the same
        architecture, otherwise CheckpointMismatch is raised."""
        p = Path(run_dir)
        want = load_config(config) if config is not None else None
        if p.is_dir():  # a run folder: its newest readable checkpoint (prev.pt if last.pt is damaged)
            found = newest_checkpoint(p / "ckpt", want)
            if found is None:
                raise CheckpointUnreadable(f"no checkpoint in {p / 'ckpt'} (expected {CKPT_NAME}); pass a run "
                                           "folder written by `visaudio train` or a .pt file")
            ck_path, ck = found
        else:
            if not p.is_file():
                raise FileNotFoundError(f"no checkpoint at {p}")
            ck_path, ck = p, load_checkpoint(p, want)
        cfg = load_config(ck["config"])
        # the VAE codec weights travel inside the checkpoint; don't need the original file
        if cfg.codec.kind == "vae":
            from visaudio.model import ViSAudio
            from visaudio.model.codecs import VAECodec

            codec = VAECodec(cfg.codec, cfg.data.sample_rate)
            codec.load_state_dict(ck["codec_state"])
            model = ViSAudio(cfg, codec.latent_dim)
        else:
            model, codec = build_model(cfg, "cpu")
        key = "ema" if (use_ema and "ema" in ck) or "model" not in ck else "model"
        load_weights(model, ck[key], ck_path)
        return cls(model.to(device), codec.to(device), cfg, device)

    @property
    def sample_rate(self) -> int:
        return self.config.data.sample_rate

    @property
    def clip_seconds(self) -> float:
        return self.config.data.clip_seconds

    @torch.no_grad()
    def _window(self, frames: np.ndarray, caption: str | None, steps: int, cfg: float, seed: int,
                side_noise: float | None = None) -> np.ndarray:
        m = self.model
        fr = torch.from_numpy(np.ascontiguousarray(frames))[None].to(self.device)
        cond = m.encode_conditions(fr, [caption])
        x = m.sample(cond, steps=steps, cfg=cfg, seed=seed, side_noise=side_noise)
        a = self.codec.decode(m.denormalize(x), self.config.window_samples)
        return a[0].float().cpu().numpy()

    def generate_frames(self, frames: np.ndarray, fps: float, caption: str | None = None, steps: int = 25,
                        cfg: float = 4.5, seed: int = 0, side_noise: float | None = None) -> tuple[np.ndarray, int]:
        """Frames (F, H, W, 3) uint8 at ``fps`` -> binaural audio (2, round(F/fps*sr)) float32.
        ``side_noise``: the sampler's side-noise temperature (None: the run's generate.side_noise)."""
        d = self.config.data
        check_sampler_args(steps, cfg, side_noise)
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape}")
        dur = frames.shape[0] / float(fps)
        if dur + 1e-6 < self.clip_seconds:
            raise VideoTooShortError(f"video is {dur:.2f} s, shorter than the model window {self.clip_seconds} s")
        # resample in time (nearest frame) and space (area) to the model's sync stream
        n_sync = int(round(dur * d.sync_fps))
        idx = np.minimum((np.arange(n_sync) + 0.5) / d.sync_fps * fps, frames.shape[0] - 1).astype(int)
        sel = frames[idx]
        if sel.shape[1:3] != (d.height, d.width):
            import cv2

            sel = np.stack([cv2.resize(f, (d.width, d.height), interpolation=cv2.INTER_AREA) for f in sel])
        return self._generate_sync_frames(sel, dur, caption, steps, cfg, seed, side_noise)

    def _generate_sync_frames(self, sync: np.ndarray, dur: float, caption, steps, cfg, seed,
                              side_noise: float | None = None) -> tuple[np.ndarray, int]:
        c = self.config
        total = int(round(dur * c.data.sample_rate))
        n_win = int(np.ceil(total / c.window_samples - 1e-9))
        out = []
        for w in range(n_win):
            s = w * c.n_sync_frames
            if w == n_win - 1:  # last window: align to the end instead of padding
                s = max(0, sync.shape[0] - c.n_sync_frames)
            fr = sync[s : s + c.n_sync_frames]
            if fr.shape[0] < c.n_sync_frames:
                fr = np.concatenate([fr, np.repeat(fr[-1:], c.n_sync_frames - fr.shape[0], 0)])
            a = self._window(fr, caption, steps, cfg, seed + w, side_noise)
            if w == n_win - 1 and n_win > 1:
                keep = total - w * c.window_samples
                a = a[:, c.window_samples - keep :] if keep < c.window_samples else a
            out.append(a)
        audio = np.concatenate(out, axis=1)[:, :total]
        if audio.shape[1] < total:
            audio = np.pad(audio, ((0, 0), (0, total - audio.shape[1])))
        return audio.astype(np.float32), c.data.sample_rate

    def generate(self, video_path: str | Path, caption: str | None = None, steps: int = 25, cfg: float = 4.5,
                 seed: int = 0, start_s: float = 0.0, duration_s: float | None = None,
                 side_noise: float | None = None) -> tuple[np.ndarray, int]:
        """Binaural audio (2, T) for the video from ``start_s`` to its end (or ``duration_s``);
        ``side_noise`` as in :meth:`generate_frames`."""
        d = self.config.data
        check_sampler_args(steps, cfg, side_noise)
        total = video_duration(video_path) - start_s
        if duration_s is not None:
            total = min(total, duration_s)
        if total + 1e-3 < self.clip_seconds:
            raise VideoTooShortError(f"{video_path}: {total:.2f} s from {start_s} s is shorter than the model "
                                     f"window {self.clip_seconds} s")
        sync = read_video_frames(video_path, d.sync_fps, d.width, d.height, start_s, total)
        return self._generate_sync_frames(sync, total, caption, steps, cfg, seed, side_noise)


def mux_audio(video_path: str | Path, audio_path: str | Path, out_path: str | Path) -> Path:
    """Copy the video stream (H.264 re-encoded only if it isn't) and add the audio as AAC
    (intensity stereo and PNS off: they would rewrite the generated interaural cues)."""
    from biaudio.errors import MediaError
    from biaudio.media.video import mux_file

    try:
        return mux_file(video_path, audio_path, out_path)
    except MediaError as e:
        raise RuntimeError(f"ffmpeg mux failed: {e.detail[-400:]}") from None


def generate_to_files(video: str | Path, run_dir: str | Path, out_mp4: str | Path, caption: str | None = None,
                      steps: int = 25, cfg: float = 4.5, seed: int = 0, device: str = "cpu",
                      side_noise: float | None = None) -> dict:
    """CLI body: writes OUT.flac (lossless, 24-bit) and OUT.mp4 (video + AAC)."""
    import time

    import soundfile as sf

    check_sampler_args(steps, cfg, side_noise)

    from biaudio.media.ffpath import same_file

    out = Path(out_mp4)
    for o in (out, out.with_suffix(".flac")):
        if same_file(o, video):
            raise DataError(f"{o} is the input video; choose another --out (inputs are never overwritten)")
    syn = Synthesizer.from_run(run_dir, device=device)
    t0 = time.time()
    audio, sr = syn.generate(video, caption=caption, steps=steps, cfg=cfg, seed=seed, side_noise=side_noise)
    secs = time.time() - t0
    if not np.isfinite(audio).all():  # refuse before writing: a NaN FLAC plays as silence or clicks
        raise GenerationError(f"the model gave non-finite audio (NaN/inf) for {video}; the checkpoint "
                              f"{run_dir} may hold diverged weights. Nothing was written")
    out = Path(out_mp4)
    flac = out.with_suffix(".flac")
    flac.parent.mkdir(parents=True, exist_ok=True)
    from biaudio.media.audio import limit_peak

    audio = limit_peak(audio, 1.0, target=0.99)  # keep the L/R ratio: scale both channels together, never clip
    with atomic_path(flac, keep_suffix=True) as tmp:  # whole file or none, like the mp4
        sf.write(str(tmp), audio.T, sr, subtype="PCM_24")
    mux_audio(video, flac, out)
    return {"flac": str(flac), "mp4": str(out), "seconds": secs, "duration_s": audio.shape[1] / sr, "sr": sr}
