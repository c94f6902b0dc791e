"""Captions: parsing, the file backend (CSV/JSONL, errors naming file and line), local-model offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from biaudio.errors import BiaudioError, RejectItem
from biaudio.stages import caption as cap
from biaudio.stages.caption import CaptionConfig, get_captioner, parse_caption


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


def test_local_model_text_stage_runs_offline(tiny_text_model: Path, tmp_path: Path, monkeypatch):
    """Loading + generation + parsing of the text stage with a tiny random model from a local folder.

    The audio-visual stage is stubbed here; test_local_model_av_stage_runs_qwen_omni_offline runs it
    for real with a tiny Qwen2.5-Omni.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = CaptionConfig(backend="local-model", av_model_path=tmp_path, text_model_path=tiny_text_model,
                        max_new_tokens=6)
    c = cap.LocalModelCaptioner(cfg)
    out = c.restructure("a flute plays, wind blows")
    assert isinstance(out, str)
    monkeypatch.setattr(c, "describe_batch", lambda paths: ["a flute plays"] * len(paths))
    # a random model does not write the format: the clip is rejected with a clear reason
    monkeypatch.setattr(c, "restructure_batch", lambda ds: ["gibberish " + out for _ in ds])
    with pytest.raises(RejectItem) as e:
        c.caption("x_0", "x", video_path=tmp_path / "x.mp4")
    assert e.value.reason == "caption_unparsable"
    # a well-formed answer is parsed into the two fields
    monkeypatch.setattr(c, "restructure_batch", lambda ds: [f"Sure! Visible sound: {d}, Invisible sound: none." for d in ds])
    got = c.caption("x_0", "x", video_path=tmp_path / "x.mp4")
    assert (got.visible, got.invisible, got.backend) == ("a flute plays", "none", "local-model")


def test_local_model_bad_checkpoint_folder(tmp_path: Path):
    (tmp_path / "junk").mkdir()
    c = cap.LocalModelCaptioner(CaptionConfig(backend="local-model", av_model_path=tmp_path,
                                              text_model_path=tmp_path / "junk"))
    with pytest.raises(BiaudioError) as e:
        c.restructure("x")
    assert e.value.reason == "model_load_failed"


def _runs(ids: list[int], names: dict[int, str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for i in ids:
        n = names.get(i, "?")
        if out and out[-1][0] == n:
            out[-1] = (n, out[-1][1] + 1)
        else:
            out.append((n, 1))
    return out


def test_local_model_av_stage_runs_qwen_omni_offline(tiny_omni_model: Path, tiny_text_model: Path, av_clip: Path,
                                                     monkeypatch):
    """The real audio-visual stage: clip decoded by ffmpeg, Qwen2.5-Omni processor, thinker generate."""
    from biaudio.media.audio import decode_audio

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    cfg = CaptionConfig(backend="local-model", av_model_path=tiny_omni_model, text_model_path=tiny_text_model,
                        max_new_tokens=6, av_video_fps=2)
    c = cap.LocalModelCaptioner(cfg)
    processor, model, kind = c._load_av()
    assert kind == "qwen2_5_omni" and not model.has_talker

    inputs = c.av_inputs(av_clip)
    # 3 s at 2 fps = 6 frames = 3 temporal patches of 2 frames
    grid = inputs["video_grid_thw"][0].tolist()
    assert grid[0] == 3
    # the whole soundtrack as one mono 16-kHz signal: ~3 s (AAC adds a few ms) = ~300 mel frames (hop 160)
    # -> 75 audio tokens
    n = decode_audio(av_clip, sr=16000)[0].shape[1]
    assert inputs["input_features"].shape[:2] == (1, 32)
    assert int(inputs["feature_attention_mask"].sum()) == -(-n // 160) and 300 <= -(-n // 160) <= 302
    # video and audio tokens interleave in 2-s chunks between <|audio_bos|> and <|audio_eos|>
    ids = inputs["input_ids"][0].tolist()
    per_t = grid[1] * grid[2] // 4
    names = {processor.video_token_id: "V", processor.audio_token_id: "A"}
    span = ids[ids.index(processor.tokenizer.audio_bos_token_id) + 1:ids.index(processor.tokenizer.audio_eos_token_id)]
    assert _runs(span, names) == [("V", 2 * per_t), ("A", 50), ("V", per_t), ("A", 25)]
    assert ids.count(processor.video_token_id) == int(inputs["pixel_values_videos"].shape[0]) // 4

    calls = {"visual": 0, "audio_tower": 0}
    hooks = [getattr(model.thinker.model, n).register_forward_hook(
        lambda mod, a, out, n=n: calls.__setitem__(n, calls[n] + 1)) for n in calls]
    try:
        text = c.describe(av_clip)
    finally:
        for hk in hooks:
            hk.remove()
    assert isinstance(text, str)
    assert calls == {"visual": 1, "audio_tower": 1}  # both towers ran, once (the prompt), not per new token
    assert text == c.describe(av_clip)  # greedy: deterministic

    # the whole chain: a random text model does not write the format -> a clear reject
    with pytest.raises(RejectItem) as e:
        c.caption("x_0", "x", video_path=av_clip)
    assert e.value.reason == "caption_unparsable"
