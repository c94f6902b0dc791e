"""Manifest schema v2: round trip through pandas, pyarrow and duckdb; splits by source; versions."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biaudio import manifest as m
from biaudio.errors import BiaudioError

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("standin", REPO / "tests" / "_support" / "standin.py")
standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin)


def _rows(n_sources: int = 5) -> list[dict]:
    """Stage rows (as process_item returns them) for n sources x 2 clips."""
    rows = []
    for s in range(n_sources):
        sid = f"src{s:02d}"
        for k, start_ms in enumerate((0, 8000)):
            cid = f"{sid}_{start_ms}"
            rows.append({
                "clip_id": cid, "source_id": sid, "source_uri": f"/data/{sid}.webm",
                "start_s": start_ms / 1000, "end_s": start_ms / 1000 + 8, "duration_s": 8.0,
                "video_path": f"clips/{cid}.mp4", "audio_path": f"clips/{cid}.flac",
                "preview_path": None if k else f"previews/{cid}.jpg",
                "fps": 29.97, "hfov_deg": 90.0, "width": 640, "height": 360, "sample_rate": 48000, "num_frames": 3,
                "trajectory": standin.trajectory_for(cid, 3, 29.97), "trajectory_mode": "paper",
                "clip_azimuth_deg": 12.5, "clip_elevation_deg": -3.0,
                "window_directions": [{"t": 0.1, "azimuth_deg": 12.0, "elevation_deg": -3.0, "diffuseness": 0.3,
                                       "energy_db": -20.0}],
                "silence_ratio": 0.1, "static_ratio": 0.2, "speech_ratio": None, "speech_backend": "silero",
                "speech_checkpoint": None, "lr_difference": 0.12, "caption": None, "caption_visible": None,
                "caption_invisible": None, "caption_backend": "none", "foa_convention": "ambix",
                "hrir_set": "kemar", "decoder": "magls", "lr_difference_formula": "|L-R|/(|L|+|R|)",
            })
    return rows[::-1]  # unsorted on purpose


def _complete(rows):
    return m.complete_rows(rows, recipe_hash="abc123", split_fractions=(0.2, 0.3), salt="t")


def test_round_trip_pandas_pyarrow_duckdb(tmp_path):
    rows = _complete(_rows())
    path = m.write_manifest(tmp_path, rows)
    assert not [p for p in tmp_path.iterdir() if p.name != "manifest.parquet"]  # no temp file left

    t = m.read_manifest(tmp_path)
    assert t.schema.field("trajectory").type.equals(m.MANIFEST_SCHEMA.field("trajectory").type)
    assert t.column_names[: len(m.MANIFEST_SCHEMA)] == m.MANIFEST_SCHEMA.names
    assert "lr_difference_formula" in t.column_names  # a stage's extra column is kept
    assert t.column("clip_id").to_pylist() == sorted(r["clip_id"] for r in rows)  # deterministic order

    df = pd.read_parquet(path)
    assert len(df) == 10 and set(df["split"]) <= {"train", "val", "test"}
    assert df["schema_version"].dtype.name == "int32" and (df["schema_version"] == m.SCHEMA_VERSION).all()
    assert (df["qa_status"] == "pending").all()
    first = df.iloc[0]
    assert len(first["trajectory"]) == 3 and set(first["trajectory"][0]) == {"t", "yaw", "pitch", "roll"}
    assert json.loads(first["tool_versions"])["pyarrow"] == pa.__version__

    con = duckdb.connect()
    got = con.execute(
        f"SELECT clip_id, len(trajectory) AS n, trajectory[1].yaw AS yaw0, window_directions[1].azimuth_deg AS az "
        f"FROM read_parquet('{path}') ORDER BY clip_id LIMIT 1").fetchone()
    want = sorted(rows, key=lambda r: r["clip_id"])[0]
    assert got == (want["clip_id"], 3, want["trajectory"][0]["yaw"], 12.0)
    splits = con.execute(f"SELECT count(DISTINCT split) FROM read_parquet('{path}') GROUP BY source_id").fetchall()
    assert all(n == 1 for (n,) in splits)


def test_same_rows_give_identical_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    m.write_manifest(a, _complete(_rows()))
    m.write_manifest(b, _complete(list(reversed(_rows()))))
    assert (a / "manifest.parquet").read_bytes() == (b / "manifest.parquet").read_bytes()


def test_rows_missing_required_or_duplicated_are_refused(tmp_path):
    rows = _complete(_rows(1))
    bad = [dict(rows[0], trajectory=None)]
    with pytest.raises(BiaudioError, match="trajectory"):
        m.write_manifest(tmp_path, bad)
    with pytest.raises(BiaudioError, match="twice"):
        m.write_manifest(tmp_path, [rows[0], dict(rows[0])])
    assert not (tmp_path / "manifest.parquet").exists()


def test_other_schema_version_is_refused(tmp_path):
    table = m.manifest_table(_complete(_rows(1)))
    pq.write_table(table.replace_schema_metadata({b"biaudio.schema_version": b"3"}), tmp_path / "manifest.parquet")
    with pytest.raises(m.SchemaVersionError, match="v3"):
        m.read_manifest(tmp_path)


def test_split_is_by_group_and_stable():
    fr = (0.2, 0.3)
    ids = [f"video{i}" for i in range(2000)]
    splits = [m.assign_split(s, fr, "salt") for s in ids]
    share = {k: splits.count(k) / len(ids) for k in ("train", "val", "test")}
    assert abs(share["test"] - 0.3) < 0.04 and abs(share["val"] - 0.2) < 0.04 and abs(share["train"] - 0.5) < 0.04
    assert splits == [m.assign_split(s, fr, "salt") for s in ids]  # deterministic
    assert splits != [m.assign_split(s, fr, "other") for s in ids]  # the salt matters
    # every clip of one video lands in the split of that video, whatever the clip or the item:
    # files named the Sphere360 way (<ytid>_<start>) are sections of one video
    rows = _rows(40)
    for r in rows:
        r["source_uri"] = f"/data/{'Vid' + r['source_id'][-2:-1]}_{r['source_id'][-1]}0.webm"
    rows = _complete(rows)
    assert len({r["group_id"] for r in rows}) == 4 and len({r["source_id"] for r in rows}) == 40
    by_group: dict[str, set] = {}
    for r in rows:
        by_group.setdefault(r["group_id"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_group.values())
    assert [r["split"] for r in rows] == [m.assign_split(r["group_id"], (0.2, 0.3), "t") for r in rows]


def test_rejects_table(tmp_path):
    m.write_rejects(tmp_path, [{"item_id": "b", "stage": "fetch", "reason": "http_404", "detail": "x", "attempt": 2,
                                "source_uri": "https://y"},
                               {"item_id": "a", "clip_id": "a_0", "stage": "spatial_cue", "reason": "no_lr_difference"}])
    df = pd.read_parquet(tmp_path / "rejects.parquet")
    assert list(df.columns) == ["item_id", "clip_id", "stage", "reason", "detail", "attempt", "source_uri"]
    assert list(df["item_id"]) == ["a", "b"] and list(df["attempt"]) == [1, 2]


def test_readme_documents_every_column():
    doc = (REPO / "manifests" / "README.md").read_text()
    assert re.search(rf"schema[_ ]version.*\b{m.SCHEMA_VERSION}\b", doc)
    assert "v1 -> v2" in doc or "v1 → v2" in doc
    for name in m.MANIFEST_SCHEMA.names + m.REJECTS_SCHEMA.names:
        assert f"`{name}`" in doc, f"manifests/README.md does not document column {name}"


# ------------------------------------------------------------------ typed rows


def test_every_schema_column_is_a_cliprow_field_and_vice_versa():
    """Adding a column to only one of MANIFEST_SCHEMA / ClipRow (or REJECTS_SCHEMA / Reject) fails here."""
    from dataclasses import fields

    assert [f.name for f in fields(m.ClipRow) if f.name != "extra"] == m.MANIFEST_SCHEMA.names
    assert list(m.ClipRow.columns()) == m.MANIFEST_SCHEMA.names
    assert [f.name for f in fields(m.Reject)] == m.REJECTS_SCHEMA.names == list(m.Reject.columns())


def test_cliprow_round_trip_dict_and_parquet(tmp_path):
    rows = _complete(_rows(2))
    for r in rows:
        clip = m.ClipRow.from_dict(r)
        assert clip.to_dict() == r  # nothing converted, nothing lost (extra columns kept)
        assert clip.extra == {"lr_difference_formula": "|L-R|/(|L|+|R|)"}
        assert clip.to_dict(stage=True).keys().isdisjoint({"split", "group_id", "recipe_hash", "tool_versions"})
    m.write_manifest(tmp_path, rows)
    back = m.read_manifest(tmp_path).to_pylist()
    for r in back:  # a row read back from parquet is a valid ClipRow that writes the same file
        assert m.ClipRow.from_dict(r).to_dict() == r
    again = tmp_path / "again"
    again.mkdir()
    m.write_manifest(again, [m.ClipRow.from_dict(r).to_dict() for r in back])
    assert (again / "manifest.parquet").read_bytes() == (tmp_path / "manifest.parquet").read_bytes()
    # pandas rows (numpy scalars and arrays, NaN for a missing string) read with strict=False
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    df.loc[0, "caption"] = float("nan")
    clip = m.ClipRow.from_dict(df.iloc[0].to_dict(), strict=False)
    assert clip.caption is None and clip.width == 640 and len(clip.trajectory) == 3


def test_cliprow_names_the_clip_and_column_of_a_bad_row():
    row = _complete(_rows(1))[0]
    cid = row["clip_id"]
    with pytest.raises(BiaudioError, match=rf"clip {cid}: missing column\(s\) \['audio_path'\]") as e:
        m.ClipRow.from_dict({k: v for k, v in row.items() if k != "audio_path"})
    assert e.value.reason == "incomplete_row"
    with pytest.raises(BiaudioError, match=rf"clip {cid}: column width is str, expected int") as e:
        m.ClipRow.from_dict(dict(row, width="640"))
    assert e.value.reason == "bad_row"
    with pytest.raises(BiaudioError, match=rf"clip {cid}: column trajectory element 0 lacks \['roll'\]"):
        m.ClipRow.from_dict(dict(row, trajectory=[{"t": 0.0, "yaw": 0.0, "pitch": 0.0}]))
    with pytest.raises(BiaudioError, match=rf"clip {cid}: column fps is bool"):
        m.ClipRow.from_dict(dict(row, fps=True))
    # the writer refuses it the same way (nothing written), and a stage row may lack the engine columns
    with pytest.raises(BiaudioError, match=rf"clip {cid}: column width"):
        m.manifest_table([dict(row, width="640")])
    stage = {k: v for k, v in row.items() if k not in m.ENGINE_COLUMNS}
    assert m.ClipRow.from_dict(stage, stage=True).split is None
    with pytest.raises(BiaudioError, match="missing column.*split"):
        m.ClipRow.from_dict(stage)
    # a partial manifest (review, eval): absent columns are None, present ones still checked
    part = m.ClipRow.from_dict({"clip_id": "x", "video_path": "clips/x.mp4"}, strict=False)
    assert part.qa_status is None and part.get("hfov_deg", 90.0) == 90.0
    with pytest.raises(BiaudioError, match="clip x: column hfov_deg is str"):
        m.ClipRow.from_dict({"clip_id": "x", "hfov_deg": "wide"}, strict=False)


def test_parquet_is_read_and_written_only_by_the_manifest_module(tmp_path: Path) -> None:
    """biaudio.manifest is the one parquet reader/writer (one set of options, temp + rename): no
    other module of the packages or benchmarks calls pandas' or pyarrow's parquet functions, and
    its side-table writer gives byte-identical files for equal frames, read back by pandas."""
    import ast

    import pandas as pd

    from biaudio.manifest import read_frame, write_frame

    repo = Path(__file__).resolve().parents[2]
    banned = {"read_parquet", "to_parquet", "write_table", "read_table", "ParquetFile", "ParquetWriter"}
    hits = []
    for root in ("biaudio", "visaudio", "benchmarks"):
        for f in sorted((repo / root).rglob("*.py")):
            rel = f.relative_to(repo).as_posix()
            if rel == "biaudio/manifest.py":
                continue
            for n in ast.walk(ast.parse(f.read_text())):
                if isinstance(n, ast.Attribute) and n.attr in banned and isinstance(n.value, ast.Name) \
                        and n.value.id in ("pd", "pq", "df", "pandas", "parquet") or \
                        isinstance(n, ast.Attribute) and n.attr in ("read_parquet", "to_parquet"):
                    hits.append(f"{rel}:{n.lineno}: {n.attr}")
    assert not hits, "\n".join(hits)
    df = pd.DataFrame({"clip_id": ["a", "b"], "x": [1.5, None], "tags": [["p"], []]})
    a, b = write_frame(df, tmp_path / "a.parquet"), write_frame(df, tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    back = pd.read_parquet(a)
    assert back["clip_id"].tolist() == ["a", "b"] and back["tags"].map(list).tolist() == [["p"], []]
    assert read_frame(a).equals(back)
