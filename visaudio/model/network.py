"""ViSAudio flow predictor: dual-branch DiT with joint blocks and a conditional spacetime module.

Layout (MMAudio style):

* inputs: noisy latents ``x_t`` (B, 2, N, Dz) for the L and R channels, time ``t`` (B,);
* N1 **joint blocks**: one attention over [L tokens, R tokens, video tokens, text tokens] with
  per-stream weights (the audio weights are shared by L and R; a learned channel embedding tells
  them apart). Both channels seeing each other here is what keeps them coherent;
* N2 **branch blocks** per channel (separate weights for L and R; one shared set with
  ``model.shared_branch``, the single-branch ablation) over that channel's tokens;
* per-token adaLN condition = t-embedding + global (pooled video/text) + sync stream upsampled to
  the latent rate + the channel's **spacetime** feature (patch tokens + 2-D position encodings +
  learned ``E^l``/``E^r``, attention-pooled per frame so the pooling depends on *where* things
  are, upsampled to the latent rate);
* **aligned RoPE**: audio token i has position i; video frame j has position j * N / F, so a
  video token and the audio token at the same instant share a rotary angle;
* optional (``model.cond_skip``, on in tiny/paper): a per-branch, per-token gain on the branch's
  own x_t, predicted from its condition, so the side (an interaural *gain* on the content) can be
  expressed where the content flows (the skip path) - see ``ViSAudio.__init__``;
* optional (``model.side_head``): a small head on the branch conditions regressing the target's
  per-frame ILD (an auxiliary loss that trains the encoders on "which ear, how much" directly),
  which ``generate.side_guidance`` follows by rescaling L and R of the sampled latents;
* adaLN gates and the output layers are zero-initialised: the untrained model predicts zero
  velocity and every block starts as the identity;
* learned **null conditions** for classifier-free guidance;
* frozen pretrained encoders (``pretrained.image`` / ``pretrained.motion`` / ``model.text_encoder:
  minilm``; ``visaudio.pretrained``) replace the patch CNN, sync CNN and hashed text when the config
  names their folders: ``encode_conditions`` takes their precomputed features (a feature store) or
  computes them from the frames and captions itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from visaudio.config import Config, check_side_noise
from visaudio.model import flow_matching as FM
from visaudio.model.encoders import (
    SyncEncoder,
    TrajectoryEncoder,
    VideoEncoder,
    build_text_encoder,
    sincos_2d,
)
from visaudio.pretrained import PartSlot, part_dims

SKIP_MULT = 50.0
SIDE_SMOOTH = 5  # latent frames: the side guidance's gains and the head's prediction are smoothed over these
SIDE_MAX_LOG_GAIN = 2.0  # side guidance: at most e^2 more / less energy on one ear per frame

# ------------------------------------------------------------------------------------- rope


def rope_cos_sin(pos: torch.Tensor, dim_head: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (N, dim_head/2) for real-valued (possibly fractional) positions."""
    inv = 1.0 / (base ** (torch.arange(0, dim_head, 2, device=pos.device, dtype=torch.float32) / dim_head))
    ang = pos.float()[:, None] * inv[None, :]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, dh) by per-position angles (half-split convention)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h].float(), x[..., h:].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


