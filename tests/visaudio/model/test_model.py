"""ViSAudio model, codecs, config: shapes, rotary alignment, zero-init, CFG, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from visaudio.config import ConfigError, load_config
from visaudio.model.codecs import MelCodec, STFTCodec, VAECodec, build_codec, snr_db
from visaudio.model.network import ViSAudio, aligned_positions, apply_rope, param_counts, rope_cos_sin

torch.set_num_threads(1)


def _model(name: str = "micro", seed: int = 0, perturb: bool = False):
    cfg = load_config(name)
    codec = build_codec(cfg.codec, cfg.data.sample_rate)
    torch.manual_seed(seed)
    m = ViSAudio(cfg, codec.latent_dim).eval()
    if perturb:  # move away from the zero init so outputs depend on the conditions
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return cfg, codec, m


def _inputs(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (B, cfg.n_sync_frames, cfg.data.height, cfg.data.width, 3), generator=g,
                           dtype=torch.uint8)
    return frames, ["a bird on the left", None][:B]


def test_shapes_and_param_counts():
    cfg, codec, m = _model()
    frames, caps = _inputs(cfg)
    c = m.encode_conditions(frames, caps)
    assert c.video.shape == (2, cfg.n_frames * 2, cfg.model.hidden)
    assert c.sync.shape == (2, cfg.n_latents, cfg.model.hidden)
    assert c.spacetime.shape == (2, 2, cfg.n_latents, cfg.model.hidden)
    x = torch.randn(2, 2, cfg.n_latents, codec.latent_dim)
    v = m(x, torch.rand(2), c)
    assert v.shape == x.shape
    counts = param_counts(m)
    assert counts["total"] == sum(p.numel() for p in m.parameters())
    assert counts["branches"] > 0 and counts["joint"] > 0 and counts["spacetime"] > 0


@pytest.mark.parametrize("name,lo,hi", [("tiny", 5e6, 12e6), ("paper_scratch", 150e6, 230e6)])
def test_config_sizes(name, lo, hi):
    cfg = load_config(name)
    codec = build_codec(cfg.codec, cfg.data.sample_rate, load_weights=False)
    n = param_counts(ViSAudio(cfg, codec.latent_dim))["total"]
    print(f"{name}: {n / 1e6:.2f}M trainable parameters")
    assert lo < n < hi


def test_rotary_alignment():
    N, Fn, tpf = 49, 4, 2  # 1 s at 48 latents/s (+1 centred end frame), 4 fps
    pa, pv = aligned_positions(N, Fn, tpf, latents_per_frame=12.0)
    # video frame j (at j/fps) sits at the latent index of the same instant: j * 12
    assert torch.allclose(pv[::tpf], torch.arange(Fn) * 12.0)
    assert torch.all(pv[0::tpf] == pv[1::tpf])  # all tokens of a frame share the time position
    cos_a, sin_a = rope_cos_sin(pa, 16)
    cos_v, sin_v = rope_cos_sin(pv, 16)
    for j in range(Fn):
        i = 12 * j
        assert torch.allclose(cos_v[j * tpf], cos_a[i]) and torch.allclose(sin_v[j * tpf], sin_a[i])
    # rope makes q.k depend only on the position difference
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def dot(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), 16)
        ck, sk = rope_cos_sin(torch.tensor([pk]), 16)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert dot(3.0, 1.0) == pytest.approx(dot(12.5, 10.5), rel=1e-4)
    assert dot(3.0, 1.0) != pytest.approx(dot(3.0, 2.0), rel=1e-3)


def test_zero_init_predicts_zero_velocity():
    cfg, codec, m = _model()
    frames, caps = _inputs(cfg)
    x = torch.randn(2, 2, cfg.n_latents, codec.latent_dim) * 3
    v = m(x, torch.tensor([0.2, 0.8]), m.encode_conditions(frames, caps))
    assert torch.count_nonzero(v) == 0


def test_cfg_one_equals_conditional_and_guidance_changes_output():
    cfg, codec, m = _model(perturb=True)
    frames, caps = _inputs(cfg)
    c = m.encode_conditions(frames, caps)
    null = m.null_conditions(2)
    x, t = torch.randn(2, 2, cfg.n_latents, codec.latent_dim), torch.tensor([0.3, 0.6])
    vc = m(x, t, c)
    assert torch.equal(m.velocity(x, t, c, null, 1.0), vc)
    # the formula itself at cfg=1 agrees too (not just the shortcut)
    vu = m(x, t, null)
    assert torch.allclose(vu + 1.0 * (vc - vu), vc, atol=1e-5)
    v45 = m.velocity(x, t, c, null, 4.5)
    assert torch.allclose(v45, vu + 4.5 * (vc - vu), atol=1e-4)
    assert not torch.allclose(v45, vc, atol=1e-3)


def test_sampling_deterministic_for_seed():
    cfg, codec, m = _model(perturb=True)
    frames, caps = _inputs(cfg)
    c = m.encode_conditions(frames, caps)
    a = m.sample(c, steps=4, cfg=2.0, seed=7)
    b = m.sample(c, steps=4, cfg=2.0, seed=7)
    d = m.sample(c, steps=4, cfg=2.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, d)


def test_conditions_matter_and_spacetime_is_side_sensitive():
    """Mirroring the picture changes the L and R spacetime features differently."""
    cfg, codec, m = _model(perturb=True)
    frames, caps = _inputs(cfg, B=1)
    c1 = m.encode_conditions(frames, caps)
    c2 = m.encode_conditions(frames.flip(3), caps)
    assert not torch.allclose(c1.spacetime, c2.spacetime, atol=1e-4)
    assert not torch.allclose(c1.spacetime[:, 0], c1.spacetime[:, 1], atol=1e-4)


def _binaural_test_signal(sr=16000, seconds=1.0, itd_samples=8, ild_db=6.0):
    rng = np.random.default_rng(0)
    s = rng.standard_normal(int(sr * seconds)).astype(np.float32) * 0.1
    left = s
    right = np.concatenate([np.zeros(itd_samples, np.float32), s[:-itd_samples]]) * 10 ** (-ild_db / 20)
    return torch.from_numpy(np.stack([left, right]))[None]


def _itd_ild(x: np.ndarray) -> tuple[int, float]:
    c = np.correlate(x[1], x[0], mode="full")
    lag = int(np.argmax(c)) - (x.shape[1] - 1)
    return lag, float(10 * np.log10((x[0] ** 2).sum() / (x[1] ** 2).sum()))


def test_stft_codec_roundtrip_snr_itd_ild():
    cfg = load_config("tiny")
    codec = STFTCodec(cfg.codec, 16000)
    x = _binaural_test_signal()
    z = codec.encode(x)
    assert z.shape == (1, 2, x.shape[-1] // cfg.codec.hop + 1, codec.latent_dim)
    y = codec.decode(z, x.shape[-1])
    snr = snr_db(x, y)
    print(f"stft codec round trip SNR {snr:.1f} dB")
    assert snr >= 40.0
    itd_x, ild_x = _itd_ild(x[0].numpy())
    itd_y, ild_y = _itd_ild(y[0].numpy())
    assert itd_x == itd_y == 8
    assert abs(ild_x - ild_y) < 0.01


def test_mel_and_vae_codec_shapes():
    cfg = load_config("micro")
    x = _binaural_test_signal(sr=8000, seconds=0.5, itd_samples=3)
    mel = MelCodec(cfg.codec.model_copy(update={"griffin_lim_iters": 4}), 8000)
    z = mel.encode(x)
    assert z.shape == (1, 2, x.shape[-1] // cfg.codec.hop + 1, cfg.codec.n_mels)
    assert mel.decode(z, x.shape[-1]).shape == x.shape
    vcfg = cfg.codec.model_copy(update={"kind": "vae", "vae_strides": [4, 5, 8], "vae_channels": 8})
    vae = VAECodec(vcfg, 8000)
    zv = vae.encode(x)
    assert zv.shape == (1, 2, x.shape[-1] // 160, vcfg.vae_latent)
    assert vae.decode(zv, x.shape[-1]).shape == x.shape
    loss, parts = vae.loss(x)
    assert torch.isfinite(loss) and parts["l1"] > 0


def test_unknown_config_key_names_key():
    with pytest.raises(ConfigError, match="model.hiddn"):
        load_config("micro", ["model.hiddn=3"])
    with pytest.raises(ConfigError, match="unknown config"):
        load_config("no_such_config")
    cfg = load_config("micro", ["train.lr=0.5", "data.channels=mono"])
    assert cfg.train.lr == 0.5 and cfg.data.channels == "mono"
    with pytest.raises(ConfigError, match="channels"):
        load_config("micro", ["data.channels=quad"])


def test_info_cli_prints_counts():
    from typer.testing import CliRunner

    from visaudio.cli import app

    r = CliRunner().invoke(app, ["info", "micro"])
    assert r.exit_code == 0, r.output
    assert "branches" in r.output and "total" in r.output
    r = CliRunner().invoke(app, ["info", "micro", "--set", "model.bogus=1"])
    assert r.exit_code != 0


def test_shared_branch_switch():
    """``model.shared_branch`` (single-branch ablation): one set of branch/final/skip weights for
    both channels. Off, the arch hash has no trace of it (checkpoints keep loading); on, the
    network loses exactly one channel's branch weights and becomes L/R-swap equivariant, which the
    dual-branch network (separate weights per channel) is not."""
    off, on = load_config("micro"), load_config("micro", ["model.shared_branch=true"])
    assert "shared_branch" not in off.arch_dict()["model"] and off.arch_hash() != on.arch_hash()
    codec = build_codec(off.codec, off.data.sample_rate)
    nets = {}
    for name, cfg in (("dual", off), ("shared", on)):
        torch.manual_seed(0)
        nets[name] = ViSAudio(cfg, codec.latent_dim).eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in nets[name].parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pc = {k: param_counts(m) for k, m in nets.items()}
    per_channel = sum(pc["dual"][k] for k in ("branches", "final", "skip_cond") if k in pc["dual"]) // 2
    assert pc["dual"]["total"] - pc["shared"]["total"] == per_channel > 0
    frames, caps = _inputs(off)
    x = torch.randn(2, 2, off.n_latents, codec.latent_dim, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.3, 0.7])
    gaps = {}
    for name, m in nets.items():
        with torch.no_grad():
            c = m.encode_conditions(frames, caps)
            v = m(x, t, c)
            # swap the channels everywhere they enter: noisy latents, per-branch conditions, channel embedding
            m.chan_emb.copy_(m.chan_emb.flip(0))
            vs = m(x.flip(1), t, replace(c, spacetime=c.spacetime.flip(1)))
        gaps[name] = float((vs.flip(1) - v).abs().max() / v.abs().max())
    assert gaps["shared"] < 1e-4 < 1e-2 < gaps["dual"], gaps


def test_side_head_switch_loss_and_guidance():
    """``model.side_head`` + ``train.side_head_weight`` + ``generate.side_guidance`` (issue 15).
    Off: no trace in the arch hash, and a model with the head but guidance 0 samples exactly what
    the model without it does. The head's MSE term falls when trained on a toy batch whose ILD
    is told by the picture (bright half = loud ear); with guidance 1 the output's (smoothed) frame
    ILD follows the head's prediction, each frame's summed L + R energy kept."""
    from visaudio.model.network import _smooth, frame_ild
    from visaudio.train import FlowLoss

    off = load_config("micro")
    on0 = load_config("micro", ["model.side_head=true"])
    on1 = load_config("micro", ["model.side_head=true", "generate.side_guidance=1.0"])
    assert "side_head" not in off.arch_dict()["model"] and off.arch_hash() != on0.arch_hash() == on1.arch_hash()
    with pytest.raises(ConfigError, match="side_head"):
        load_config("micro", ["generate.side_guidance=0.5"])
    codec = build_codec(off.codec, off.data.sample_rate)
    nets = {}
    for name, cfg in (("off", off), ("on0", on0), ("on1", on1)):
        torch.manual_seed(0)
        nets[name] = ViSAudio(cfg, codec.latent_dim)
    assert nets["off"].side_head is None and nets["on0"].side_head is not None

    # toy batch: the lit half of the picture is the loud ear (its latents x3 the other's)
    B, N, Dz = 4, off.n_latents, codec.latent_dim
    frames = torch.zeros(B, off.n_sync_frames, off.data.height, off.data.width, 3, dtype=torch.uint8)
    x1 = torch.randn(B, 2, N, Dz, generator=torch.Generator().manual_seed(3))
    for i in range(B):
        left = i % 2 == 0
        frames[i, :, :, : off.data.width // 2] = 255 if left else 0
        frames[i, :, :, off.data.width // 2:] = 0 if left else 255
        x1[i, 0 if left else 1] *= 3.0
    m = nets["on0"]
    m.train()
    lossmod = FlowLoss(m, side_weight=1.0, side_head_weight=10.0)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    target = frame_ild(m.denormalize(x1))
    assert float(target[0].mean()) > 1.0 and float(target[1].mean()) < -1.0
    g = torch.Generator().manual_seed(4)
    aux = []
    for _ in range(40):
        cond = m.encode_conditions(frames, [None] * B)
        aux.append(float((m.side_pred(cond).detach() - target).pow(2).mean()))
        x0, t = torch.randn(x1.shape, generator=g), torch.rand(B, generator=g)
        no = torch.zeros(B, dtype=torch.bool)
        loss = lossmod(x0, x1, t, frames, [None] * B, torch.zeros(B, 1), no, no).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert aux[-1] < 0.2 * aux[0], (aux[0], aux[-1])

    # guidance: same trained weights, guidance 0 vs 1
    nets["on1"].load_state_dict(m.state_dict())
    for k in ("on0", "on1"):
        nets[k].eval()
    frames_t, caps = _inputs(off)
    frames_t[0] = frames[0, : off.n_sync_frames]
    with torch.no_grad():
        c = nets["on1"].encode_conditions(frames_t, caps)
        pred = _smooth(nets["on1"].side_pred(c))
        x_off = nets["off"].eval().sample(nets["off"].encode_conditions(frames_t, caps), steps=3, cfg=1.0, seed=5)
        torch.manual_seed(0)
        x_fresh = ViSAudio(on0, codec.latent_dim).eval().sample(c, steps=3, cfg=1.0, seed=5)
        x0g = nets["on0"].sample(c, steps=3, cfg=1.0, seed=5)
        x1g = nets["on1"].sample(c, steps=3, cfg=1.0, seed=5)
    # an untrained head with guidance 0 leaves the sampler's output bit-identical to the model without it
    assert torch.equal(x_fresh, x_off)
    z0, z1 = nets["on1"].denormalize(x0g), nets["on1"].denormalize(x1g)
    err0 = float((_smooth(frame_ild(z0)) - pred).abs().mean())
    err1 = float((_smooth(frame_ild(z1)) - pred).abs().mean())
    assert err1 < 0.15 < err0, (err0, err1)
    e0, e1 = z0.pow(2).sum((1, 3)), z1.pow(2).sum((1, 3))
    assert float((e1 / e0 - 1).abs().max()) < 0.1


def test_attended_lateral_pooling_starts_as_the_ramp_and_ignores_unattended_patches():
    """``model.spacetime_lateral_attended``: with uniform attention the attended lateral pooling is
    exactly the fixed column ramp (the small-data start is unchanged); once the attention looks at
    one patch, a salient patch it does not look at (a silent distractor on the other side) no longer
    moves the lateral feature, while it does move the fixed ramp's. The switch needs the lateral
    pooling and changes the arch hash (off: no trace of it)."""
    from visaudio.model.network import SpacetimeModule

    torch.manual_seed(0)
    fixed, att = SpacetimeModule(32, lateral=True), SpacetimeModule(32, lateral=True, attended=True)
    att.load_state_dict(fixed.state_dict())
    x = torch.randn(2, 3, 4, 6, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for m in (fixed, att):
            m.score.weight.zero_()
            m.score.bias.zero_()
        assert torch.allclose(fixed(x), att(x), atol=1e-6)

    class Look(torch.nn.Module):  # attention logits: everything on patch (row 1, column 4)
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            s = torch.zeros(*h.shape[:-1], 1)
            s[..., 1 * 6 + 4, 0] = 30.0
            return s

    fixed.score, att.score = Look(), Look()
    y = x.clone()
    y[:, :, 2, 0] += 3.0  # a new salient object at the far left, row 2: never attended
    z = x.clone()
    z[:, :, 1, 4] += 3.0  # the attended patch itself changes
    with torch.no_grad():
        f_gap = float((fixed(y) - fixed(x)).abs().max())
        a_gap = float((att(y) - att(x)).abs().max())
        a_seen = float((att(z) - att(x)).abs().max())
    assert a_gap < 1e-5 < 1e-2 < f_gap, (a_gap, f_gap)
    assert a_seen > 1e-2, a_seen
    with pytest.raises(ConfigError, match="spacetime_lateral_attended"):
        load_config("micro", ["model.spacetime_lateral=false", "model.spacetime_lateral_attended=true"])
    off = load_config("micro", ["model.spacetime_lateral=true"])
    on = load_config("micro", ["model.spacetime_lateral=true", "model.spacetime_lateral_attended=true"])
    assert "spacetime_lateral_attended" not in off.arch_dict()["model"] and off.arch_hash() != on.arch_hash()


def test_side_noise_scales_only_the_interaural_part_of_the_sampler_start():
    """``generate.side_noise`` (issue 15): the prior noise's L - R part is scaled, its mid kept.
    On the zero-initialised model (velocity 0, so the sample is its start) side_noise 0 gives
    identical ears and 0.5 half the side; the config default is exactly the old sampler; a
    trained-like (perturbed) model still puts an interaural difference of its own into a start
    without one."""
    from visaudio.model import flow_matching as FM

    cfg, codec, m = _model()
    frames, caps = _inputs(cfg)
    c = m.encode_conditions(frames, caps)
    full = m.sample(c, steps=3, cfg=2.0, seed=5)
    assert torch.equal(full, m.sample(c, steps=3, cfg=2.0, seed=5, side_noise=1.0))
    assert torch.equal(full, m.prior_noise(2, torch.Generator().manual_seed(5))), "zero init: sample = its start"
    zero = m.sample(c, steps=3, cfg=2.0, seed=5, side_noise=0.0)
    half = m.sample(c, steps=3, cfg=2.0, seed=5, side_noise=0.5)
    assert torch.equal(zero[:, 0], zero[:, 1])
    side = full[:, 0] - full[:, 1]
    assert side.abs().mean() > 0.1
    assert torch.allclose(half[:, 0] - half[:, 1], 0.5 * side, atol=1e-6)
    assert torch.allclose(zero[:, 0] + zero[:, 1], full[:, 0] + full[:, 1], atol=1e-6)
    assert torch.allclose(FM.scale_side(full, 0.25)[:, 0] - FM.scale_side(full, 0.25)[:, 1], 0.25 * side, atol=1e-6)
    # the run's config sets the default
    cfg0 = load_config("micro", ["generate.side_noise=0"])
    m0 = ViSAudio(cfg0, codec.latent_dim).eval()
    m0.load_state_dict(m.state_dict())
    assert torch.equal(m0.sample(m0.encode_conditions(frames, caps), steps=3, cfg=2.0, seed=5), zero)
    with pytest.raises(ConfigError, match="side_noise"):
        load_config("micro", ["generate.side_noise=1.5"])
    with pytest.raises(ValueError, match="side_noise"):
        m.sample(c, steps=1, side_noise=-0.1)
    # a model with weights: the flow itself makes the ears differ
    cfg, codec, mp = _model(perturb=True)
    c = mp.encode_conditions(frames, caps)
    z = mp.sample(c, steps=4, cfg=2.0, seed=5, side_noise=0.0)
    assert (z[:, 0] - z[:, 1]).abs().mean() > 1e-3
    assert not torch.allclose(z, mp.sample(c, steps=4, cfg=2.0, seed=5), atol=1e-4)
