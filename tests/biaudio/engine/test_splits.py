"""Splits per original video (``group_id``), fixed split lists, times in the source video, and the
v1 -> v2 manifest upgrade. Real parquet files, the real engine (stand-in stages), the real CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from biaudio import manifest as m
from biaudio.cli import app
from biaudio.engine import splits as S
from biaudio.engine.check import validate
from biaudio.engine.items import resolve_items
from biaudio.engine.run import build
from biaudio.engine.state import check_out_dir
from biaudio.engine.upgrade import upgrade
from biaudio.errors import BiaudioError, RecipeError
from biaudio.ingest.sources import SourceItem, read_sources
from biaudio.recipe import load_recipe, recipe_from_dict
from tests._support.scenes import small_demo_overrides

REPO = Path(__file__).resolve().parents[3]
STANDIN = REPO / "tests" / "_support" / "standin.py"
_spec = importlib.util.spec_from_file_location("standin", STANDIN)
standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin)


def _vid(i: int) -> str:
    return f"V{i:010d}"  # 11 characters, a valid YouTube id


def _sphere360_items(n_videos: int, per_video: int) -> list[SourceItem]:
    return [SourceItem(f"{_vid(v)}_{10 * k}", "sphere360", f"https://www.youtube.com/watch?v={_vid(v)}",
                       (10.0 * k, 10.0 * k + 10)) for v in range(n_videos) for k in range(per_video)]


def _row(source_id: str, uri: str, start: float = 0.0, split: str | None = None, **extra) -> dict:
    cid = f"{source_id}_{int(start * 1000)}"
    r = {
        "clip_id": cid, "source_id": source_id, "source_uri": uri,
        "start_s": start, "end_s": start + 1.0, "duration_s": 1.0,
        "video_path": f"clips/{cid}.mp4", "audio_path": f"clips/{cid}.flac", "preview_path": None,
        "fps": 10.0, "hfov_deg": 90.0, "width": 64, "height": 36, "sample_rate": 16000, "num_frames": 10,
        "trajectory": standin.trajectory_for(cid, 10, 10.0), "trajectory_mode": "paper",
        "clip_azimuth_deg": 0.0, "clip_elevation_deg": 0.0, "window_directions": None,
        "silence_ratio": None, "static_ratio": None, "speech_ratio": None, "speech_backend": None,
        "speech_checkpoint": None, "lr_difference": 0.1, "caption": None, "caption_visible": None,
        "caption_invisible": None, "caption_backend": "none", "foa_convention": "ambix", "hrir_set": "kemar",
        "decoder": "magls", **extra,
    }
    if split is not None:
        r["split"] = split
    return r


def _touch_media(out: Path, rows: list[dict]) -> None:
    for r in rows:
        for col in ("video_path", "audio_path"):
            p = out / r[col]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")


# ------------------------------------------------------------------ the leak the issue reports


def test_sphere360_sections_of_one_video_share_one_split():
    """200 videos x 17 Sphere360 sections: hashing the item id spreads a video over the splits
    (the v1 behaviour, measured here), hashing group_id never does."""
    items = _sphere360_items(200, 17)
    fr, salt = (0.1, 0.1), "biaudio-v1"
    per_item: dict[str, set] = {}
    for it in items:  # v1: split from the item (source) id
        per_item.setdefault(S.group_id_for(it), set()).add(S.hash_split(it.source_id, fr, salt))
    assert sum(len(v) > 1 for v in per_item.values()) > 100  # the leak is real (161 of 200 in the issue)

    rows = [_row(it.source_id, it.uri, 0.0, group_id=S.group_id_for(it)) for it in items]
    rows = m.complete_rows(rows, recipe_hash="h", split_fractions=fr, salt=salt, versions="{}")
    assert {r["group_id"] for r in rows} == {_vid(v) for v in range(200)}
    assert S.leaking_groups(rows) == {}
    by_split = {s: {r["group_id"] for r in rows if r["split"] == s} for s in S.SPLITS}
    assert all(by_split.values()) and not (by_split["train"] & by_split["test"])


def test_group_ids():
    yt = SourceItem("dQw4w9WgXcQ_30", "youtube", "https://www.youtube.com/watch?v=dQw4w9WgXcQ", (30.0, 40.0))
    assert S.group_id_for(yt) == "dQw4w9WgXcQ"
    assert S.group_id_for(yt.to_dict()) == "dQw4w9WgXcQ"  # the completion record's copy
    a = SourceItem("0B7ds6NmVBQl_20", "file", "/data/0B7ds6NmVBQl_20.webm")
    b = SourceItem("0B7ds6NmVBQl_30", "file", "/data/0B7ds6NmVBQl_30.webm")
    assert S.group_id_for(a) == S.group_id_for(b) == "0B7ds6NmVBQl"
    assert S.group_id_for(SourceItem("concert", "file", "/x/concert.mp4")) == "concert"
    url = SourceItem("talk_3-abc", "url", "https://example.org/media/talk_3.mp4?x=1")
    assert S.group_id_for(url) == "talk"
    # split.group_pattern: the first capture in the stem; no match -> the default rule
    pat = r"^(rec\d+)-"
    assert S.group_id_for(SourceItem("rec12-take3", "file", "/x/rec12-take3.mp4"), pat) == "rec12"
    assert S.group_id_for(SourceItem("other_7", "file", "/x/other_7.mp4"), pat) == "other"
    # an explicit group (table column) wins
    assert S.group_id_for(SourceItem("x_1", "file", "/x/x_1.mp4", group="shoot-A")) == "shoot-A"
    # a v1 row, no kind: the same answers
    assert S.group_id_from_row("dQw4w9WgXcQ_30", "https://www.youtube.com/watch?v=dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert S.group_id_from_row("0B7ds6NmVBQl_20", "/data/0B7ds6NmVBQl_20.webm") == "0B7ds6NmVBQl"
    assert S.group_id_from_row("scene_0003", "/out/sources/synth-1a2b3c4d/scene_0003.mp4") == "scene_0003"


def test_group_pattern_is_checked_in_the_recipe():
    assert recipe_from_dict({"split": {"group_pattern": r"^(\w+?)_"}}).split.group_pattern == r"^(\w+?)_"
    for bad in (r"^\w+$", r"(a)(b)", "(["):
        with pytest.raises(RecipeError, match="split.group_pattern"):
            recipe_from_dict({"split": {"group_pattern": bad}})
    with pytest.raises(RecipeError, match="split.lists"):
        recipe_from_dict({"split": {"lists": {"holdout": "x.txt"}}})


def test_table_source_group_column_and_synth_scenes(tmp_path):
    for name in ("a_1.mp4", "a_2.mp4", "b_1.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.csv").write_text("path,group\na_1.mp4,shoot-A\na_2.mp4,\nb_1.mp4,shoot-A\n")
    res = read_sources(str(tmp_path / "list.csv"))
    got = {it.source_id: (it.group, S.group_id_for(it)) for it in res.items}
    assert got == {"a_1": ("shoot-A", "shoot-A"), "a_2": (None, "a"), "b_1": ("shoot-A", "shoot-A")}
    # synthetic scenes scene_0000, scene_0001...: each its own video, not one group "scene"
    items, _, _ = resolve_items(recipe_from_dict({"sources": [{"synth": {"scenes": 3}}]}), tmp_path / "out")
    assert [S.group_id_for(w.source) for w in items] == ["scene_0000", "scene_0001", "scene_0002"]


# ------------------------------------------------------------------ validate refuses a leak


def test_validate_refuses_one_video_in_two_splits(tmp_path):
    """Two Sphere360 items of one video, each item in one split: v1's per-source check saw nothing."""
    vid = "0B7ds6NmVBQl"
    rows = [_row(f"{vid}_{s}", f"https://www.youtube.com/watch?v={vid}", 0.0) for s in (20, 30)]
    rows += [_row("other_video", "/data/other_video.mp4", 0.0)]
    rows = m.complete_rows(rows, recipe_hash="h", split_fractions=(0.1, 0.1), salt="s", versions="{}")
    _touch_media(tmp_path, rows)
    m.write_manifest(tmp_path, rows)
    rep = validate(tmp_path, check_media=False)
    assert rep.ok, rep.to_dict()
    res = CliRunner().invoke(app, ["validate", str(tmp_path), "--no-media", "--json"])
    assert res.exit_code == 0, res.output

    leak = [dict(r, split="test" if r["source_id"] == f"{vid}_30" else "train") for r in rows]
    m.write_manifest(tmp_path, leak)
    per_source = pd.read_parquet(tmp_path / "manifest.parquet").groupby("source_id")["split"].nunique()
    assert (per_source == 1).all()  # every item is in one split: only the group shows the leak
    rep = validate(tmp_path, check_media=False)
    assert not rep.ok and [p.check for p in rep.problems] == ["split_leak"]
    assert vid in rep.problems[0].detail and "test" in rep.problems[0].detail
    res = CliRunner().invoke(app, ["validate", str(tmp_path), "--no-media", "--json"])
    assert res.exit_code == 1
    assert vid in json.loads(res.output)["problems"][0]["detail"]


