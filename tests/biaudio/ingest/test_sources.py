"""Source lists: every accepted form, de-dup, stable ids, malformed lines with file:line."""

from __future__ import annotations

import pandas as pd
import pytest

from biaudio.errors import BiaudioError
from biaudio.ingest.sources import read_sources


def test_text_list_kinds_dedup_and_errors(tmp_path):
    media = tmp_path / "clips"
    media.mkdir()
    for n in ("a.webm", "b.mp4"):
        (media / n).write_bytes(b"x" * 10)
    (media / "notes.txt").write_text("not media")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([
        "# comment",
        "dQw4w9WgXcQ",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",  # duplicate of line 2
        "0B7ds6NmVBQl_20",  # Sphere360 id (12-char video id)
        "https://youtu.be/-abcdefghij",  # id starting with '-'
        "-rf --exec evil",  # option-looking garbage
        "https://example.org/v/clip.mp4",
        "not an id at all!",
        "clips",  # folder relative to the list
        "clips/*.mp4",  # glob: b.mp4 again -> duplicate
        "",
    ]))
    res = read_sources(lst)
    kinds = [(i.kind, i.source_id) for i in res.items]
    assert ("youtube", "dQw4w9WgXcQ") in kinds
    s360 = next(i for i in res.items if i.kind == "sphere360")
    assert s360.source_id == "0B7ds6NmVBQl_20" and s360.section == (20.0, 30.0)
    assert s360.uri == "https://www.youtube.com/watch?v=0B7ds6NmVBQl"
    dash = next(i for i in res.items if i.source_id == "-abcdefghij")
    assert dash.uri.startswith("https://") and not any(i.uri.startswith("-") for i in res.items)
    files = sorted(i.source_id for i in res.items if i.kind == "file")
    assert files == ["a", "b"]
    assert res.duplicates == 2
    assert sum(i.kind == "url" for i in res.items) == 1
    lines = sorted(e.path for e in res.errors)
    assert lines == [f"{lst}:6", f"{lst}:8"]
    assert all(e.reason == "malformed_source" for e in res.errors)
    # stable ids: same input -> same ids
    assert [i.source_id for i in read_sources(lst).items] == [i.source_id for i in res.items]


def test_csv_and_parquet_with_sections(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("id,start,end\nabcdefghijk,5,15\nabcdefghijk,30,40\nbad id,,\nzyxwvutsrqp,,\n")
    res = read_sources(csv)
    secs = [(i.source_id, i.section) for i in res.items]
    assert secs == [("abcdefghijk_5", (5.0, 15.0)), ("abcdefghijk_30", (30.0, 40.0)), ("zyxwvutsrqp", None)]
    assert [e.path for e in res.errors] == [f"{csv}:4"]
    pq = tmp_path / "s.parquet"
    pd.DataFrame({"url": ["abcdefghijk_7", "https://example.org/x.webm", None]}).to_parquet(pq)
    res = read_sources([str(pq), "abcdefghijk_7"])
    assert [i.kind for i in res.items] == ["sphere360", "url"] and res.duplicates == 1
    assert len(res.errors) == 1 and res.errors[0].path == f"{pq}:4"


def test_empty_or_all_bad_list_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(BiaudioError) as ei:
        read_sources(empty)
    assert ei.value.reason == "empty_source_list"
    with pytest.raises(BiaudioError) as ei:
        read_sources(["--option", "???"])
    assert ei.value.reason == "empty_source_list" and "option" in ei.value.detail
