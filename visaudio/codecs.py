"""Per-channel audio codecs (one set of weights for L and R), pluggable by ``codec.kind``.

All codecs map audio ``(B, C, T)`` to latent sequences ``(B, C, N, D)`` with ``N = T // hop`` and
back. Each channel is coded on its own (the paper's "Mono-VAE" idea), so interaural differences
must survive per-channel coding:

* ``stft``: compressed complex STFT ``|X|^c e^{j phi}``; exactly invertible, so interaural phase
  (ITD) and level (ILD) survive bit-for-bit up to float error. Default for tiny runs.
* ``mel``: log-mel + Griffin-Lim; phase is arbitrary, only level cues survive (an ablation).
* ``vae``: a small learned conv autoencoder on the waveform, trained by ``visaudio train-codec``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from visaudio.config import CodecConfig, ConfigError


class Codec(nn.Module):
    hop: int
    latent_dim: int
    sample_rate: int
    centered = True  # frames centred on k*hop, k = 0..T/hop (both ends included)

    def n_latents(self, n_samples: int) -> int:
        return n_samples // self.hop + (1 if self.centered else 0)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:  # (B,C,T) -> (B,C,N,D)
        raise NotImplementedError

    def decode(self, z: torch.Tensor, length: int | None = None) -> torch.Tensor:  # (B,C,N,D) -> (B,C,T)
        raise NotImplementedError


class STFTCodec(Codec):
    """Compressed complex STFT. ``center=True`` with a periodic Hann at hop = n_fft/2 satisfies
    COLA, so ``istft(stft(x)) == x``; the magnitude compression is an invertible pointwise map."""

    def __init__(self, cfg: CodecConfig, sample_rate: int):
        super().__init__()
        self.n_fft, self.hop, self.c = cfg.n_fft, cfg.hop, cfg.compress
        self.sample_rate = sample_rate
        self.latent_dim = 2 * (self.n_fft // 2 + 1)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        B, C, T = audio.shape
        n = self.n_latents(T)
        X = torch.stft(audio.reshape(B * C, T).float(), self.n_fft, self.hop, window=self.window, center=True,
                       return_complex=True)[..., :n]  # (BC, F, N)
        mag = X.abs()
        Y = X * (mag.clamp_min(1e-12) ** (self.c - 1.0))
        z = torch.cat([Y.real, Y.imag], dim=1).transpose(1, 2)  # (BC, N, 2F)
        return z.reshape(B, C, n, self.latent_dim)

    def decode(self, z: torch.Tensor, length: int | None = None) -> torch.Tensor:
        B, C, N, D = z.shape
        f = D // 2
        z = z.float().reshape(B * C, N, D).transpose(1, 2)
        Y = torch.complex(z[:, :f], z[:, f:])
        mag = Y.abs()
        X = Y * (mag.clamp_min(1e-12) ** (1.0 / self.c - 1.0))
        length = length or (N - 1) * self.hop
        x = torch.istft(X, self.n_fft, self.hop, window=self.window, center=True, length=length)
        return x.reshape(B, C, length)


class MelCodec(Codec):
    """Log-mel latents; decoding inverts the mel filterbank then runs Griffin-Lim (phase lost)."""

    def __init__(self, cfg: CodecConfig, sample_rate: int):
        super().__init__()
        import torchaudio

        self.n_fft, self.hop, self.sample_rate = cfg.n_fft, cfg.hop, sample_rate
        self.latent_dim = cfg.n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop,
                                                        n_mels=cfg.n_mels, power=1.0)
        self.inv = torchaudio.transforms.InverseMelScale(cfg.n_fft // 2 + 1, cfg.n_mels, sample_rate)
        self.gl = torchaudio.transforms.GriffinLim(n_fft=cfg.n_fft, hop_length=cfg.hop, power=1.0,
                                                   n_iter=cfg.griffin_lim_iters)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        B, C, T = audio.shape
        n = self.n_latents(T)
        m = self.mel(audio.reshape(B * C, T).float())[..., :n]
        return torch.log(m.clamp_min(1e-5)).transpose(1, 2).reshape(B, C, n, self.latent_dim)

    def decode(self, z: torch.Tensor, length: int | None = None) -> torch.Tensor:
        B, C, N, D = z.shape
        m = torch.exp(z.float().reshape(B * C, N, D).transpose(1, 2))
        spec = self.inv(m).clamp_min(0)
        x = self.gl(spec)
        length = length or (N - 1) * self.hop
        x = F.pad(x, (0, max(0, length - x.shape[-1])))[..., :length]
        return x.reshape(B, C, length)


class VAECodec(Codec):
    """Waveform conv autoencoder, one channel at a time. The 'VAE' keeps a small KL term so the
    latent is smooth enough for flow matching; it is trained from scratch by ``train_codec``."""

    centered = False

    def __init__(self, cfg: CodecConfig, sample_rate: int):
        super().__init__()
        self.hop, self.sample_rate, self.latent_dim = cfg.hop, sample_rate, cfg.vae_latent
        ch = cfg.vae_channels
        enc: list[nn.Module] = [nn.Conv1d(1, ch, 7, padding=3)]
        for s in cfg.vae_strides:
            enc += [nn.GELU(), nn.Conv1d(ch, ch, 2 * s + 1, stride=s, padding=s)]
        enc += [nn.GELU(), nn.Conv1d(ch, 2 * cfg.vae_latent, 3, padding=1)]
        self.enc = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(cfg.vae_latent, ch, 3, padding=1)]
        for s in reversed(cfg.vae_strides):
            dec += [nn.GELU(), nn.ConvTranspose1d(ch, ch, 2 * s, stride=s, padding=s // 2)]
        dec += [nn.GELU(), nn.Conv1d(ch, 1, 7, padding=3)]
        self.dec = nn.Sequential(*dec)

    def _moments(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
        B, C, T = audio.shape
        n = self.n_latents(T)
        x = audio.reshape(B * C, 1, T)[..., : n * self.hop]
        h = self.enc(x)[..., :n]
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-10, 5), B, C, n

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        mu, _, B, C, n = self._moments(audio)
        return mu.transpose(1, 2).reshape(B, C, n, self.latent_dim)

    def decode(self, z: torch.Tensor, length: int | None = None) -> torch.Tensor:
        B, C, N, D = z.shape
        x = self.dec(z.reshape(B * C, N, D).transpose(1, 2))
        length = length or N * self.hop
        x = F.pad(x, (0, max(0, length - x.shape[-1])))[..., :length]
        return x.reshape(B, C, length)

    def loss(self, audio: torch.Tensor, kl_weight: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
        mu, logvar, B, C, n = self._moments(audio)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        y = self.dec(z)[..., : n * self.hop].reshape(B, C, -1)
        x = audio[..., : n * self.hop]
        l1 = (y - x).abs().mean()
        spec = 0.0
        for nfft in (256, 512, 1024):
            w = torch.hann_window(nfft, device=x.device)
            Sx = torch.stft(x.reshape(-1, x.shape[-1]), nfft, nfft // 4, window=w, return_complex=True).abs()
            Sy = torch.stft(y.reshape(-1, y.shape[-1]), nfft, nfft // 4, window=w, return_complex=True).abs()
            spec = spec + (torch.log(Sx + 1e-5) - torch.log(Sy + 1e-5)).abs().mean() + (Sx - Sy).abs().mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
        total = l1 + spec + kl_weight * kl
        return total, {"l1": float(l1.detach()), "spec": float(spec.detach()), "kl": float(kl.detach())}


def build_codec(cfg: CodecConfig, sample_rate: int, load_weights: bool = True) -> Codec:
    if cfg.kind == "stft":
        return STFTCodec(cfg, sample_rate)
    if cfg.kind == "mel":
        return MelCodec(cfg, sample_rate)
    codec = VAECodec(cfg, sample_rate)
    if load_weights:
        if not cfg.vae_ckpt:
            raise ValueError("codec.kind=vae needs codec.vae_ckpt (train one with `visaudio train-codec`)")
        p = Path(cfg.vae_ckpt)
        if not p.is_file():
            raise FileNotFoundError(f"codec.vae_ckpt not found: {p}")
        try:  # tensors and plain data only: a crafted codec file cannot run code
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"codec.vae_ckpt {p} cannot be loaded ({str(e).splitlines()[0][:200]}); "
                             "write it again with `visaudio train-codec`") from None
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ConfigError(f"codec.vae_ckpt {p} is not a codec written by `visaudio train-codec`")
        saved, cur = state.get("codec", {}), cfg.model_dump()
        diff = [k for k in ("hop", "vae_latent", "vae_channels", "vae_strides") if saved.get(k) != cur[k]]
        if diff:
            raise ValueError(f"codec checkpoint {p} was trained with different settings: {diff}")
        codec.load_state_dict(state["state_dict"])
    codec.eval()
    for q in codec.parameters():
        q.requires_grad_(False)
    return codec


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    err = (ref - est).pow(2).sum()
    return float(10 * math.log10(float(ref.pow(2).sum()) / max(float(err), 1e-30)))


def train_codec(manifest_dir, config, run_dir, steps: int = 2000, batch_size: int = 16, lr: float = 3e-4,
                overrides: list[str] | tuple[str, ...] = (), device: str | None = None) -> dict:
    """Train the per-channel waveform VAE on random crops of the training split's binaural audio
    (each channel is an independent mono example). Writes ``RUN/codec.pt``; point
    ``codec.vae_ckpt`` at it."""
    import time

    import numpy as np

    from visaudio.config import load_config
    from visaudio.data import ManifestDataset

    cfg = load_config(config, list(overrides) + ["codec.kind=vae"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ds = ManifestDataset(manifest_dir, "train", cfg, augment=False)
    codec = VAECodec(cfg.codec, cfg.data.sample_rate).to(dev).train()
    opt = torch.optim.AdamW(codec.parameters(), lr=lr, betas=(0.8, 0.99))
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    seg = cfg.codec.hop * 32
    first = last = None
    t0 = time.time()
    for _ in range(steps):
        xs = []
        for _ in range(batch_size):
            a, _ = ds.media(int(rng.integers(len(ds))))
            ch = int(rng.integers(2))
            s = int(rng.integers(0, max(1, a.shape[1] - seg)))
            x = a[ch, s : s + seg]
            xs.append(np.pad(x, (0, seg - len(x))))
        x = torch.from_numpy(np.stack(xs))[:, None].to(dev)
        loss, _ = codec.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        last = float(loss.detach())
        first = last if first is None else first
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    out = run / "codec.pt"
    torch.save({"codec": cfg.codec.model_dump(), "sample_rate": cfg.data.sample_rate,
                "state_dict": codec.cpu().state_dict()}, out)
    # how much of the interaural cues survive per-channel coding, on one training clip
    codec.eval()
    a, _ = ds.media(0)
    with torch.no_grad():
        at = torch.from_numpy(a)[None]
        y = codec.decode(codec.encode(at), at.shape[-1])
    return {"codec": str(out), "steps": steps, "first_loss": first, "last_loss": last,
            "seconds": time.time() - t0, "snr_db": snr_db(at, y)}
