"""Tiny random checkpoints of the captioning models and a short real clip, built locally (nothing is
downloaded): the caption stage and the annotate command load them through their real loading code.
The fixtures that call these live in tests/biaudio/conftest.py (stages/ and annotate/ share them)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_text_model(d: Path) -> Path:
    """A randomly initialised 1-layer GPT-2 and a tiny BPE tokenizer, saved locally (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tdec
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tdec.ByteLevel()
    corpus = ["Visible sound: a flute, Invisible sound: wind and birds.",
              "Rewrite the following description of a video's sounds as one line.", "Description: none"] * 5
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    tok.save_pretrained(d)
    import torch

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    model.save_pretrained(d)
    return d


_OMNI_TOKENS = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
                "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
# Qwen2.5-Omni's chat template, reduced to what a video + text turn needs
_OMNI_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif c['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tiny_omni_model(d: Path) -> Path:
    """A randomly initialised Qwen2.5-Omni (1-layer thinker: text, vision and audio towers; no talker)
    and its real processor (BPE tokenizer with the Omni special tokens, Qwen2-VL image/video processor,
    Whisper feature extractor), saved locally like a downloaded checkpoint (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tdec
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tdec.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_OMNI_TOKENS.values()]
    tk.train_from_iterator(["Describe the sounds in this video. system user assistant"] * 5,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  extra_special_tokens=_OMNI_TOKENS)
    Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                         feature_extractor=WhisperFeatureExtractor(feature_size=32), tokenizer=tok,
                         chat_template=_OMNI_TEMPLATE).save_pretrained(d)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in _OMNI_TOKENS.items()}
    h = 32
    thinker = dict(
        text_config=dict(vocab_size=len(tok), hidden_size=h, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=h,
                           fullatt_block_indexes=[0]),
        audio_config=dict(num_mel_bins=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=h),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"])
    torch.manual_seed(0)
    model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False))
    model.save_pretrained(d)
    # real checkpoints ship the talker's speaker table; from_pretrained insists on the file
    torch.save({"Chelsie": {"bos_token": 0}}, d / "spk_dict.pt")
    return d


def make_av_clip(d: Path) -> Path:
    """``d/clip.mp4``: a real 3-s 64x48 H.264 clip at 8 fps with a stereo AAC track (two tones, one per ear)."""
    import numpy as np

    from biaudio.media.audio import write_audio
    from biaudio.media.video import VideoWriter

    sr = 48000
    t = np.arange(3 * sr) / sr
    write_audio(d / "a.flac", (0.3 * np.stack([np.sin(2 * np.pi * 440 * t),
                                              np.sin(2 * np.pi * 660 * t)])).astype(np.float32), sr)
    rng = np.random.default_rng(0)
    with VideoWriter(d / "clip.mp4", 64, 48, 8, audio=d / "a.flac") as w:
        for _ in range(24):
            w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return d / "clip.mp4"
