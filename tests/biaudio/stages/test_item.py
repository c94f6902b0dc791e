"""process_item on synthetic scenes: every manifest v2 column, files present, spatial-cue rejects."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from biaudio.engine.types import WorkItem
from biaudio.recipe import Recipe
from tests._support.scenes import small_scene

STAGE_COLUMNS = [  # manifest v2 minus the engine's columns (group_id, split, schema_version, recipe_hash, tool_versions)
    "clip_id", "source_id", "source_uri", "start_s", "end_s", "duration_s", "section_start_s", "video_path", "audio_path",
    "preview_path", "fps", "hfov_deg", "width", "height", "sample_rate", "num_frames", "trajectory",
    "trajectory_mode", "clip_azimuth_deg", "clip_elevation_deg", "window_directions", "silence_ratio",
    "static_ratio", "speech_ratio", "speech_backend", "speech_checkpoint", "lr_difference", "caption",
    "caption_visible", "caption_invisible", "caption_backend", "foa_convention", "hrir_set", "decoder",
    "qa_status", "qa_reason",
]
LOG = logging.getLogger("test_build_stages_pipeline")


def _recipe(**traj) -> Recipe:
    return Recipe.model_validate({
        "segment": {"window_s": 2.0, "detector": "none"},
        "clean": {"speech": {"enabled": False}},
        "render": {"width": 160, "height": 90, "preview_width": 240},
        "trajectory": {"pitch_offset_deg": [0, 0], **traj},
    })


def _scene(tmp: Path, name: str, az: float, seed: int):
    return small_scene(tmp, name, seed=seed, duration=2.5, static_source=(az, 0.0))


def _item(video: Path) -> WorkItem:
    return WorkItem(video.stem, {"source_id": video.stem, "kind": "file", "uri": str(video)})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe_scenes")
    return {"lateral": _scene(d, "lateral", 70.0, 21), "front": _scene(d, "front", 0.0, 22)}


def test_process_item_rows_have_every_column_and_files_exist(scenes, tmp_path: Path):
    from biaudio.stages.item import process_item

    video = scenes["lateral"].video
    res = process_item(_item(video), _recipe(), tmp_path, LOG)
    assert res.rejects == [], res.rejects
    assert len(res.rows) == 1
    row = res.rows[0]
    missing = [c for c in STAGE_COLUMNS if c not in row]
    assert not missing
    assert row["clip_id"] == f"{video.stem}_0" and row["source_uri"] == str(video)
    for k in ("video_path", "audio_path", "preview_path"):
        p = tmp_path / row[k]
        assert p.is_file() and p.stat().st_size > 0 and not Path(row[k]).is_absolute()
    assert res.bytes_written == sum((tmp_path / row[k]).stat().st_size
                                    for k in ("video_path", "audio_path", "preview_path"))
    assert row["num_frames"] == len(row["trajectory"]) == 20 and row["fps"] == 10.0
    assert row["foa_convention"] == "ambix" and row["trajectory_mode"] == "paper"
    assert abs(row["clip_azimuth_deg"] - 70.0) < 8.0  # dominant direction found
    assert row["lr_difference"] > 0.01 and row["qa_status"] == "pending"
    assert row["window_directions"] and set(row["window_directions"][0]) >= {"t", "azimuth_deg", "elevation_deg"}
    assert {"fetch", "direction", "render"} <= set(res.stats)
    # no temporaries left behind
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    # deterministic: same item + recipe -> same trajectory
    res2 = process_item(_item(video), _recipe(), tmp_path / "again", LOG)
    assert res2.rows[0]["trajectory"] == row["trajectory"]


def test_spatial_cue_rejects_straight_ahead_static_and_keeps_lateral(scenes, tmp_path: Path):
    from biaudio.stages.item import process_item

    static = {"mode": "static", "yaw_offset_deg": [0, 0]}
    res = process_item(_item(scenes["front"].video), _recipe(**static), tmp_path / "front", LOG)
    assert res.rows == []
    assert [r["reason"] for r in res.rejects] == ["no_spatial_cue"]
    assert res.rejects[0]["stage"] == "spatial_cue" and res.rejects[0]["clip_id"] == "front_0"
    assert not [p for p in (tmp_path / "front").rglob("*") if p.is_file() and p.suffix in (".mp4", ".flac", ".jpg")]
    # the same scene with the static camera turned 60° away: the source is lateral, the clip is kept
    turned = {"mode": "static", "yaw_offset_deg": [60, 60]}
    kept = process_item(_item(scenes["front"].video), _recipe(**turned), tmp_path / "lat", LOG)
    assert len(kept.rows) == 1 and kept.rows[0]["lr_difference"] > 0.05
    assert kept.rows[0]["trajectory"][0]["yaw"] == pytest.approx(kept.rows[0]["clip_azimuth_deg"] + 60.0)


def test_bad_inputs_become_rejects(tmp_path: Path):
    from biaudio.stages.item import process_item

    res = process_item(_item(tmp_path / "missing.mp4"), _recipe(), tmp_path, LOG)
    assert res.rows == [] and res.rejects[0]["reason"] == "missing" and res.rejects[0]["stage"] == "fetch"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    res = process_item(_item(junk), _recipe(), tmp_path, LOG)
    assert res.rows == [] and len(res.rejects) == 1 and res.rejects[0]["stage"] in ("probe", "decode")


@pytest.mark.testdata
def test_real_sphere360_clip_end_to_end_turned_away(testdata_dir: Path, tmp_path: Path):
    """Real clip (flute player at the centre), static camera yawed +60° from the dominant direction:
    one 8-s clip kept, right ear louder, preview written, direction near the front."""
    import soundfile as sf

    from biaudio.stages.item import process_item

    src = testdata_dir / "sphere360-erp-foa" / "JUN314mwb90_49.webm"
    recipe = Recipe.model_validate({
        "render": {"width": 160, "height": 90, "preview_width": 320},
        "trajectory": {"mode": "static", "yaw_offset_deg": [60, 60], "pitch_offset_deg": [0, 0]},
        "clean": {"speech": {"enabled": False}},
        "validate": {"declared_convention": "ambix"},  # WebM/Vorbis "quad" carries no ambisonic marker
    })
    res = process_item(_item(src), recipe, tmp_path, LOG)
    assert res.rejects == [] and len(res.rows) == 1, res.rejects
    row = res.rows[0]
    assert row["foa_convention"] == "ambix" and row["duration_s"] == pytest.approx(8.0)
    assert abs(row["clip_azimuth_deg"]) < 25
    b, sr = sf.read(tmp_path / row["audio_path"], always_2d=True)
    assert sr == 48000 and np.mean(b[:, 1] ** 2) > 1.2 * np.mean(b[:, 0] ** 2)
    assert (tmp_path / row["preview_path"]).stat().st_size > 5000
    assert row["num_frames"] == len(row["trajectory"]) == int(np.floor(8.0 * row["fps"] + 1e-6))


def test_caption_reject_after_render_leaves_no_files_and_file_captions_fill_row(scenes, tmp_path: Path):
    from biaudio.stages.item import process_item

    caps = tmp_path / "caps.csv"
    caps.write_text('clip_id,caption\nlateral_0,"Visible sound: a red disc humming, Invisible sound: room tone"\n',
                    encoding="utf-8")
    r = _recipe().model_copy(update={"caption": _recipe().caption.model_copy(update={"backend": "file", "file": caps})})
    res = process_item(_item(scenes["front"].video), r, tmp_path / "o1", LOG)
    assert res.rows == [] and res.rejects[0]["reason"] == "no_caption" and res.rejects[0]["stage"] == "caption"
    assert not [p for p in (tmp_path / "o1").rglob("*") if p.is_file() and p.suffix in (".mp4", ".flac", ".jpg")]
    res = process_item(_item(scenes["lateral"].video), r, tmp_path / "o2", LOG)
    row = res.rows[0]
    assert (row["caption_visible"], row["caption_invisible"], row["caption_backend"]) == (
        "a red disc humming", "room tone", "file")


def test_filters_judge_each_clip_and_foa_is_decoded_once(tmp_path: Path):
    """A 16-s scene silent for its first 8 s: that clip is rejected (reason silent, its clip id), the
    second is kept with its own silence ratio; the file's audio is decoded by ffmpeg exactly once."""
    from biaudio.media.audio import AUDIO_DECODES, decode_audio
    from biaudio.media.video import mux_foa
    from biaudio.stages.item import process_item
    scene = small_scene(tmp_path, "loud", 31, duration=16.4, size=(256, 128), static_source=(70.0, 0.0))
    foa, sr = decode_audio(scene.video)
    foa[:, : int(8.2 * sr)] = 0.0
    video = mux_foa(scene.video, foa, sr, tmp_path / "half" / "half.mp4")
    recipe = Recipe.model_validate({
        "segment": {"window_s": 8.0, "detector": "none"},
        "clean": {"speech": {"enabled": False}},
        "render": {"width": 160, "height": 90, "preview_width": 240, "sample_rate": 32000},
        "trajectory": {"pitch_offset_deg": [0, 0]},
    })
    n0 = AUDIO_DECODES[str(video.resolve())]
    res = process_item(_item(video), recipe, tmp_path / "out", LOG)
    assert AUDIO_DECODES[str(video.resolve())] - n0 == 1  # one decode served the filters and the render
    assert [(r["reason"], r["stage"], r.get("clip_id")) for r in res.rejects] == [("silent", "clean", "half_0")]
    assert [r["clip_id"] for r in res.rows] == ["half_8000"]
    row = res.rows[0]
    assert row["silence_ratio"] < 0.9 and row["static_ratio"] is not None and row["speech_ratio"] is None
    assert row["sample_rate"] == 32000  # the source-rate FOA was resampled for the render
    import soundfile as sf

    b, bsr = sf.read(tmp_path / "out" / row["audio_path"], always_2d=True)
    assert bsr == 32000 and b.shape[0] == 8 * 32000 and np.sqrt(np.mean(b ** 2)) > 1e-3
    assert not (tmp_path / "out" / "clips" / "half_0.mp4").exists()

    from biaudio.ingest.analysis import analyze_file

    a = analyze_file(video, segment_cfg=recipe.segment, speech_cfg=recipe.clean.speech, keep_foa=False)
    s0, s1 = (a.window_scores[c]["silence"] for c in ("half_0", "half_8000"))
    assert s0 > 0.99 and s1 == row["silence_ratio"] and s1 < 0.9 and a.filters["silence"].passed
    assert a.filters["silence"].score == pytest.approx((s0 + s1) / 2, abs=0.03)  # the source: both halves
    assert a.ok and a.foa is None and [w.clip_id("half") for w in a.windows] == ["half_8000"]
