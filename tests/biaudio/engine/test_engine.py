"""The build engine with a fast stand-in for the stages: resume after SIGKILL, skip, retry-failed,
local vs Ray, lock, schema version, full disk, validate. Real processes, real files, real parquet."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from biaudio.cli import app
from biaudio.engine.check import validate
from biaudio.engine.run import build
from biaudio.engine.state import BuildLockedError, _Lock
from biaudio.manifest import SchemaVersionError, read_manifest
from biaudio.recipe import load_recipe
from tests._support.build import make_standin_media

REPO = Path(__file__).resolve().parents[3]
STANDIN = REPO / "tests" / "_support" / "standin.py"
N_SOURCES = 6


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Tiny real media: a 1-s mp4 (H.264 + AAC), a 1-s flac, a jpg; plus N source files."""
    return make_standin_media(tmp_path_factory.mktemp("engine-media"), N_SOURCES)


def _recipe_file(media, tmp_path: Path, **execution) -> Path:
    ex = {"item_fn": f"{STANDIN}:process_item", "workers": 1, **execution}
    p = tmp_path / "recipe.yaml"
    p.write_text(json.dumps({"name": "engine-test", "sources": [str(media["src"])], "execution": ex}))
    return p


def _standin_env(media, calls: Path, **cfg) -> str:
    return json.dumps({"template": str(media["tmpl"]), "calls": str(calls), **cfg})


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _called_items(path: Path) -> list[str]:
    return _calls(path)[::2]


def _media_files(out: Path) -> set[str]:
    return {f"{d}/{p.name}" for d in ("clips", "previews") for p in (out / d).iterdir()}


def _referenced(out: Path) -> set[str]:
    t = read_manifest(out).to_pylist()
    return {r[k] for r in t for k in ("video_path", "audio_path", "preview_path") if r[k]}


def test_sigkill_half_way_then_resume_equals_uninterrupted(media, tmp_path, monkeypatch):
    recipe_path = _recipe_file(media, tmp_path)
    # reference: one uninterrupted build (in-process)
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, tmp_path / "calls_ref"))
    ref = build(load_recipe(recipe_path), tmp_path / "ref")
    assert ref.exit_code == 0 and ref.kept_clips == 2 * N_SOURCES

    # the same build as a CLI subprocess with slow items, SIGKILLed once >= 1 item is recorded
    out, calls = tmp_path / "out", tmp_path / "calls_out"
    env = {**os.environ, "BIAUDIO_STANDIN": _standin_env(media, calls, sleep=0.6)}
    proc = subprocess.Popen([sys.executable, "-m", "biaudio.cli", "build", str(recipe_path), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    items_dir = out / ".state" / "items"
    deadline = time.time() + 120
    while time.time() < deadline and not (items_dir.is_dir() and any(items_dir.glob("*.json"))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: driver and pool workers
    proc.wait(timeout=30)
    done_before = sorted(p.stem for p in items_dir.glob("*.json"))
    assert 1 <= len(done_before) < N_SOURCES, "the kill must land half-way"
    assert not (out / "manifest.parquet").exists()

    # resume: only the unfinished items run; the manifest is byte-identical to the reference
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, calls))
    n_calls = len(_called_items(calls))
    res = build(load_recipe(recipe_path), out)
    assert res.exit_code == 0
    rerun = _called_items(calls)[n_calls:]
    assert set(rerun) == {f"s{i}" for i in range(N_SOURCES)} - set(done_before)
    assert (out / "manifest.parquet").read_bytes() == (tmp_path / "ref" / "manifest.parquet").read_bytes()
    t = read_manifest(out)
    ids = t.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == 2 * N_SOURCES
    # no temporary or orphaned file in clips/ or previews/: exactly what the manifest references
    assert _media_files(out) == _referenced(out)
    assert validate(out).ok

    # a second run does nothing
    before = len(_calls(calls))
    again = build(load_recipe(recipe_path), out)
    assert again.processed == [] and again.skipped == N_SOURCES and len(_calls(calls)) == before
    assert (out / "manifest.parquet").read_bytes() == (tmp_path / "ref" / "manifest.parquet").read_bytes()


def test_retry_failed_touches_only_failed_items(media, tmp_path, monkeypatch):
    recipe = load_recipe(_recipe_file(media, tmp_path, workers=2))
    calls, out = tmp_path / "calls", tmp_path / "out"
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, calls, fail_once={"s1": "http_404"},
                                                         fail={"s4": "download_error"}))
    first = build(recipe, out)
    assert first.exit_code == 0  # rejects are data, not a failed build
    rej = pd.read_parquet(out / "rejects.parquet")
    assert sorted(zip(rej["item_id"], rej["reason"], strict=True)) == [("s1", "http_404"), ("s4", "download_error")]
    assert first.kept_clips == 2 * (N_SOURCES - 2)

    n = len(_called_items(calls))
    plain = build(recipe, out)
    assert plain.processed == [] and len(_called_items(calls)) == n  # failed items stay done without the flag

    only_404 = build(recipe, out, retry_failed=["http_404"])
    assert _called_items(calls)[n:] == ["s1"] and _calls(calls)[-1] == "2"  # attempt 2
    assert only_404.kept_clips == 2 * (N_SOURCES - 1)
    rej = pd.read_parquet(out / "rejects.parquet")
    assert list(rej["item_id"]) == ["s4"]

    n = len(_called_items(calls))
    build(recipe, out, retry_failed=[])  # every failed item
    assert _called_items(calls)[n:] == ["s4"]
    rej = pd.read_parquet(out / "rejects.parquet")
    assert list(rej["attempt"]) == [2]  # s4 still fails, on its second attempt


