"""The clips rendered inside the analysis decode (``execution.single_decode``, the default) are the
same files as clips rendered from a decode of their own; windows the plan did not foresee (after a
cut) and renders that fail fall back to their own decode; dropped windows leave no file."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from biaudio.engine.types import WorkItem
from biaudio.recipe import Recipe
from tests._support.scenes import small_scene

LOG = logging.getLogger("test_build_single_decode")


def _recipe(single: bool, **segment) -> Recipe:
    return Recipe.model_validate({
        "segment": {"window_s": 2.0, "detector": "none", **segment},
        "clean": {"speech": {"enabled": False}},
        "render": {"width": 160, "height": 90, "preview_width": 240},
        "trajectory": {"pitch_offset_deg": [0, 0]},
        "execution": {"single_decode": single},
    })


def _files(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _run(video: Path, recipe: Recipe, out: Path, monkeypatch) -> tuple[object, dict[str, str], int]:
    """process_item, its files and how many windows were decoded by a render of their own."""
    import biaudio.media.video as mv
    from biaudio.stages.item import process_item

    own = []
    real = mv.iter_frames

    def counting(*a, **k):
        own.append(k.get("start_s"))
        return real(*a, **k)

    monkeypatch.setattr(mv, "iter_frames", counting)
    res = process_item(WorkItem(video.stem, {"source_id": video.stem, "kind": "file", "uri": str(video)}),
                       recipe, out, LOG)
    monkeypatch.setattr(mv, "iter_frames", real)
    return res, _files(out), len(own)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("single_decode")
    plain = small_scene(d, "plain", seed=41, duration=6.5, static_source=(70.0, 0.0))
    cut = small_scene(d, "cut", seed=42, duration=6.5, static_source=(-60.0, 0.0), cuts_s=[2.5])
    return {"plain": plain.video, "cut": cut.video}


def test_single_decode_gives_the_same_files_and_rows(scenes, tmp_path: Path, monkeypatch):
    """Three windows (0, 2 and 4 s: the later ones exercise trim + setpts against -ss) rendered
    inside the analysis decode: no window decodes again, and files and rows equal the separate
    decodes' byte for byte."""
    video = scenes["plain"]
    one, f1, n1 = _run(video, _recipe(True), tmp_path / "one", monkeypatch)
    two, f2, n2 = _run(video, _recipe(False), tmp_path / "two", monkeypatch)
    assert [r["clip_id"] for r in one.rows] == ["plain_0", "plain_2000", "plain_4000"], one.rejects
    assert (n1, n2) == (0, 3)
    assert f1 == f2 and len(f1) == 9  # mp4 + flac + jpg per clip, nothing else
    assert repr(one.rows) == repr(two.rows)
    assert one.stats["render"] > 0 and one.stats["decode"] > 0


def test_a_cut_drops_planned_renders_and_renders_the_real_windows(scenes, tmp_path: Path, monkeypatch):
    """The plan assumes no cut (windows 0, 2, 4 s); the cut at 2.5 s moves the later windows. The
    planned renders that no longer exist leave no file, the real windows are rendered alone, and
    the result equals the separate-decode build."""
    video = scenes["cut"]
    seg = {"detector": "content"}
    one, f1, n1 = _run(video, _recipe(True, **seg), tmp_path / "one", monkeypatch)
    two, f2, n2 = _run(video, _recipe(False, **seg), tmp_path / "two", monkeypatch)
    ids = [r["clip_id"] for r in one.rows]
    assert ids and ids[0] == "cut_0" and all(i not in ("cut_2000", "cut_4000") for i in ids), (ids, one.rejects)
    assert n2 == len(ids) and n1 == len(ids) - 1  # only window 0 was foreseen
    assert f1 == f2 and len(f1) == 3 * len(ids)
    assert repr(one.rows) == repr(two.rows)


def test_a_render_that_fails_inside_the_decode_is_made_again_alone(scenes, tmp_path: Path, monkeypatch):
    """An encoder error inside the shared decode must neither block ffmpeg (its sink keeps
    reading) nor lose the clip: the clip is rendered again from its own decode."""
    from biaudio.errors import MediaError
    from biaudio.stages import render

    failed = []
    real_push = render.ClipRender.push

    def flaky(self, frame):
        if self.clip_id == "plain_2000" and self.k == 5 and not failed:
            failed.append(self.clip_id)
            raise MediaError("x264", "encode_failed", "simulated encoder failure")
        return real_push(self, frame)

    monkeypatch.setattr(render.ClipRender, "push", flaky)
    res, files, n_own = _run(scenes["plain"], _recipe(True), tmp_path / "one", monkeypatch)
    monkeypatch.setattr(render.ClipRender, "push", real_push)
    ref, ref_files, _ = _run(scenes["plain"], _recipe(False), tmp_path / "two", monkeypatch)
    assert failed == ["plain_2000"] and n_own == 1
    assert [r["clip_id"] for r in res.rows] == ["plain_0", "plain_2000", "plain_4000"] and res.rejects == []
    assert files == ref_files


def test_windows_the_audio_filters_reject_are_never_rendered(scenes, tmp_path: Path, monkeypatch):
    """The plan knows the silence verdicts from the audio pass: a silent window gets no render
    (not even one thrown away later), and the analysis' verdicts are unchanged."""
    from biaudio.media.audio import decode_audio
    from biaudio.media.video import mux_foa
    from biaudio.stages import render

    foa, sr = decode_audio(scenes["plain"])
    foa[:, : int(2.2 * sr)] = 0.0
    video = mux_foa(scenes["plain"], foa, sr, tmp_path / "half" / "half.mp4")
    made = []
    real_init = render.ClipRender.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        made.append(self.clip_id)

    monkeypatch.setattr(render.ClipRender, "__init__", spy)
    res, files, n_own = _run(video, _recipe(True), tmp_path / "one", monkeypatch)
    assert [(r["reason"], r.get("clip_id")) for r in res.rejects] == [("silent", "half_0")]
    assert [r["clip_id"] for r in res.rows] == ["half_2000", "half_4000"]
    assert made == ["half_2000", "half_4000"] and n_own == 0
    assert sorted(files) == sorted(f"{d}/{c}.{e}" for c in ("half_2000", "half_4000")
                                   for d, e in (("clips", "mp4"), ("clips", "flac"), ("previews", "jpg")))


@pytest.mark.testdata
def test_real_sphere360_clip_same_files_either_way(testdata_dir: Path, tmp_path: Path, monkeypatch):
    """A real VP9/Vorbis Sphere360 clip at 1920x1080 with the paper's render size: one decode or
    two, the mp4, FLAC and preview are byte-identical (and one decode means no window decode)."""
    src = testdata_dir / "sphere360-erp-foa" / "JUN314mwb90_49.webm"

    def recipe(single: bool) -> Recipe:
        return Recipe.model_validate({
            "clean": {"speech": {"enabled": False}},
            "validate": {"declared_convention": "ambix"},  # WebM/Vorbis "quad" carries no ambisonic marker
            "execution": {"single_decode": single},
        })

    one, f1, n1 = _run(src, recipe(True), tmp_path / "one", monkeypatch)
    two, f2, n2 = _run(src, recipe(False), tmp_path / "two", monkeypatch)
    assert len(one.rows) == 1 and one.rejects == [] and (n1, n2) == (0, 1)
    assert f1 == f2 and len(f1) == 3
    assert repr(one.rows) == repr(two.rows)