def aligned_positions(n_latents: int, n_frames: int, tokens_per_frame: int, latents_per_frame: float,
                      device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio positions 0..N-1 (latent i is centred at i*hop/sr) and video positions scaled to the
    latent rate: frame j (at j/fps) -> j * (sr/hop) / fps."""
    pa = torch.arange(n_latents, device=device, dtype=torch.float32)
    pv = torch.arange(n_frames, device=device, dtype=torch.float32) * latents_per_frame
    return pa, pv.repeat_interleave(tokens_per_frame)


# ------------------------------------------------------------------------------------- blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * self.w


class Stream(nn.Module):
    """Per-stream weights of a (joint or single) transformer block with adaLN-Zero."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, pre_only: bool = False):
        super().__init__()
        self.heads, self.pre_only = heads, pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qn, self.kn = RMSNorm(dim // heads), RMSNorm(dim // heads)
        if not pre_only:  # a stream whose output is discarded only provides keys/values
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.proj = nn.Linear(dim, dim)
            hid = int(dim * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(dim, hid), nn.GELU(approximate="tanh"), nn.Linear(hid, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if pre_only else 6) * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def pre(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        mod = self.ada(c)
        if mod.dim() == 2:
            mod = mod[:, None]
        if self.pre_only:
            sh1, sc1 = mod.chunk(2, dim=-1)
            g1 = sh2 = sc2 = g2 = None
        else:
            sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)
        B, N, D = x.shape
        q, k, v = self.qkv(modulate(self.norm1(x), sh1, sc1)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.qn(q), self.kn(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v, (g1, sh2, sc2, g2)

    def post(self, x: torch.Tensor, attn: torch.Tensor, mods) -> torch.Tensor:
        g1, sh2, sc2, g2 = mods
        x = x + g1 * self.proj(attn)
        return x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))


class JointBlock(nn.Module):
    """One attention over several token streams, each with its own weights."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, n_streams: int, last: bool = False):
        super().__init__()
        # in the last joint block only stream 0 (audio) continues; the others are key/value-only
        self.streams = nn.ModuleList(Stream(dim, heads, mlp_ratio, pre_only=last and i > 0) for i in range(n_streams))

    def forward(self, xs: list[torch.Tensor], cs: list[torch.Tensor], ropes: list) -> list[torch.Tensor]:
        qs, ks, vs, mods = [], [], [], []
        for s, x, c, r in zip(self.streams, xs, cs, ropes, strict=True):
            q, k, v, m = s.pre(x, c, r)
            qs.append(q)
            ks.append(k)
            vs.append(v)
            mods.append(m)
        a = F.scaled_dot_product_attention(torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2))
        B, H, _, dh = a.shape
        a = a.transpose(1, 2).reshape(B, -1, H * dh)
        out, i = [], 0
        for s, x, m in zip(self.streams, xs, mods, strict=True):
            n = x.shape[1]
            out.append(x if s.pre_only else s.post(x, a[:, i : i + n], m))
            i += n
        return out


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.lin = nn.Linear(dim, out)
        for m in (self.ada[1], self.lin):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh, sc = self.ada(c).chunk(2, dim=-1)
        return self.lin(modulate(self.norm(x), sh, sc))


class TimestepEmbed(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        f = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        a = t.float()[:, None] * 1000.0 * f[None]
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a)], dim=-1))


# ------------------------------------------------------------------------------------- side head


def _ear_energy(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame energies (B, 2, N) of denormalised latents (B, 2, N, Dz), their floor (B, 1) (1e-4
    of the clip's mean energy, so near-silent frames sit near 0 dB) and the log L / R ratio (B, N)."""
    e = z.float().pow(2).mean(-1)
    eps = 1e-4 * e.mean(dim=(1, 2))[:, None] + 1e-12
    return e, eps, torch.log(e[:, 0] + eps) - torch.log(e[:, 1] + eps)


def frame_ild(z: torch.Tensor) -> torch.Tensor:
    """Per-latent-frame interaural level difference proxy (B, N) of denormalised latents
    (B, 2, N, Dz): log of the L / R energy ratio. For the STFT codec the latent is the compressed
    spectrum |X|^c e^{j phi}, so this is c times the frame's broadband log power ratio: monotone in
    the ILD."""
    return _ear_energy(z)[2].clamp(-4.0, 4.0)


def _smooth(x: torch.Tensor, k: int = SIDE_SMOOTH) -> torch.Tensor:
    """Moving average (B, N) over k frames (edge-replicated)."""
    if k <= 1:
        return x
    xp = F.pad(x[:, None], ((k - 1) // 2, k // 2), mode="replicate")
    return F.avg_pool1d(xp, k, stride=1)[:, 0]


def apply_side_guidance(z: torch.Tensor, target: torch.Tensor, strength: float) -> torch.Tensor:
    """Rescale L and R of each frame of denormalised latents z (B, 2, N, Dz) so that the frame
    ILD (``frame_ild``) moves ``strength`` of the way to ``target`` (B, N), each frame's summed
    L + R energy kept. The log gains are smoothed over frames (no frame-rate modulation) and
    bounded, so a near-silent ear is not blown up."""
    if strength <= 0:
        return z
    e, eps, d = _ear_energy(z)
    want = d + strength * (target.float() - d)
    # new energies: eL' / eR' = exp(want) with eL' + eR' = eL + eR
    tot = e[:, 0] + e[:, 1] + 2 * eps
    wl = torch.sigmoid(want)  # exp(want) / (1 + exp(want))
    gl = 0.5 * (torch.log(wl * tot) - torch.log(e[:, 0] + eps))
    gr = 0.5 * (torch.log((1 - wl) * tot) - torch.log(e[:, 1] + eps))
    g = torch.stack([_smooth(gl), _smooth(gr)], 1).clamp(-SIDE_MAX_LOG_GAIN / 2, SIDE_MAX_LOG_GAIN / 2)
    return (z.float() * torch.exp(g)[..., None]).to(z.dtype)


class SideHead(nn.Module):
    """Per-latent-frame ILD from the branch conditions: p = f(E_L, E_R, sync) - f(E_R, E_L, sync),
    so swapping the ears' conditions flips the prediction's sign (a source on the left is the
    mirror of one on the right). f is two temporal convolutions (kernel 5 latent frames) so the
    head sees the motion around each instant."""

    def __init__(self, dim: int):
        super().__init__()
        self.f = nn.Sequential(nn.Conv1d(3 * dim, dim, 5, padding=2), nn.SiLU(), nn.Conv1d(dim, 1, 5, padding=2))

    def forward(self, st: torch.Tensor, sync: torch.Tensor) -> torch.Tensor:  # (B,2,N,D), (B,N,D) -> (B,N)
        N = st.shape[2]
        sy = sync[:, :N]
        a = torch.cat([st[:, 0], st[:, 1], sy], -1).transpose(1, 2)
        b = torch.cat([st[:, 1], st[:, 0], sy], -1).transpose(1, 2)
        return (self.f(a) - self.f(b))[:, 0]


# ------------------------------------------------------------------------------------- conditions


@dataclass
class Conditions:
    video: torch.Tensor  # (B, Nv, D) joint-attention video tokens
    text: torch.Tensor  # (B, Nt, D)
    sync: torch.Tensor  # (B, N, D) at the latent rate
    spacetime: torch.Tensor  # (B, 2, N, D) per channel, at the latent rate
    traj: torch.Tensor | None = None  # (B, N, D)

    @property
    def batch(self) -> int:
        return self.video.shape[0]

    def repeat(self, n: int) -> Conditions:
        return Conditions(*(None if v is None else v.repeat(n, *([1] * (v.dim() - 1))) for v in
                            (self.video, self.text, self.sync, self.spacetime, self.traj)))

    @staticmethod
    def cat(a: Conditions, b: Conditions) -> Conditions:
        f = lambda x, y: None if x is None else torch.cat([x, y])  # noqa: E731
        return Conditions(f(a.video, b.video), f(a.text, b.text), f(a.sync, b.sync),
                          f(a.spacetime, b.spacetime), f(a.traj, b.traj))


def _upsample(x: torch.Tensor, n: int, latents_per_frame: float) -> torch.Tensor:
    """(B, F, D) frames at j/fps -> (B, n, D) at latent times i*hop/sr (linear, clamped ends)."""
    Fn = x.shape[1]
    pos = (torch.arange(n, device=x.device, dtype=torch.float32) / latents_per_frame).clamp(0, Fn - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=Fn - 1)
    w = (pos - lo.float())[None, :, None].to(x.dtype)
    return x[:, lo] * (1 - w) + x[:, hi] * w


class SpacetimeModule(nn.Module):
    """Patch tokens + 2-D position encodings + learned E^l / E^r -> attention-pooled per frame.

    A plain mean over patches would erase position (adding E^a before a mean is a constant), so
    each branch scores patches with a nonlinear function of (feature, position, E^a) and pools
    with those weights: the left branch can learn to listen to the left of the picture.

    ``lateral`` (model.spacetime_lateral) adds a second, fixed pooling: patch features weighted by
    a column ramp (+1 on the branch's own side, -1 on the other), so an off-centre object gives
    the two branches opposite features from the start (in the sweep of issue 6 the attention
    centroid did follow the markers, yet the side reached the output far more reliably with this
    direct, signed path). ``attended`` (model.spacetime_lateral_attended) weights that ramp by the
    attention weights (mean of the two branches, scaled so uniform attention gives the fixed ramp):
    the signed path then looks where the attention looks, not at every salient object alike."""

    def __init__(self, dim: int, lateral: bool = False, attended: bool = False):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.E = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.score = nn.Linear(dim, 1)
        self.out = nn.Linear(dim, dim)
        # optional lateral pooling (model.spacetime_lateral): a fixed per-branch column ramp
        self.lat_out = nn.Linear(dim, dim) if lateral else None
        self.attended = bool(attended and lateral)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (B, F, gh, gw, D) -> (B, 2, F, D)
        B, Fn, gh, gw, D = patches.shape
        pe = sincos_2d(gh, gw, D, patches.device).reshape(gh, gw, D)
        # The right ear's view of the scene is the left ear's, mirrored. Giving the R branch the
        # mirrored column positions makes "a source on my side" one shared, learnable function
        # instead of two (E^l / E^r still let the branches differ where physics is not symmetric).
        pe = torch.stack([pe, pe.flip(1)]).reshape(2, 1, gh * gw, D)
        x = self.inp(patches.reshape(B, 1, Fn, gh * gw, D)) + pe[None]
        x = x + self.E[None, :, None, None]  # (B, 2, F, P, D)
        h = self.mlp(x)
        w = torch.softmax(self.score(h).squeeze(-1), dim=-1)
        y = self.out((w[..., None] * h).sum(-2))
        if self.lat_out is not None:
            # +1 at the branch's own edge of the picture (left columns for L: column 0 is the
            # left of the image), -1 at the other; mirrored for R. Mean 0 over the row.
            ramp = torch.linspace(1.0, -1.0, gw, device=patches.device, dtype=h.dtype) if gw > 1 else \
                torch.zeros(1, device=patches.device, dtype=h.dtype)
            r = torch.stack([ramp, ramp.flip(0)])[:, None, :].expand(2, gh, gw)
            r = r.reshape(1, 2, 1, gh * gw, 1)
            if self.attended:  # (B, 1, F, P, 1): uniform attention -> 1 everywhere (the fixed ramp)
                r = r * (w.mean(1, keepdim=True) * (gh * gw))[..., None]
            y = y + self.lat_out((r * h).mean(-2))
        return y


class ViSAudio(nn.Module):
    def __init__(self, cfg: Config, latent_dim: int):
        super().__init__()
        self.cfg = cfg
        m = cfg.model
        D = m.hidden
        self.latent_dim, self.dim, self.heads = latent_dim, D, m.heads
        self.n_latents, self.n_frames = cfg.n_latents, cfg.n_frames
        self.lpf = cfg.data.sample_rate / cfg.codec.hop / cfg.data.fps  # latents per patch frame
        self.lps = cfg.data.sample_rate / cfg.codec.hop / cfg.data.sync_fps  # latents per sync frame
        self.sync_stride = int(round(cfg.data.sync_fps / cfg.data.fps))
        self.pool = tuple(m.video_pool)
        self.tokens_per_frame = self.pool[0] * self.pool[1]
        n_video = self.n_frames * self.tokens_per_frame

        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))

        self.in_proj = nn.Linear(latent_dim, D)
        self.chan_emb = nn.Parameter(torch.randn(2, D) * 0.02)
        self.t_embed = TimestepEmbed(D)
        # pretrained frozen encoders (visaudio.pretrained): widths from their config.json only
        dims = part_dims(cfg) if (cfg.uses_pretrained or m.text_encoder == "minilm") else {}
        self.video_enc = VideoEncoder(cfg, dims.get("image"))
        self.video_proj = nn.Linear(D, D)
        self.sync_enc = SyncEncoder(cfg, dims.get("motion"))
        if "motion" in dims:  # latents per motion feature (one per tubelet)
            self.lps = cfg.data.sample_rate / cfg.codec.hop / (cfg.data.sync_fps / dims["motion_tubelet"])
        self.text_enc = build_text_encoder(cfg, dims.get("text"))
        self._parts = PartSlot()  # frozen image/motion parts for on-the-fly features (not submodules)
        self.text_proj = nn.Linear(D, D)
        self.spacetime = SpacetimeModule(D, m.spacetime_lateral, m.spacetime_lateral_attended) if m.use_spacetime else None
        self.traj_enc = TrajectoryEncoder(cfg) if m.use_trajectory else None
        self.camera_motion = None
        if m.camera_motion:  # measured camera yaw, one feature per branch (visaudio/motion.py)
            from visaudio.motion import CameraMotion

            self.camera_motion = CameraMotion(D, centered=m.camera_motion_centered)
        self.global_proj = nn.Sequential(nn.Linear(2 * D, D), nn.SiLU(), nn.Linear(D, D))
        self.null_video = nn.Parameter(torch.randn(n_video, D) * 0.02)
        self.null_text = nn.Parameter(torch.randn(cfg.data.max_text_tokens, D) * 0.02)
        self.null_sync = nn.Parameter(torch.zeros(D))
        self.null_spacetime = nn.Parameter(torch.zeros(2, D))
        self.joint = nn.ModuleList(JointBlock(D, m.heads, m.mlp_ratio, 3, last=i == m.n_joint - 1)
                                   for i in range(m.n_joint))
        # one set of branch weights per channel (dual branch), or one shared by both
        # (model.shared_branch, the single-branch ablation): forward indexes them with _branch(ch)
        n_sets = 1 if m.shared_branch else 2
        self.branches = nn.ModuleList(
            nn.ModuleList(JointBlock(D, m.heads, m.mlp_ratio, 1) for _ in range(m.n_branch)) for _ in range(n_sets)
        )
        self.final = nn.ModuleList(FinalLayer(D, latent_dim) for _ in range(n_sets))
        # Skip path: v += (SKIP_MULT * skip_gain) * c(t) * x_t, with c(t) the optimal linear
        # predictor of x1 - x0 from x_t for a Gaussian dimension of variance s2 (normalised units):
        # c = (t s2 - (1 - t)) / (t^2 s2 + (1 - t)^2). Why: the latent (642-dim STFT frames in tiny)
        # is wider than the hidden size, so the noise part of the target cannot pass through the
        # transformer's bottleneck; this is EDM's c_skip, computed from the stored latent stats.
        # skip_gain starts at 0 (the untrained model predicts zero velocity) and carries a
        # learning-rate multiplier so Adam reaches ~1 within tens of steps.
        self.register_buffer("latent_var", torch.ones(latent_dim))
        self.skip_gain = nn.Parameter(torch.zeros(latent_dim))
        # Conditional skip (``model.cond_skip``): each branch also predicts, per token and latent
        # dimension, a gain G_a(cond^a, t) on its own x_t^a. The shared skip above carries the
        # content; an interaural level difference is a side-dependent *gain* on that content
        # (|X_L| / |X_R| per band), which the shared skip cannot express and the transformer can
        # only rebuild through its hidden-size bottleneck. Fed by the branch's per-token condition
        # (t + global + sync + the branch's spacetime feature), zero-initialised like the output
        # layers (the untrained model still predicts zero velocity), nulled with the condition
        # for CFG (the null spacetime is the same for both branches).
        self.skip_cond = None
        if m.cond_skip:
            self.skip_cond = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(D, latent_dim)) for _ in range(n_sets))
            for sc in self.skip_cond:
                nn.init.zeros_(sc[1].weight)
                nn.init.zeros_(sc[1].bias)
        # side head (model.side_head): the target's per-frame ILD regressed from the branch
        # conditions (train.side_head_weight), followed at generation (generate.side_guidance)
        self.side_head = SideHead(D) if m.side_head else None

    # --------------------------------------------------------------------- latents
    def prior_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0 ~ N(0, 1) per channel, with L/R correlation ``model.noise_lr_corr`` (on the CPU
        generator, so a seed gives the same noise on every device)."""
        shape = (batch, self.n_latents, self.latent_dim)
        a = torch.randn(shape, generator=generator)
        rho = self.cfg.model.noise_lr_corr
        b = torch.randn(shape, generator=generator)
        if rho > 0:
            b = rho * a + math.sqrt(1 - rho**2) * b
        return torch.stack([a, b], dim=1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    # --------------------------------------------------------------------- conditions
    def pretrained_features(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen image/motion parts' features of a batch of windows, computed here when no
        feature store supplies them (same code as ``visaudio prepare``); {} without such parts."""
        if not self.cfg.uses_pretrained:
            return {}
        if not self._parts:
            from visaudio.pretrained import ImagePart, MotionPart, shared_part

            dev = str(frames.device)
            if self.cfg.pretrained.image.path is not None:
                self._parts.append(shared_part(ImagePart, self.cfg, dev))
            if self.cfg.pretrained.motion.path is not None:
                self._parts.append(shared_part(MotionPart, self.cfg, dev))
        out = {}
        for p in self._parts:
            if p.name == "image":
                out["image"] = p.features(frames[:, :: self.sync_stride][:, : self.n_frames]).to(frames.device)
            else:
                out["motion"] = p.features(frames).to(frames.device)
        return out

    def encode_conditions(self, frames: torch.Tensor | None, captions: list[str | None],
                          traj: torch.Tensor | None = None,
                          features: dict[str, torch.Tensor] | None = None,
                          drop_camera: torch.Tensor | None = None) -> Conditions:
        """frames: (B, Fs, H, W, 3) uint8 at sync_fps; the patch stream takes every k-th frame.
        ``features``: precomputed frozen-part features of the window (keys ``image``, ``motion``,
        ``text``, ``text_mask`` as in ``visaudio.pretrained``); missing ones are computed from
        ``frames`` / ``captions``. ``drop_camera`` (B,) bool: samples whose camera-motion feature
        is zeroed (training only, ``train.camera_motion_dropout``)."""
        N = self.n_latents
        feats = dict(features or {})
        if (self.video_enc.pre is not None and "image" not in feats) or \
                (self.sync_enc.pre is not None and "motion" not in feats):
            if frames is None:
                raise ValueError("encode_conditions: no frames and no precomputed 'image'/'motion' features")
            feats = self.pretrained_features(frames) | feats
        img = feats.get("image")
        patch = self.video_enc(None if img is not None else frames[:, :: self.sync_stride][:, : self.n_frames],
                               None if img is None else img[:, : self.n_frames])  # (B,F,gh,gw,D)
        B, Fn, gh, gw, D = patch.shape
        pooled = F.adaptive_avg_pool2d(patch.reshape(B * Fn, gh, gw, D).permute(0, 3, 1, 2), self.pool)
        pooled = pooled.permute(0, 2, 3, 1).reshape(B, Fn, self.tokens_per_frame, D)
        pooled = pooled + sincos_2d(*self.pool, D, patch.device)
        video = self.video_proj(pooled.reshape(B, Fn * self.tokens_per_frame, D))
        text = self.text_proj(self.text_enc(captions, feats.get("text"), feats.get("text_mask")))
        sync = _upsample(self.sync_enc(frames, feats.get("motion")), N, self.lps)
        if self.spacetime is not None:
            st = self.spacetime(patch)  # (B,2,F,D)
            st = _upsample(st.reshape(B * 2, Fn, D), N, self.lpf).reshape(B, 2, N, D)
        else:
            st = torch.zeros(B, 2, N, D, device=patch.device)
        if self.camera_motion is not None:  # part of the video condition: nulled with it for CFG
            if frames is None:
                raise ValueError("model.camera_motion measures the camera from the frames: the store must keep them")
            cm = self.camera_motion(frames)  # (B, 2, Fs, D) at sync_fps
            if drop_camera is not None:
                cm = cm * (~drop_camera).to(cm.dtype).view(-1, 1, 1, 1)
            st = st + _upsample(cm.reshape(B * 2, cm.shape[2], D), N, self.lps).reshape(B, 2, N, D)
        tr = self.traj_enc(traj) if (self.traj_enc is not None and traj is not None) else None
        return Conditions(video, text, sync, st, tr)

    def null_conditions(self, batch: int, device=None) -> Conditions:
        N, D = self.n_latents, self.dim
        dev = device or self.null_video.device
        tr = torch.zeros(batch, N, D, device=dev) if self.traj_enc is not None else None
        return Conditions(
            self.null_video[None].expand(batch, -1, -1).to(dev),
            self.null_text[None].expand(batch, -1, -1).to(dev),
            self.null_sync.view(1, 1, D).expand(batch, N, D).to(dev),
            self.null_spacetime.view(1, 2, 1, D).expand(batch, 2, N, D).to(dev),
            tr,
        )

    def drop_conditions(self, c: Conditions, drop_video: torch.Tensor, drop_text: torch.Tensor) -> Conditions:
        """Replace the video (patch, sync, spacetime) and/or text conditions by their learned
        nulls per sample (bool tensors (B,))."""
        n = self.null_conditions(c.batch, c.video.device)
        dv = drop_video.view(-1, 1, 1)
        return replace(
            c,
            video=torch.where(dv, n.video, c.video),
            text=torch.where(drop_text.view(-1, 1, 1), n.text, c.text),
            sync=torch.where(dv, n.sync, c.sync),
            spacetime=torch.where(dv.view(-1, 1, 1, 1), n.spacetime, c.spacetime),
        )

    # --------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, c: Conditions) -> torch.Tensor:
        """Velocity (B, 2, N, Dz) for normalised noisy latents x (B, 2, N, Dz) at time t (B,)."""
        B, C, N, _ = x.shape
        D = self.dim
        h = self.in_proj(x) + self.chan_emb[None, :, None]
        temb = self.t_embed(t)
        g = temb + self.global_proj(torch.cat([c.video.mean(1), c.text.mean(1)], dim=-1))
        ctok = g[:, None, None] + c.sync[:, None, :N] + c.spacetime[:, :, :N]
        if c.traj is not None:
            ctok = ctok + c.traj[:, None, :N]
        dh = D // self.heads
        Fn = c.video.shape[1] // self.tokens_per_frame
        pa, pv = aligned_positions(N, Fn, self.tokens_per_frame, self.lpf, x.device)
        base = self.cfg.model.rope_base
        rope_a1 = rope_cos_sin(pa, dh, base)
        rope_a2 = rope_cos_sin(torch.cat([pa, pa]), dh, base)
        rope_v = rope_cos_sin(pv, dh, base)
        a, v, tx = h.reshape(B, C * N, D), c.video, c.text
        ca = ctok.reshape(B, C * N, D)
        for blk in self.joint:
            a, v, tx = blk([a, v, tx], [ca, g, g], [rope_a2, rope_v, None])
        a = a.reshape(B, C, N, D)
        outs = []
        for ch in range(C):
            y = a[:, ch]
            cc = ctok[:, ch]
            k = ch % len(self.final)  # 0 for both channels with model.shared_branch
            for blk in self.branches[k]:
                (y,) = blk([y], [cc], [rope_a1])
            o = self.final[k](y, cc)
            if self.skip_cond is not None:
                o = o + self.skip_cond[k](cc) * x[:, ch]
            outs.append(o)
        tt = t.float()[:, None]
        s2 = self.latent_var[None]
        c_skip = (tt * s2 - (1 - tt)) / (tt**2 * s2 + (1 - tt) ** 2)
        return torch.stack(outs, dim=1) + (SKIP_MULT * self.skip_gain * c_skip)[:, None, None, :] * x

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions, null: Conditions | None,
                 cfg: float) -> torch.Tensor:
        """Classifier-free guidance: v_u + cfg (v_c - v_u); cfg == 1 is exactly the conditional."""
        if null is None or cfg == 1.0:
            return self(x, t, cond)
        vv = self(torch.cat([x, x]), torch.cat([t, t]), Conditions.cat(cond, null))
        vc, vu = vv.chunk(2)
        return FM.guide(vc, vu, cfg)

    @torch.no_grad()
    def sample(self, cond: Conditions, steps: int = 25, cfg: float = 4.5, seed: int = 0,
               null: Conditions | None = None, side_noise: float | None = None) -> torch.Tensor:
        """Euler integration of dx/dt = v from noise (t=0) to data (t=1); normalised latents.
        ``side_noise``: the prior noise's L - R scale (None: ``generate.side_noise``)."""
        B = cond.batch
        dev = cond.video.device
        g = torch.Generator().manual_seed(int(seed))
        sn = check_side_noise(self.cfg.generate.side_noise if side_noise is None else side_noise)
        x = FM.scale_side(self.prior_noise(B, g), sn).to(dev)
        if null is None and cfg != 1.0:
            null = self.null_conditions(B, dev)
            if cond.traj is not None:
                null = replace(null, traj=cond.traj)
        x = FM.euler_sample(lambda x, t: self.velocity(x, t, cond, null, cfg), x, steps)
        sg = self.cfg.generate.side_guidance
        if self.side_head is not None and sg > 0:
            target = _smooth(self.side_pred(cond).float())
            x = self.normalize(apply_side_guidance(self.denormalize(x), target, sg))
        return x

    def side_pred(self, c: Conditions) -> torch.Tensor:
        """The side head's per-latent-frame ILD (B, N) for conditions c (model.side_head)."""
        if self.side_head is None:
            raise ValueError("side_pred needs model.side_head: true")
        return self.side_head(c.spacetime, c.sync)


def param_counts(model: ViSAudio) -> dict[str, int]:
    """Trainable parameters per top-level component (for `visaudio info`)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".")[0]
        if key.startswith("null_"):
            key = "null_conditions"
        out[key] = out.get(key, 0) + p.numel()
    out["total"] = sum(v for k, v in out.items())
    return out