def test_cli_dry_run_limit_internal_error_and_stats(media, tmp_path, monkeypatch):
    rp = _recipe_file(media, tmp_path)
    out, calls = tmp_path / "out", tmp_path / "calls"
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, calls, crash=["s2"]))
    runner = CliRunner()
    res = runner.invoke(app, ["build", str(rp), "--out", str(out), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)["planned"]
    assert [p["action"] for p in plan] == ["run"] * N_SOURCES and not out.exists() and not calls.exists()

    res = runner.invoke(app, ["build", str(rp), "--out", str(out), "--limit", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["processed"] == ["s0", "s1"]
    assert len(read_manifest(out)) == 4

    res = runner.invoke(app, ["build", str(rp), "--out", str(out), "--json"])
    summary = json.loads(res.stdout)
    assert res.exit_code == 1  # s2 raised inside the stages: a bug, reported as an internal reject
    assert summary["internal_errors"] == ["s2"] and sorted(summary["processed"]) == ["s2", "s3", "s4", "s5"]
    rej = pd.read_parquet(out / "rejects.parquet")
    assert list(zip(rej["stage"], rej["reason"], strict=True)) == [("internal", "RuntimeError")]
    assert "stand-in crash" in (out / "logs" / "s2.log").read_text()  # the traceback is in the item log

    res = runner.invoke(app, ["stats", str(out), "--json"])
    st = json.loads(res.stdout)
    assert res.exit_code == 0 and st["clips"]["kept"] == 10 and st["rejects"]["by_stage"] == {"internal": 1}
    assert st["items"] == {"total": 6, "done": 6, "pending": 0, "with_clips": 5, "without_clips": 1}
    res = runner.invoke(app, ["stats", str(out)])
    assert res.exit_code == 0 and "internal" in res.stdout


def test_lock_and_other_schema_version_refused(media, tmp_path, monkeypatch):
    rp = _recipe_file(media, tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, tmp_path / "calls"))
    out.mkdir()
    with _Lock(out):
        with pytest.raises(BuildLockedError, match="another build"):
            build(load_recipe(rp), out)
        res = CliRunner().invoke(app, ["build", str(rp), "--out", str(out)])
        assert res.exit_code == 2
    (out / ".state" / "build.json").write_text(json.dumps({"schema_version": 3}))
    with pytest.raises(SchemaVersionError, match="schema v3"):
        build(load_recipe(rp), out)
    (out / ".state" / "build.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(SchemaVersionError, match="schema v1.*biaudio upgrade"):  # a v1 folder: say how to upgrade
        build(load_recipe(rp), out)
    res = CliRunner().invoke(app, ["build", str(rp), "--out", str(out), "--json"])
    assert res.exit_code == 2 and "schema" in res.stdout
    assert not (out / "manifest.parquet").exists()


def test_ray_and_local_give_same_clips_and_trajectories(media, tmp_path, monkeypatch):
    rp = _recipe_file(media, tmp_path, workers=2)
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, tmp_path / "calls", sleep=0.3))
    local = build(load_recipe(rp), tmp_path / "local")
    # two worker processes really ran items at the same time
    recs = [json.loads(p.read_text()) for p in (tmp_path / "local" / ".state" / "items").glob("*.json")]
    assert len({r["pid"] for r in recs}) == 2
    assert any(a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
               for a in recs for b in recs if a["pid"] != b["pid"])
    ray_ = build(load_recipe(rp, ["execution.executor=ray"]), tmp_path / "ray")
    assert local.exit_code == ray_.exit_code == 0
    a = pq.read_table(tmp_path / "local" / "manifest.parquet").to_pandas()
    b = pq.read_table(tmp_path / "ray" / "manifest.parquet").to_pandas()
    assert list(a["clip_id"]) == list(b["clip_id"]) and len(a) == 2 * N_SOURCES
    assert [list(t) for t in a["trajectory"]] == [list(t) for t in b["trajectory"]]
    assert (tmp_path / "local" / "manifest.parquet").read_bytes() == (tmp_path / "ray" / "manifest.parquet").read_bytes()
    assert json.loads((tmp_path / "ray" / "stats.json").read_text())["last_run"]["executor"] == "ray"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("BIAUDIO_TEST_NO_TMPFS"):  # exercise the file-size-limit fallback
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_full_disk_stops_and_keeps_finished_items_valid(media, tmp_path):
    """A real full disk (a 1 MiB tmpfs; where mounting is not allowed, a 1 MiB file-size limit):
    the item that cannot be written is rejected (disk_full), the run stops, and what was built
    before stays valid; after freeing space a plain rerun completes the build."""
    rp = _recipe_file(media, tmp_path)
    out = tmp_path / "disk" / "out"
    mounted = _mount_tmpfs(tmp_path / "disk", "1m")
    calls = tmp_path / "calls"
    env = {**os.environ, "BIAUDIO_STANDIN": _standin_env(media, calls, big={"s2": 3_000_000})}

    def limit_file_size() -> None:  # fallback when tmpfs cannot be mounted (not root)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    try:
        cmd = [sys.executable, "-m", "biaudio.cli", "build", str(rp), "--out", str(out), "--json"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                           preexec_fn=None if mounted else limit_file_size)
        assert r.returncode == 1, r.stderr[-2000:]
        summary = json.loads(r.stdout)
        assert summary["stopped"] and summary["write_errors"][0] == "s2"
        done = {p.stem for p in (out / ".state" / "items").glob("*.json")}
        assert {"s0", "s1"} <= done and "s2" not in done  # a write failure is not a completion
        for p in (out / ".state" / "items").glob("*.json"):
            json.loads(p.read_text())  # every record is complete JSON
        assert not [p for p in (out / "clips").iterdir() if p.name.startswith(".")]  # no temp left
        if (out / "manifest.parquet").exists():
            assert validate(out).ok
            rej = pd.read_parquet(out / "rejects.parquet")
            assert ("s2", "disk_full") in set(zip(rej["item_id"], rej["reason"], strict=True))

        # space again (no big file): a plain rerun finishes the rest, earlier items untouched
        n = len(_called_items(calls))
        env["BIAUDIO_STANDIN"] = _standin_env(media, calls)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                           preexec_fn=None if mounted else limit_file_size)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "s0" not in _called_items(calls)[n:] and "s2" in _called_items(calls)[n:]
        assert len(read_manifest(out)) == 2 * N_SOURCES and validate(out).ok
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


