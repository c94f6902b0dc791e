"""`biaudio qa summary` (counts, Cohen's kappa between passes) and `biaudio qa apply` (policies,
manifest versions). Decisions are planted straight into a real qa.sqlite."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from biaudio.cli import app
from biaudio.review.db import QADatabase
from biaudio.review.qa import cohen_kappa
from tests.biaudio.review.support import manifest_rows, write_manifest

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, list(args))


def test_kappa_two_passes_with_planted_disagreements(tmp_path):
    db = QADatabase(tmp_path / "qa.sqlite")
    p1 = ["accept"] * 5 + ["reject"] * 3 + ["flag"] * 2
    p2 = ["accept", "accept", "accept", "reject", "accept", "reject", "reject", "accept", "flag", "accept"]
    for i, (a, b) in enumerate(zip(p1, p2, strict=True)):
        db.record(f"c{i}", 1, "ann", a, "static" if a == "reject" else None)
        if i == 3:  # pass 2 first says accept on c3, undoes it, then rejects: only the reject counts
            db.record("c3", 2, "ben", "accept")
            db.undo_last(2, "ben")
        db.record(f"c{i}", 2, "ben", b, "wrong_sound" if b == "reject" else None)
    db.record("c10", 1, "ann", "accept")  # only pass 1 decided: not in kappa
    db.record("c11", 1, "ann", "reject", "static")
    db.record("c11", 2, "ben", "skip")  # a skip is not a decision: not in kappa
    # By hand: agreement on c0 c1 c2 c4 c5 c6 c8 -> p_o = 7/10.
    # Marginals pass 1: A 5, R 3, F 2; pass 2: A 6, R 3, F 1 -> p_e = (5*6 + 3*3 + 2*1)/100 = 0.41.
    # kappa = (0.7 - 0.41) / (1 - 0.41) = 0.29 / 0.59 = 0.4915...
    res = _cli("qa", "summary", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    (k,) = s["agreement"]
    assert (k["pass_a"], k["pass_b"], k["n"]) == (1, 2, 10)
    assert k["observed"] == pytest.approx(0.7)
    assert k["expected"] == pytest.approx(0.41)
    assert k["kappa"] == pytest.approx(0.29 / 0.59)
    assert k["confusion"]["accept"] == {"accept": 4, "reject": 1, "flag": 0}
    assert k["confusion"]["flag"] == {"accept": 1, "reject": 0, "flag": 1}
    p1s, p2s = s["passes"]
    assert p1s["decisions"] == {"accept": 6, "reject": 4, "flag": 2}
    assert p1s["reject_reasons"] == {"static": 4} and p1s["reviewers"] == ["ann"]
    assert p2s["decisions"] == {"accept": 6, "reject": 3, "flag": 1, "skip": 1}
    assert p2s["clips_decided"] == 10 and p2s["undone"] == 1 and p2s["events"] == 12
    # the human-readable table also works
    res = _cli("qa", "summary", str(tmp_path))
    assert res.exit_code == 0 and "0.492" in res.output


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([], []) == (None, None, None)
    po, pe, k = cohen_kappa(["accept", "reject"], ["accept", "reject"])
    assert (po, pe, k) == (1.0, 0.5, 1.0)
    assert cohen_kappa(["accept"] * 3, ["accept"] * 3)[2] is None  # p_e = 1: undefined
    assert cohen_kappa(["accept", "reject"], ["reject", "accept"])[2] == pytest.approx(-1.0)


@pytest.fixture
def planted(tmp_path):
    """Six clips, three passes; see the table in test_apply_policies."""
    rows = manifest_rows(6)
    write_manifest(tmp_path, rows)
    ids = [r["clip_id"] for r in rows]
    db = QADatabase(tmp_path / "qa.sqlite")
    c = ids
    db.record(c[0], 1, "ann", "accept")
    db.record(c[0], 2, "ben", "reject", "static")
    db.record(c[0], 3, "cy", "accept")
    db.record(c[1], 1, "ann", "reject", "wrong_sound")
    db.record(c[1], 2, "ben", "accept")
    db.record(c[2], 1, "ann", "flag", None, "check audio")
    db.record(c[2], 2, "ben", "skip")
    db.record(c[3], 1, "ann", "accept")
    db.undo_last(1, "ann")
    db.record(c[3], 1, "ann", "reject", "other", "dubbed")
    db.record(c[5], 2, "ben", "reject", "bad_direction")
    db.record(c[5], 3, "cy", "reject", "voice_over_music")
    db.record("ghost_0", 1, "ann", "accept")
    return tmp_path, ids


EXPECTED = {
    # one (qa_status, qa_reason) per clip c0..c5, from the decisions planted in `planted`:
    # c0 A/R/A, c1 R/A, c2 F/skip, c3 (A undone) R other+note, c4 none, c5 -/R/R
    "last-pass-wins": [
        ("accepted", None),
        ("accepted", None),
        ("flagged", "check audio"),
        ("rejected", "other: dubbed"),
        ("pending", None),
        ("rejected", "voice_over_music"),
    ],
    "any-reject-rejects": [
        ("rejected", "static"),
        ("rejected", "wrong_sound"),
        ("flagged", "check audio"),
        ("rejected", "other: dubbed"),
        ("pending", None),
        ("rejected", "voice_over_music"),
    ],
    "majority": [
        ("accepted", None),
        ("flagged", "tie: accept 1, reject 1"),
        ("flagged", "check audio"),
        ("rejected", "other: dubbed"),
        ("pending", None),
        ("rejected", "voice_over_music"),
    ],
}


def test_apply_policies_and_versions(planted):
    out, ids = planted
    original = (out / "manifest.parquet").read_bytes()
    before = pd.read_parquet(out / "manifest.parquet")
    schema_before = pq.read_schema(out / "manifest.parquet")
    for n, (policy, expected) in enumerate(EXPECTED.items(), start=1):
        res = _cli("qa", "apply", str(out), "--policy", policy, "--json")
        assert res.exit_code == 0, res.output
        info = json.loads(res.output)
        assert info["decisions_for_unknown_clips"] == ["ghost_0"]
        assert info["previous_version"].endswith(f"manifest_versions/manifest.v{n}.parquet")
        df = pd.read_parquet(out / "manifest.parquet")
        got = [(s, None if pd.isna(r) else r) for s, r in zip(df["qa_status"], df["qa_reason"], strict=True)]
        assert got == expected, policy
        # everything except the QA columns is untouched, rows in the same order, same schema
        pd.testing.assert_frame_equal(
            df.drop(columns=["qa_status", "qa_reason"]), before.drop(columns=["qa_status", "qa_reason"])
        )
        schema = pq.read_schema(out / "manifest.parquet")
        assert schema.remove_metadata().equals(schema_before.remove_metadata())
        meta = json.loads(schema.metadata[b"biaudio.qa_apply"])
        assert meta["policy"] == policy and meta["previous_version"] == f"manifest.v{n}.parquet"
    assert (out / "manifest_versions" / "manifest.v1.parquet").read_bytes() == original
    assert sorted(p.name for p in (out / "manifest_versions").iterdir()) == [
        "manifest.v1.parquet",
        "manifest.v2.parquet",
        "manifest.v3.parquet",
    ]
    assert not list(out.glob(".manifest-*")), "no temporary files left behind"
    # the version kept before the 3rd apply is the any-reject-rejects result
    v3 = pd.read_parquet(out / "manifest_versions" / "manifest.v3.parquet")
    assert list(v3["qa_status"]) == [s for s, _ in EXPECTED["any-reject-rejects"]]


def test_apply_adds_missing_qa_columns_and_refuses_bad_input(tmp_path):
    write_manifest(tmp_path, manifest_rows(2), drop=("qa_status", "qa_reason", "preview_path"))
    res = _cli("qa", "apply", str(tmp_path), "--json")
    assert res.exit_code == 1 and "no QA database" in json.loads(res.output)["error"]
    db = QADatabase(tmp_path / "qa.sqlite")
    db.record("src0_8000", 1, "ann", "reject", "static")
    res = _cli("qa", "apply", str(tmp_path), "--policy", "nonsense")
    assert res.exit_code == 2
    res = _cli("qa", "apply", str(tmp_path))
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    assert list(df["qa_status"]) == ["pending", "rejected"] and df["qa_reason"].iloc[1] == "static"
    # an old schema version is refused, and the manifest is left alone
    rows = manifest_rows(1)
    rows[0]["schema_version"] = 0
    old = tmp_path / "old"
    old.mkdir()
    write_manifest(old, rows)
    QADatabase(old / "qa.sqlite").record(rows[0]["clip_id"], 1, "ann", "accept")
    before = (old / "manifest.parquet").read_bytes()
    res = _cli("qa", "apply", str(old), "--json")
    assert res.exit_code == 1 and "schema_version [0] is old" in json.loads(res.output)["error"]
    assert (old / "manifest.parquet").read_bytes() == before
    assert not (old / "manifest_versions").exists()


def test_summary_without_db_fails_and_reviewers_share_a_pass(tmp_path):
    res = _cli("qa", "summary", str(tmp_path), "--json")
    assert res.exit_code == 1
    db = QADatabase(tmp_path / "qa.sqlite")
    db.record("c0", 1, "ann", "accept")
    db.record("c0", 1, "ben", "reject", "static")  # newer decision of the same pass wins
    db.record("c0", 2, "cy", "reject", "wrong_sound")
    s = json.loads(_cli("qa", "summary", str(tmp_path), "--json").output)
    assert s["passes"][0]["decisions"] == {"reject": 1} and s["passes"][0]["reviewers"] == ["ann", "ben"]
    (k,) = s["agreement"]
    assert k["n"] == 1 and k["observed"] == 1.0 and k["kappa"] is None  # p_e = 1


def _pages(data: bytes) -> bytes:
    """A parquet file's column chunks: everything before the footer (the footer holds the schema
    metadata, where ``qa apply`` records itself)."""
    footer = int.from_bytes(data[-8:-4], "little")
    return data[: len(data) - 8 - footer]


def test_apply_without_decisions_writes_the_build_bytes(tmp_path):
    """One writer for every manifest write: with nothing to apply, ``qa apply`` writes the same
    column chunks as the build's writer, and with its own record dropped from the metadata the
    table writes back to the build's file byte for byte."""
    from biaudio import manifest as mf

    rows = mf.complete_rows(manifest_rows(4), recipe_hash="abc123", split_fractions=(0.5, 0.25), salt="s",
                            versions="{}")
    mf.write_manifest(tmp_path, rows)
    original = (tmp_path / "manifest.parquet").read_bytes()
    (tmp_path / "rebuild").mkdir()
    assert mf.write_manifest(tmp_path / "rebuild", rows).read_bytes() == original  # a rebuild: same bytes
    QADatabase(tmp_path / "qa.sqlite")  # a QA database without decisions
    res = _cli("qa", "apply", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    applied = (tmp_path / "manifest.parquet").read_bytes()
    assert (tmp_path / "manifest_versions" / "manifest.v1.parquet").read_bytes() == original
    assert _pages(applied) == _pages(original)
    meta = dict(pq.read_schema(tmp_path / "manifest.parquet").metadata)
    assert json.loads(meta.pop(b"biaudio.qa_apply"))["counts"] == {"pending": 4}
    assert meta == dict(pq.read_schema(tmp_path / "manifest_versions" / "manifest.v1.parquet").metadata)
    table = pq.read_table(tmp_path / "manifest.parquet").replace_schema_metadata(meta)
    assert mf.write_table(table, tmp_path / "again.parquet").read_bytes() == original
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left"
