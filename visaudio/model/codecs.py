"""Per-channel audio codecs (one set of weights for L and R), pluggable by ``codec.kind``.

All codecs map audio ``(B, C, T)`` to latent sequences ``(B, C, N, D)`` with ``N = T // hop`` and
back. Each channel is coded on its own (the paper's "Mono-VAE" idea), so interaural differences
must survive per-channel coding:

* ``stft``: compressed complex STFT ``|X|^c e^{j phi}``; exactly invertible, so interaural phase
  (ITD) and level (ILD) survive bit-for-bit up to float error. Default for tiny runs.
* ``mel``: log-mel + Griffin-Lim; phase is arbitrary, only level cues survive (an ablation).
* ``vae``: a small learned conv autoencoder on the waveform, trained by ``visaudio train-codec``.
* ``melvae``: a learned conv VAE over each channel's log-mel frames (trained by ``visaudio
  train-codec``, loaded frozen from its folder) whose decoded mel is vocoded by a pretrained
  BigVGAN (``codec.vocoder_path``), one channel at a time. The mel settings are the vocoder's own
  (from its config.json), so the VAE learns exactly the mel the vocoder was trained to invert.
  L and R are coded separately, so swapping the latent channels swaps the ears.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from biaudio.atomic import atomic_path
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

    def fingerprint(self) -> str:
        """Hash of the codec's learned weights and settings (part of a feature store's key)."""
        import hashlib

        h = hashlib.sha1(type(self).__name__.encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


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


MELVAE_FILE = "melvae.pt"
_MEL_KEYS = ("sampling_rate", "n_fft", "num_mels", "hop_size", "win_size", "fmin", "fmax")


def vocoder_settings(cfg: CodecConfig, sample_rate: int) -> dict:
    """The BigVGAN folder's mel settings (config.json), checked against the codec config."""
    from visaudio.pretrained import PretrainedError, checkpoint_folder

    folder = checkpoint_folder("codec.vocoder_path", cfg.vocoder_path, "a BigVGAN folder (config.json + "
                               "bigvgan_generator.pt)")
    try:
        h = json.loads((folder / "config.json").read_text())
        mel = {k: h[k] for k in _MEL_KEYS}
    except (ValueError, KeyError) as e:
        raise PretrainedError(f"codec.vocoder_path: {folder}/config.json is not a BigVGAN config (missing {e})") from None
    if int(mel["sampling_rate"]) != sample_rate:
        raise PretrainedError(f"codec.vocoder_path: {folder} is a {mel['sampling_rate']} Hz vocoder but "
                              f"data.sample_rate is {sample_rate}; set data.sample_rate={mel['sampling_rate']}")
    stride = math.prod(cfg.vae_strides)
    if mel["hop_size"] * stride != cfg.hop:
        raise PretrainedError(f"codec.hop ({cfg.hop}) must equal the vocoder's hop_size ({mel['hop_size']}) times "
                              f"the product of codec.vae_strides ({stride}) = {mel['hop_size'] * stride}")
    return mel


def load_vocoder(folder: str | Path):
    """A frozen BigVGAN generator from a local folder through the ``bigvgan`` package."""
    import contextlib
    import io

    from visaudio.pretrained import PretrainedError

    try:
        import bigvgan
    except ImportError as e:
        raise PretrainedError(f"codec.kind=melvae needs the bigvgan package ({e})") from None
    # The folder layout of BigVGAN.from_pretrained (config.json + bigvgan_generator.pt), read here
    # with the package's own classes: its from_pretrained wrapper fails with current
    # huggingface_hub (missing 'proxies'/'resume_download' arguments), and loading here also
    # keeps torch.load to tensors only.
    folder = Path(folder)
    try:
        h = bigvgan.load_hparams_from_json(str(folder / "config.json"))
        voc = bigvgan.BigVGAN(h, use_cuda_kernel=False)
        state = torch.load(folder / "bigvgan_generator.pt", map_location="cpu", weights_only=True)["generator"]
    except (OSError, ValueError, KeyError, AttributeError, RuntimeError, EOFError) as e:
        raise PretrainedError(f"codec.vocoder_path: cannot load BigVGAN from {folder} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints progress lines
        try:
            voc.load_state_dict(state)
        except RuntimeError:  # saved without weight norm (as the package handles it)
            voc.remove_weight_norm()
            try:
                voc.load_state_dict(state)
            except RuntimeError as e:
                raise PretrainedError(f"codec.vocoder_path: {folder}/bigvgan_generator.pt does not fit its "
                                      f"config.json ({str(e).splitlines()[0][:200]})") from None
        voc.remove_weight_norm()
    voc.eval()
    for p in voc.parameters():
        p.requires_grad_(False)
    return voc


class MelVAE(nn.Module):
    """Log-mel frames (B, n_mels, M) <-> latents (B, latent, M / prod(strides)); the KL term
    keeps the latent smooth enough for flow matching."""

    def __init__(self, n_mels: int, latent: int, channels: int, strides: list[int]):
        super().__init__()
        self.strides = list(strides)
        enc: list[nn.Module] = [nn.Conv1d(n_mels, channels, 3, padding=1)]
        for s in self.strides:
            enc += [nn.GELU(), nn.Conv1d(channels, channels, 3, padding=1), nn.GELU(),
                    nn.Conv1d(channels, channels, 2 * s + 1 if s > 1 else 3, stride=s, padding=s if s > 1 else 1)]
        enc += [nn.GELU(), nn.Conv1d(channels, 2 * latent, 3, padding=1)]
        self.enc = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(latent, channels, 3, padding=1)]
        for s in reversed(self.strides):
            dec += [nn.GELU(), nn.Upsample(scale_factor=s, mode="nearest") if s > 1 else nn.Identity(),
                    nn.Conv1d(channels, channels, 3, padding=1), nn.GELU(), nn.Conv1d(channels, channels, 3, padding=1)]
        dec += [nn.GELU(), nn.Conv1d(channels, n_mels, 3, padding=1)]
        self.dec = nn.Sequential(*dec)

    def moments(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(mel).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 5)