def test_validate_catches_missing_file_and_path_outside(media, tmp_path, monkeypatch):
    rp = _recipe_file(media, tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, tmp_path / "calls"))
    build(load_recipe(rp), out)
    res = CliRunner().invoke(app, ["validate", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n_files_checked"] == 4 * N_SOURCES

    (out / "clips" / "s1_0.flac").unlink()
    t = pq.read_table(out / "manifest.parquet")
    paths = t.column("video_path").to_pylist()
    paths[3] = "../escape.mp4"
    (out.parent / "escape.mp4").write_bytes((media["tmpl"] / "t.mp4").read_bytes())
    paths[4] = "/etc/passwd"
    (out / "clips" / "s5_0.mp4").write_bytes(b"not a video")
    t = t.set_column(t.schema.get_field_index("video_path"), "video_path", [paths])
    pq.write_table(t, out / "manifest.parquet")

    res = CliRunner().invoke(app, ["validate", str(out), "--json"])
    assert res.exit_code == 1
    probs = {(p["check"], p["clip_id"]) for p in json.loads(res.stdout)["problems"]}
    ids = t.column("clip_id").to_pylist()
    assert ("missing_file", "s1_0") in probs
    assert ("path_outside", ids[3]) in probs and ("path_outside", ids[4]) in probs
    assert ("unreadable_media", "s5_0") in probs


def test_rebuild_keeps_qa_decisions_and_other_tools_files(media, tmp_path, monkeypatch):
    """`qa apply` edits qa_status in place; reassembling the manifest (any later run) keeps it."""
    rp = _recipe_file(media, tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, tmp_path / "calls", fail={"s3": "http_404"}))
    build(load_recipe(rp), out)
    t = pq.read_table(out / "manifest.parquet")
    status = t.column("qa_status").to_pylist()
    status[0] = "rejected"
    t = t.set_column(t.schema.get_field_index("qa_status"), t.schema.field("qa_status"), [status])
    pq.write_table(t, out / "manifest.parquet")
    (out / ".qa-notes").write_text("kept")  # another tool's hidden file in OUT
    monkeypatch.setenv("BIAUDIO_STANDIN", _standin_env(media, tmp_path / "calls"))
    s = build(load_recipe(rp), out, retry_failed=[])
    assert s.processed == ["s3"]
    df = pd.read_parquet(out / "manifest.parquet")
    assert len(df) == 2 * N_SOURCES
    assert list(df["qa_status"]).count("rejected") == 1 and df.iloc[0]["qa_status"] == "rejected"
    assert (out / ".qa-notes").read_text() == "kept"


def test_warm_worker_runs_the_item_module_hook_and_never_raises(media, tmp_path):
    """The pool initializer loads the stages, the decoder and calls the item module's ``warm_up(recipe)``
    (per-process costs paid once per worker, not in item time); a broken item_fn is not its problem."""
    from biaudio.engine.worker import warm_worker
    from biaudio.spatial.decoders import get_decoder

    mod = tmp_path / "hooked.py"
    marker = tmp_path / "warmed.txt"
    mod.write_text("def process_item(item, recipe, out, log):\n    return None\n\n"
                   f"def warm_up(recipe):\n    open({str(marker)!r}, 'w').write(recipe.name)\n")
    recipe = load_recipe(_recipe_file(media, tmp_path))
    warm_worker(recipe, f"{mod}:process_item")
    assert marker.read_text() == "engine-test"
    r = recipe.render
    assert get_decoder.cache_info().currsize >= 1
    assert get_decoder(str(r.hrtf), str(r.decoder), int(r.sample_rate)) is not None
    warm_worker(recipe, "no_such_module:fn")  # no exception