# ------------------------------------------------------------------ split lists


def _lists(tmp_path: Path, train: list[str], test: list[str]) -> list[S.SplitList]:
    (tmp_path / "train.txt").write_text("# Sphere360 train\n" + "\n".join(train) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n\n")
    return [S.read_split_list("train", tmp_path / "train.txt"), S.read_split_list("test", tmp_path / "test.txt")]


def _vrows(spec: dict[str, list[int]]) -> list[dict]:
    return [_row(f"{v}_{s}", f"https://www.youtube.com/watch?v={v}", 0.0, group_id=v)
            for v, starts in spec.items() for s in starts]


def test_split_lists_conflicts_are_repaired_and_reported(tmp_path):
    A, B, C, D, E = (_vid(i) for i in range(5))
    lists = _lists(tmp_path, [f"{A}_0", f"{A}_10", f"{B}_0", f"{E}_0", f"{_vid(99)}_0"], [f"{A}_20", C, f"{E}_10"])
    spec = {A: [0, 10, 20, 30], B: [0], C: [0, 10], D: [0, 10], E: [0, 10]}
    rows = _vrows(spec)
    rep = S.assign_splits(rows, fractions=(0.0, 0.0), salt="s", lists=lists, repair=True)
    split = {r["clip_id"]: r["split"] for r in rows}
    assert {split[f"{A}_{s}_0"] for s in (0, 10, 20, 30)} == {"train"}  # 2 train entries vs 1 test; A_30 unlisted
    assert split[f"{B}_0_0"] == "train"
    assert {split[f"{C}_{s}_0"] for s in (0, 10)} == {"test"}  # a group id entry names the whole video
    assert {split[f"{D}_{s}_0"] for s in (0, 10)} == {"train"}  # unlisted: hashed (fractions 0 -> train)
    assert {split[f"{E}_{s}_0"] for s in (0, 10)} == {"test"}  # a tie goes to test
    assert S.leaking_groups(rows) == {}
    conf = {c["group_id"]: c for c in rep["conflicts"]}
    assert set(conf) == {A, E}
    assert conf[A]["moved_to"] == "train" and conf[A]["entries"] == {"train": [f"{A}_0", f"{A}_10"], "test": [f"{A}_20"]}
    assert conf[A]["clips_moved"] == 1
    assert rep["method"] == "lists" and rep["unlisted_groups"] == 1
    assert rep["lists"]["train"]["entries"] == 5 and rep["lists"]["train"]["in_build"] == 4  # V..99 is not built
    assert len(rep["lists"]["test"]["sha256"]) == 64

    rows = _vrows(spec)
    rep = S.assign_splits(rows, fractions=(0.0, 0.0), salt="s", lists=lists, repair=False)
    split = {r["clip_id"]: r["split"] for r in rows}
    assert split[f"{A}_20_0"] == "test" and split[f"{A}_0_0"] == "train"  # kept as published: a leak
    assert set(S.leaking_groups(rows)) == {A, E}
    assert all(c["moved_to"] is None for c in rep["conflicts"])


def _engine_recipe(tmp_path: Path, src: Path, **split) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(json.dumps({"name": "split-test", "sources": [str(src)], "split": split,
                             "execution": {"item_fn": f"{STANDIN}:process_item", "workers": 1}}))
    return p


@pytest.fixture()
def sphere360_files(tmp_path, monkeypatch):
    """Local files named the Sphere360 way (three sections of video A, one of B) and the stand-in."""
    import subprocess

    tmpl, src = tmp_path / "tmpl", tmp_path / "src"
    tmpl.mkdir()
    src.mkdir()
    ff = ["ffmpeg", "-v", "error", "-y"]
    subprocess.run([*ff, "-f", "lavfi", "-i", "testsrc=size=64x36:rate=10", "-t", "1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(tmpl / "t.mp4")], check=True)
    subprocess.run([*ff, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "1", str(tmpl / "t.flac")],
                   check=True)
    subprocess.run([*ff, "-f", "lavfi", "-i", "testsrc=size=64x32", "-frames:v", "1", str(tmpl / "t.jpg")], check=True)
    A, B = _vid(1), _vid(2)
    for name in (f"{A}_0", f"{A}_10", f"{A}_20", f"{B}_40"):
        (src / f"{name}.mp4").write_bytes((tmpl / "t.mp4").read_bytes())
    monkeypatch.setenv("BIAUDIO_STANDIN", json.dumps({"template": str(tmpl)}))
    return src, A, B


def test_build_with_split_lists(tmp_path, sphere360_files):
    src, A, B = sphere360_files
    _lists(tmp_path, [f"{A}_0", f"{A}_10", f"{B}_40"], [f"{A}_20"])
    rp = _engine_recipe(tmp_path, src, lists={"train": "train.txt", "test": "test.txt"})  # relative to the recipe
    out = tmp_path / "out"
    summary = build(load_recipe(rp), out)
    assert summary.exit_code == 0 and any(A in n and "moved whole to train" in n for n in summary.notes)
    df = pd.read_parquet(out / "manifest.parquet")
    assert set(df["group_id"]) == {A, B} and (df.groupby("group_id")["split"].nunique() == 1).all()
    assert set(df.loc[df["group_id"] == A, "split"]) == {"train"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["split"]["conflicts"][0]["group_id"] == A and stats["split"]["conflicts"][0]["moved_to"] == "train"
    assert stats["clips"]["groups_by_split"] == {"train": 2, "val": 0, "test": 0}
    assert validate(out, check_media=False).ok
    first = (out / "manifest.parquet").read_bytes()
    build(load_recipe(rp), out)  # a rerun (nothing to do) gives the same bytes
    assert (out / "manifest.parquet").read_bytes() == first

    out2 = tmp_path / "out-norepair"
    rp2 = _engine_recipe(tmp_path, src, lists={"train": "train.txt", "test": "test.txt"}, repair=False)
    build(load_recipe(rp2), out2)
    res = CliRunner().invoke(app, ["validate", str(out2), "--no-media", "--json"])
    assert res.exit_code == 1 and A in res.output and "split_leak" in res.output

    rp3 = _engine_recipe(tmp_path, src, lists={"train": "missing.txt"})
    res = CliRunner().invoke(app, ["build", str(rp3), "--out", str(tmp_path / "out3"), "--json"])
    assert res.exit_code == 2 and "missing.txt" in res.output


# ------------------------------------------------------------------ times in the source video


def test_section_start():
    sec = SourceItem("dQw4w9WgXcQ_120", "sphere360", "https://www.youtube.com/watch?v=dQw4w9WgXcQ", (120.0, 130.0))
    assert S.section_start(sec) == 120.0 and S.section_start(sec.to_dict()) == 120.0
    assert S.section_start(SourceItem("dQw4w9WgXcQ", "youtube", "https://www.youtube.com/watch?v=dQw4w9WgXcQ")) is None
    f = SourceItem("0B7ds6NmVBQl_20", "file", "/d/0B7ds6NmVBQl_20.webm")
    assert S.section_start(f) is None and S.section_start(f, offset_from_name=True) == 20.0
    assert S.section_start(SourceItem("take_12", "file", "/d/take_12.mp4"), offset_from_name=True) is None
    # a local file with a section is cut by the build itself: its times are already the file's
    assert S.section_start(SourceItem("x", "file", "/d/x.mp4", (5.0, 15.0)), offset_from_name=True) is None


# ------------------------------------------------------------------ v1 folders


def _write_v1(out: Path, rows: list[dict]) -> None:
    """A v1 manifest as a v1 biaudio wrote it: no group_id/section_start_s, times in the section."""
    table = m.manifest_table(rows)
    table = table.drop_columns(list(m.V2_COLUMNS))
    i = table.column_names.index("schema_version")
    table = table.set_column(i, table.schema.field(i), pa.array([1] * table.num_rows, pa.int32()))
    table = table.replace_schema_metadata({b"biaudio.schema_version": b"1"})
    pq.write_table(table, out / "manifest.parquet", compression="zstd")


@pytest.fixture()
def v1_folder(tmp_path) -> Path:
    out = tmp_path / "v1"
    out.mkdir()
    vid = "0B7ds6NmVBQl"
    uri = f"https://www.youtube.com/watch?v={vid}"
    rows = [_row(f"{vid}_20", uri, 0.5), _row(f"{vid}_30", uri, 1.0), _row("lake", "/data/lake.mp4", 3.0)]
    rows = m.complete_rows(rows, recipe_hash="oldhash", split_fractions=(0.1, 0.1), salt="biaudio-v1", versions="{}")
    splits = {f"{vid}_20": "train", f"{vid}_30": "test", "lake": "val"}  # what per-item hashing could give
    rows = [dict(r, split=splits[r["source_id"]], qa_status="accepted" if r["source_id"] == "lake" else "pending")
            for r in rows]
    _touch_media(out, rows)
    _write_v1(out, rows)
    (out / "recipe.yaml").write_text("name: old\nsplit: {val_fraction: 0.0, test_fraction: 0.0, salt: s}\n")
    (out / ".state" / "items").mkdir(parents=True)
    (out / ".state" / "build.json").write_text(json.dumps({"schema_version": 1, "recipe_hash": "oldhash"}))
    (out / ".state" / "items" / "lake.json").write_text(json.dumps({"record_version": 1, "schema_version": 1,
                                                                     "item_id": "lake", "recipe_hash": "oldhash"}))
    m.write_rejects(out, [])
    (out / "stats.json").write_text(json.dumps({"schema_version": 1, "clips": {"kept": 3}}))
    return out


def test_v1_manifest_reads_everywhere_with_derived_columns(v1_folder):
    out = v1_folder
    t = m.read_manifest(out).to_pylist()
    by = {r["source_id"]: r for r in t}
    assert by["0B7ds6NmVBQl_20"]["group_id"] == "0B7ds6NmVBQl" and by["lake"]["group_id"] == "lake"
    assert by["0B7ds6NmVBQl_20"]["section_start_s"] == 20.0 and by["0B7ds6NmVBQl_20"]["start_s"] == 20.5
    assert by["0B7ds6NmVBQl_20"]["end_s"] == 21.5 and by["lake"]["section_start_s"] is None
    assert by["lake"]["start_s"] == 3.0 and by["lake"]["schema_version"] == 1
    assert m.read_manifest(out, columns=["clip_id", "group_id"]).column_names == ["clip_id", "group_id"]
    df = m.read_manifest_frame(out)
    assert set(df["group_id"]) == {"0B7ds6NmVBQl", "lake"}

    from visaudio.data import load_manifest_split

    assert list(load_manifest_split(out, "test", qa_ok=True)["group_id"]) == ["0B7ds6NmVBQl"]
    from visaudio.eval.runner import load_split

    assert list(load_split(out, "train", need_model=False)["group_id"]) == ["0B7ds6NmVBQl"]
    from biaudio.review.clips import load_clipset

    cs = load_clipset(out)
    assert "group_id" in cs.table.column_names

    rep = validate(out, check_media=False)
    assert [p.check for p in rep.problems] == ["split_leak"] and "biaudio upgrade" in rep.problems[0].detail
    assert rep.schema_version == 1 and "biaudio upgrade" in rep.notes[0]
    with pytest.raises(m.SchemaVersionError, match="biaudio upgrade"):
        check_out_dir(out)


def test_upgrade_v1_folder(v1_folder):
    out = v1_folder
    before = (out / "manifest.parquet").read_bytes()
    res = CliRunner().invoke(app, ["upgrade", str(out), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["leaking_groups_before"] == 1 and rep["clips_moved"] >= 1 and rep["changed"] is False
    assert (out / "manifest.parquet").read_bytes() == before

    res = CliRunner().invoke(app, ["upgrade", str(out)])
    assert res.exit_code == 0, res.output
    assert "moved" in res.output
    assert m.manifest_version(out) == m.SCHEMA_VERSION
    t = pq.read_table(out / "manifest.parquet")
    assert t.schema.names[: len(m.MANIFEST_SCHEMA)] == m.MANIFEST_SCHEMA.names
    df = t.to_pandas()
    assert (df["schema_version"] == 2).all() and (df.groupby("group_id")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train"}  # the folder's recipe.yaml: val/test fractions 0
    assert df.set_index("source_id").loc["lake", "qa_status"] == "accepted"  # QA kept
    assert df.set_index("source_id").loc["0B7ds6NmVBQl_30", "start_s"] == 31.0
    assert (out / "manifest_versions" / "manifest.v1.parquet").read_bytes() == before
    assert validate(out, check_media=False).ok
    check_out_dir(out)  # a v2 build may now extend it
    assert json.loads((out / ".state" / "items" / "lake.json").read_text())["schema_version"] == 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["schema_version"] == 2 and stats["clips"]["groups_by_split"]["train"] == 2
    assert pq.read_schema(out / "rejects.parquet").metadata[b"biaudio.schema_version"] == b"2"
    # idempotent
    after = (out / "manifest.parquet").read_bytes()
    res = CliRunner().invoke(app, ["upgrade", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["changed"] is False
    assert (out / "manifest.parquet").read_bytes() == after


def test_upgrade_errors(tmp_path):
    res = CliRunner().invoke(app, ["upgrade", str(tmp_path), "--json"])
    assert res.exit_code == 1 and "no manifest" in json.loads(res.stdout)["error"]
    with pytest.raises(BiaudioError):
        upgrade(tmp_path)


def test_eval_bootstrap_clusters_by_group():
    from visaudio.eval.runner import _groups

    df = pd.DataFrame({"clip_id": ["a", "b"], "source_id": ["v_0", "v_10"], "group_id": ["v", "v"]})
    assert list(_groups(df)) == ["v", "v"]
    assert list(_groups(df.drop(columns="group_id"))) == ["v_0", "v_10"]


def test_real_pipeline_times_are_in_the_source_video(tmp_path):
    """The real stages on a synthetic scene, then the same file named as a Sphere360 clip
    (``<ytid>_30.mp4``) with ``timeline.offset_from_name``: same windows, times 30 s later."""
    from tests._support.build import run_demo_build

    first = run_demo_build(tmp_path / "synth", small_demo_overrides(1, 6.0))
    a = pd.read_parquet(first / "manifest.parquet").sort_values("start_s")
    assert len(a) >= 1 and a["section_start_s"].isna().all() and (a["group_id"] == "scene_0000").all()
    (scene,) = (first / "sources").glob("synth-*/scene_0000.mp4")
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{_vid(7)}_30.mp4").write_bytes(scene.read_bytes())
    second = run_demo_build(tmp_path / "named", (f"sources=['{src}']", "timeline.offset_from_name=true",
                                                 "execution.workers=1"))
    b = pd.read_parquet(second / "manifest.parquet").sort_values("start_s")
    assert list(b["section_start_s"]) == [30.0] * len(a) and (b["group_id"] == _vid(7)).all()
    assert list(b["start_s"]) == [s + 30.0 for s in a["start_s"]] and list(b["end_s"]) == [e + 30.0 for e in a["end_s"]]
    assert list(b["duration_s"]) == list(a["duration_s"])
    # the clip id and file names keep the time in the file
    assert [c.rsplit("_", 1)[1] for c in b["clip_id"]] == [c.rsplit("_", 1)[1] for c in a["clip_id"]]
    assert validate(second, check_media=True).ok
