"""Captions: parsing, the file backend (CSV/JSONL, errors naming file and line), local-model offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from biaudio.build import caption as cap
from biaudio.build.caption import CaptionConfig, get_captioner, parse_caption
from biaudio.errors import BiaudioError, RejectItem


def test_parse_caption_variants():
    assert parse_caption("Visible sound: a flute, Invisible sound: wind") == ("a flute", "wind")
    assert parse_caption("Here it is.\nvisible sounds: tractor engine;\nInvisible Sound: birds.") == (
        "tractor engine", "birds")
    assert parse_caption("Visible sound: none, Invisible sound: none") == ("none", "none")
    for bad in ["", "a flute and wind", "Visible sound: a flute", "Invisible sound: x, Visible sound: y",
                "Visible sound: , Invisible sound: wind", "Visible sound: flute, Invisible sound:  "]:
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_none_backend():
    c = get_captioner(CaptionConfig()).caption("a_0", "a")
    assert c.to_row() == {"caption": None, "caption_visible": None, "caption_invisible": None,
                          "caption_backend": "none"}


def test_file_backend_csv_and_jsonl(tmp_path: Path):
    csv_p = tmp_path / "caps.csv"
    csv_p.write_text('clip_id,caption\nvid_1000,"Visible sound: a flute, Invisible sound: crowd murmur"\n'
                     'vid,"Visible sound: water, Invisible sound: none"\n', encoding="utf-8")
    c = get_captioner(CaptionConfig(backend="file", file=csv_p))
    got = c.caption("vid_1000", "vid")
    assert (got.visible, got.invisible, got.backend) == ("a flute", "crowd murmur", "file")
    assert got.caption == "Visible sound: a flute, Invisible sound: crowd murmur"
    assert c.caption("vid_9000", "vid").visible == "water"  # falls back to the source id
    with pytest.raises(RejectItem) as e:
        c.caption("zzz_0", "zzz")
    assert e.value.reason == "no_caption"
    keep = get_captioner(CaptionConfig(backend="file", file=csv_p, on_missing="keep"))
    assert keep.caption("zzz_0", "zzz").caption is None

    jl = tmp_path / "caps.jsonl"
    jl.write_text(json.dumps({"source_id": "s1", "visible": "dog", "invisible": "traffic"}) + "\n\n", encoding="utf-8")
    c2 = get_captioner(CaptionConfig(backend="file", file=jl, key_column="source_id"))
    assert c2.caption("s1_0", "s1").caption == "Visible sound: dog, Invisible sound: traffic"


@pytest.mark.parametrize(
    "name,text,line,what",
    [
        ("a.csv", 'clip_id,caption\nx_0,"Visible sound: a, Invisible sound: b"\ny_0,just words\n', 3, "malformed"),
        ("b.csv", 'clip_id,caption\nx_0,"Visible sound: a, Invisible sound: b"\nx_0,"Visible sound: c, Invisible sound: d"\n', 3, "duplicate"),
        ("c.csv", 'id,caption\nx_0,"Visible sound: a, Invisible sound: b"\n', 2, "key column"),
        ("d.jsonl", '{"clip_id": "x_0", "caption": "Visible sound: a, Invisible sound: b"}\n{oops\n', 2, "JSON"),
        ("e.jsonl", '{"clip_id": "x_0", "text": "Visible sound: a, Invisible sound: b"}\n', 1, "column"),
    ],
)
def test_file_backend_errors_name_file_and_line(tmp_path: Path, name, text, line, what):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    with pytest.raises(BiaudioError) as e:
        get_captioner(CaptionConfig(backend="file", file=p))
    assert e.value.reason == "bad_caption_file" and e.value.stage == "caption"
    assert name in str(e.value) and f"line {line}" in str(e.value) and what in str(e.value)


def test_file_backend_missing_file(tmp_path: Path):
    with pytest.raises(BiaudioError) as e:
        get_captioner(CaptionConfig(backend="file", file=tmp_path / "nope.csv"))
    assert e.value.reason == "caption_file_missing"
    with pytest.raises(ValidationError):
        CaptionConfig(backend="file", filename="x")


def test_local_model_missing_paths_are_clear_errors(tmp_path: Path):
    with pytest.raises(BiaudioError) as e:
        get_captioner(CaptionConfig(backend="local-model", text_model_path=tmp_path))
    assert e.value.reason == "model_path_missing" and "av_model_path" in str(e.value)
    with pytest.raises(BiaudioError) as e:
        get_captioner(CaptionConfig(backend="local-model", av_model_path=tmp_path,
                                    text_model_path=tmp_path / "not-there"))
    assert e.value.reason == "model_path_missing" and "never downloaded" in str(e.value)


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer GPT-2 and a tiny BPE tokenizer, saved locally (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tdec
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_text_model")
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


def test_local_model_text_stage_runs_offline(tiny_text_model: Path, tmp_path: Path, monkeypatch):
    """Loading + generation + parsing of the text stage with a tiny random model from a local folder.

    The audio-visual stage (Qwen2.5-Omni) is stubbed: it is exercised only when a real local
    checkpoint exists (none ships with the tests).
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = CaptionConfig(backend="local-model", av_model_path=tmp_path, text_model_path=tiny_text_model,
                        max_new_tokens=6)
    c = cap.LocalModelCaptioner(cfg)
    out = c.restructure("a flute plays, wind blows")
    assert isinstance(out, str)
    monkeypatch.setattr(c, "describe", lambda video_path: "a flute plays")
    # a random model does not write the format: the clip is rejected with a clear reason
    monkeypatch.setattr(c, "restructure", lambda d: "gibberish " + out)
    with pytest.raises(RejectItem) as e:
        c.caption("x_0", "x", video_path=tmp_path / "x.mp4")
    assert e.value.reason == "caption_unparsable"
    # a well-formed answer is parsed into the two fields
    monkeypatch.setattr(c, "restructure", lambda d: f"Sure! Visible sound: {d}, Invisible sound: none.")
    got = c.caption("x_0", "x", video_path=tmp_path / "x.mp4")
    assert (got.visible, got.invisible, got.backend) == ("a flute plays", "none", "local-model")


def test_local_model_bad_checkpoint_folder(tmp_path: Path):
    (tmp_path / "junk").mkdir()
    c = cap.LocalModelCaptioner(CaptionConfig(backend="local-model", av_model_path=tmp_path,
                                              text_model_path=tmp_path / "junk"))
    with pytest.raises(BiaudioError) as e:
        c.restructure("x")
    assert e.value.reason == "model_load_failed"