class MelVAECodec(Codec):
    """Per-channel mel-VAE latents; decode = mel-VAE decoder, then BigVGAN (per channel)."""

    centered = False

    def __init__(self, cfg: CodecConfig, sample_rate: int, mel: dict, vocoder: nn.Module | None = None):
        super().__init__()
        self.cfg, self.mel_cfg, self.sample_rate = cfg, dict(mel), sample_rate
        self.mel_hop = int(mel["hop_size"])
        self.hop, self.latent_dim = cfg.hop, cfg.vae_latent
        self.vae = MelVAE(int(mel["num_mels"]), cfg.vae_latent, cfg.vae_channels, cfg.vae_strides)
        self.vocoder = vocoder
        self._fp = ""

    def mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> log-mel (B*C, n_mels, T // mel_hop), BigVGAN's own mel function."""
        from bigvgan.meldataset import mel_spectrogram

        B, C, T = audio.shape
        m = self.mel_cfg
        x = audio.reshape(B * C, T).float().clamp(-1.0, 1.0)
        return mel_spectrogram(x, int(m["n_fft"]), int(m["num_mels"]), int(m["sampling_rate"]), self.mel_hop,
                               int(m["win_size"]), m["fmin"], m["fmax"])[..., : T // self.mel_hop]

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        B, C, T = audio.shape
        n = self.n_latents(T)
        mel = self.mel(audio)[..., : n * (self.hop // self.mel_hop)]
        mu, _ = self.vae.moments(mel)
        return mu[..., :n].transpose(1, 2).reshape(B, C, n, self.latent_dim)

    def decode_mel(self, z: torch.Tensor) -> torch.Tensor:
        B, C, N, D = z.shape
        return self.vae.dec(z.float().reshape(B * C, N, D).transpose(1, 2))

    def decode(self, z: torch.Tensor, length: int | None = None) -> torch.Tensor:
        if self.vocoder is None:
            raise ConfigError("this mel-VAE codec was built without its vocoder (codec.vocoder_path)")
        B, C, N, _ = z.shape
        x = self.vocoder(self.decode_mel(z)).reshape(B, C, -1)  # one channel per vocoder item
        length = length or N * self.hop
        return F.pad(x, (0, max(0, length - x.shape[-1])))[..., :length]

    def fingerprint(self) -> str:
        return self._fp or super().fingerprint()

    def loss(self, audio: torch.Tensor, kl_weight: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 on the log-mel (what the vocoder inverts) + a small KL."""
        B, C, T = audio.shape
        k = self.hop // self.mel_hop
        mel = self.mel(audio)
        mel = mel[..., : (mel.shape[-1] // k) * k]
        mu, logvar = self.vae.moments(mel)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        y = self.vae.dec(z)[..., : mel.shape[-1]]
        l1 = (y - mel).abs().mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
        return l1 + kl_weight * kl, {"mel_l1": float(l1.detach()), "kl": float(kl.detach())}

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/config.json`` + ``folder/melvae.pt`` (weights only) atomically."""
        import shutil

        out = Path(folder)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = {"kind": "melvae", "mel": self.mel_cfg, "vae_latent": self.cfg.vae_latent,
                "vae_channels": self.cfg.vae_channels, "vae_strides": list(self.cfg.vae_strides), "hop": self.hop}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1))
        torch.save(self.vae.state_dict(), tmp / MELVAE_FILE)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out


def build_melvae(cfg: CodecConfig, sample_rate: int, load_weights: bool = True, vocoder: bool = True) -> MelVAECodec:
    """The mel-VAE codec: mel settings from the vocoder folder; with ``load_weights`` the frozen
    mel-VAE from ``codec.melvae_path`` (and the vocoder itself when ``vocoder``)."""
    from visaudio.pretrained import PretrainedError, checkpoint_folder, folder_fingerprint

    mel = vocoder_settings(cfg, sample_rate)
    codec = MelVAECodec(cfg, sample_rate, mel)
    if not load_weights:
        return codec
    folder = checkpoint_folder("codec.melvae_path", cfg.melvae_path, "a mel-VAE folder written by `visaudio "
                               "train-codec` with codec.kind=melvae")
    meta = json.loads((folder / "config.json").read_text())
    want = {"kind": "melvae", "mel": mel, "vae_latent": cfg.vae_latent, "vae_channels": cfg.vae_channels,
            "vae_strides": list(cfg.vae_strides)}
    diff = [k for k, v in want.items() if meta.get(k) != v]
    if diff:
        raise PretrainedError(f"codec.melvae_path: {folder} was trained with other settings ({', '.join(diff)}); "
                              "train it again with `visaudio train-codec` for this config")
    try:
        state = torch.load(folder / MELVAE_FILE, map_location="cpu", weights_only=True)
        codec.vae.load_state_dict(state)
    except (OSError, RuntimeError, EOFError) as e:
        raise PretrainedError(f"codec.melvae_path: {folder / MELVAE_FILE} cannot be loaded "
                              f"({str(e).splitlines()[0][:200]})") from None
    if vocoder:
        codec.vocoder = load_vocoder(Path(cfg.vocoder_path).expanduser())
    codec._fp = folder_fingerprint(folder, {"vocoder": folder_fingerprint(Path(cfg.vocoder_path).expanduser(), {})})
    return codec


def build_codec(cfg: CodecConfig, sample_rate: int, load_weights: bool = True) -> Codec:
    if cfg.kind == "stft":
        return STFTCodec(cfg, sample_rate)
    if cfg.kind == "mel":
        return MelCodec(cfg, sample_rate)
    if cfg.kind == "melvae":
        codec = build_melvae(cfg, sample_rate, load_weights)
        codec.eval()
        for q in codec.parameters():
            q.requires_grad_(False)
        return codec
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
    """Train the per-channel codec on random crops of the training split's binaural audio (each
    channel is an independent mono example). codec.kind=melvae: the mel-VAE on the vocoder's mel
    settings, written to the folder ``RUN/melvae`` (point ``codec.melvae_path`` at it); any other
    kind: the waveform VAE, ``RUN/codec.pt`` (point ``codec.vae_ckpt`` at it)."""
    import time

    import numpy as np

    from visaudio.config import load_config
    from visaudio.data import ManifestDataset

    cfg = load_config(config, list(overrides))
    melvae = cfg.codec.kind == "melvae"
    if not melvae:
        cfg = load_config(cfg, ["codec.kind=vae"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ds = ManifestDataset(manifest_dir, "train", cfg, augment=False)
    if melvae:  # mel settings from the vocoder folder; the vocoder itself is only needed to listen
        codec: VAECodec | MelVAECodec = build_melvae(cfg.codec, cfg.data.sample_rate, load_weights=False)
        codec = codec.to(dev).train()
    else:
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
    if melvae:
        out = codec.cpu().save(run / "melvae")
        codec.eval()
        a, _ = ds.media(0)
        with torch.no_grad():
            at = torch.from_numpy(a)[None]
            mel = codec.mel(at)
            k = codec.hop // codec.mel_hop
            mel = mel[..., : (mel.shape[-1] // k) * k]
            rec = codec.vae.dec(codec.vae.moments(mel)[0])[..., : mel.shape[-1]]
        return {"codec": str(out), "kind": "melvae", "steps": steps, "first_loss": first, "last_loss": last,
                "seconds": time.time() - t0, "mel_l1": float((rec - mel).abs().mean()),
                "hint": f"point codec.melvae_path at {out}"}
    out = run / "codec.pt"
    with atomic_path(out) as tmp:
        torch.save({"codec": cfg.codec.model_dump(), "sample_rate": cfg.data.sample_rate,
                    "state_dict": codec.cpu().state_dict()}, tmp)
    # how much of the interaural cues survive per-channel coding, on one training clip
    codec.eval()
    a, _ = ds.media(0)
    with torch.no_grad():
        at = torch.from_numpy(a)[None]
        y = codec.decode(codec.encode(at), at.shape[-1])
    return {"codec": str(out), "steps": steps, "first_loss": first, "last_loss": last,
            "seconds": time.time() - t0, "snr_db": snr_db(at, y)}
