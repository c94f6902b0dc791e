"""The build engine's state and identity: item ids that do not depend on the order of the source
list, completion records that name their input, an OUT that is refused when it is not ours, sweeps
that delete only what the build wrote, a lock and a download archive that need neither ``flock``
nor ``O_APPEND`` (network filesystems), and a real two-node Ray cluster.

The fast stand-in for the stages (tests/_support/standin.py) does the per-item work; the
engine, the processes, the files and the parquet are real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biaudio.cli import app
from biaudio.engine.check import validate
from biaudio.engine.run import build
from biaudio.engine.state import BuildLockedError, OutDirError, _Lock
from biaudio.ingest.sources import read_sources
from biaudio.manifest import read_manifest
from biaudio.recipe import load_recipe
from tests._support.build import make_standin_template

REPO = Path(__file__).resolve().parents[3]
STANDIN = REPO / "tests" / "_support" / "standin.py"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Tiny real media (a 1-s mp4, a 1-s flac, a jpg) and two source files with the same stem."""
    root = tmp_path_factory.mktemp("state-media")
    tmpl = make_standin_template(root)
    return {"root": root, "tmpl": tmpl}


def _sources(tmp_path: Path, names: list[str]) -> list[Path]:
    out = []
    for n in names:
        p = tmp_path / "src" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"stand-in source " + n.encode())
        out.append(p)
    return out


def _recipe(tmp_path: Path, sources: list, name: str = "state-test", file: str = "recipe.yaml", **execution) -> Path:
    ex = {"item_fn": f"{STANDIN}:process_item", "workers": 1, **execution}
    p = tmp_path / file
    p.write_text(json.dumps({"name": name, "sources": [str(s) for s in sources], "execution": ex}))
    return p


def _list_recipe(tmp_path: Path, sources: list, **execution) -> Path:
    """A recipe whose source is a list file: editing the list does not change the recipe hash (the
    case in which records outlive an edit of the list)."""
    (tmp_path / "sources.txt").write_text("".join(f"{s}\n" for s in sources))
    return _recipe(tmp_path, [tmp_path / "sources.txt"], **execution)


def _env(media, tmp_path: Path, **cfg) -> str:
    return json.dumps({"template": str(media["tmpl"]), "calls": str(tmp_path / "calls"), **cfg})


def _called(tmp_path: Path) -> list[str]:
    p = tmp_path / "calls"
    return p.read_text().split()[::2] if p.exists() else []


def _uri_to_ids(out: Path) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for r in read_manifest(out).to_pylist():
        ids.setdefault(r["source_uri"], set()).add(r["source_id"])
    return ids


# ------------------------------------------------------------------ identity


def test_same_stem_ids_do_not_depend_on_list_order(tmp_path):
    a, b, c = _sources(tmp_path, ["a/x.mp4", "b/x.mp4", "c/y.mp4"])
    fwd = {i.uri: i.source_id for i in read_sources([str(a), str(b), str(c)]).items}
    rev = {i.uri: i.source_id for i in read_sources([str(c), str(b), str(a)]).items}
    assert fwd == rev
    assert fwd[str(c)] == "y"  # no collision: the plain stem
    assert fwd[str(a)] != fwd[str(b)] and {fwd[str(a)][:2], fwd[str(b)][:2]} == {"x-"}  # both hashed
    only_a = {i.uri: i.source_id for i in read_sources([str(a)]).items}
    assert only_a[str(a)] == "x"


def test_reordering_the_source_list_rebuilds_nothing_and_mixes_nothing(media, tmp_path, monkeypatch):
    """Two sources with one stem, then the list reversed: before the fix one source was skipped as
    "done" under the other's record and the other built twice under a new id."""
    a, b, c = _sources(tmp_path, ["a/x.mp4", "b/x.mp4", "c/y.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    out = tmp_path / "out"
    first = build(load_recipe(_list_recipe(tmp_path, [a, b, c])), out)
    assert first.exit_code == 0 and len(first.processed) == 3
    manifest = (out / "manifest.parquet").read_bytes()
    again = build(load_recipe(_list_recipe(tmp_path, [c, b, a])), out)
    assert again.exit_code == 0 and again.processed == [] and again.skipped == 3
    assert (out / "manifest.parquet").read_bytes() == manifest
    ids = _uri_to_ids(out)
    assert set(ids) == {str(a), str(b), str(c)} and all(len(v) == 1 for v in ids.values())
    assert validate(out, check_media=False).ok


def test_a_record_for_another_input_or_a_replaced_file_is_not_done(media, tmp_path, monkeypatch):
    """Ids can move between inputs (a list edited by hand: another file with the same stem) and a
    file can be replaced in place; in both cases the old record must not stand for the new input."""
    a, b = _sources(tmp_path, ["a/x.mp4", "b/x.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    out = tmp_path / "out"
    build(load_recipe(_list_recipe(tmp_path, [a])), out)

    # the same id "x" now names another file
    s = build(load_recipe(_list_recipe(tmp_path, [b])), out)
    assert s.processed == ["x"] and "another source" in s.planned[0].why
    assert set(_uri_to_ids(out)) == {str(b)}

    # replaced in place: same path, other content (size and mtime differ)
    b.write_bytes(b"a longer replacement of the source file")
    plan = build(load_recipe(_list_recipe(tmp_path, [b])), out, dry_run=True).planned
    assert [(p.action, p.why) for p in plan] == [("run", "source file changed (size or mtime)")]
    s = build(load_recipe(_list_recipe(tmp_path, [b])), out)
    assert s.processed == ["x"]
    assert build(load_recipe(_list_recipe(tmp_path, [b])), out).processed == []  # and then it is done
    rec = json.loads((out / ".state" / "items" / "x.json").read_text())
    assert rec["fingerprint"]["key"] == ["file", str(b), None] and rec["fingerprint"]["size"] == b.stat().st_size



def test_validate_flags_one_source_under_two_ids(media, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    srcs = _sources(tmp_path, ["s0.mp4", "s1.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    out = tmp_path / "out"
    build(load_recipe(_recipe(tmp_path, srcs)), out)
    assert validate(out, check_media=False).ok
    # what the order bug produced: the rows of one source under a second id
    t = pq.read_table(out / "manifest.parquet")
    sids = t.column("source_id").to_pylist()
    sids[1] = "s0-3f2a1c"
    pq.write_table(t.set_column(t.schema.get_field_index("source_id"), t.schema.field("source_id"), [sids]),
                   out / "manifest.parquet")
    rep = validate(out, check_media=False)
    probs = [p for p in rep.problems if p.check == "source_two_ids"]
    assert len(probs) == 1 and str(srcs[0]) in probs[0].detail and "s0-3f2a1c" in probs[0].detail
    res = CliRunner().invoke(app, ["validate", str(out), "--no-media", "--json"])
    assert res.exit_code == 1 and "source_two_ids" in res.stdout


# ------------------------------------------------------------------ OUT that is not ours


def test_a_non_empty_folder_that_is_not_a_build_is_refused_and_never_loses_files(media, tmp_path, monkeypatch):
    srcs = _sources(tmp_path, ["s0.mp4", "s1.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    rp = _recipe(tmp_path, srcs)
    out = tmp_path / "mine"
    (out / "clips").mkdir(parents=True)
    (out / "previews").mkdir()
    theirs = {"notes.txt": b"mine", "clips/.hidden": b"mine", "clips/s1_5000.mp4": b"mine",
              "previews/s0_7000.jpg": b"mine", "previews/.DS_Store": b"mine"}
    for rel, data in theirs.items():
        (out / rel).write_bytes(data)

    with pytest.raises(OutDirError, match="not empty"):
        build(load_recipe(rp), out)
    res = CliRunner().invoke(app, ["build", str(rp), "--out", str(out), "--json"])
    assert res.exit_code == 2 and "--force-out" in json.loads(res.stdout)["error"]
    assert not (out / ".state").exists() and not (out / "manifest.parquet").exists()

    res = CliRunner().invoke(app, ["build", str(rp), "--out", str(out), "--force-out", "--json"])
    assert res.exit_code == 0, res.output
    assert len(read_manifest(out)) == 4
    for rel, data in theirs.items():  # hidden files and files named like clips survive
        assert (out / rel).read_bytes() == data, rel
    # and later runs (retry, another clip count) keep them too, while the build's own orphans go
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path, n_clips={"s1": 1}))
    s = build(load_recipe(rp, ["split.salt=other"]), out)  # recipe changed: every item is redone
    assert s.exit_code == 0 and len(read_manifest(out)) == 3
    assert not (out / "clips" / "s1_1000.mp4").exists()  # the build wrote it, no row needs it now
    for rel, data in theirs.items():
        assert (out / rel).read_bytes() == data, rel


def test_another_recipes_build_is_refused_unless_forced(media, tmp_path, monkeypatch):
    srcs = _sources(tmp_path, ["s0.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    out = tmp_path / "out"
    assert build(load_recipe(_recipe(tmp_path, srcs)), out).exit_code == 0
    manifest = (out / "manifest.parquet").read_bytes()
    other = _recipe(tmp_path, srcs, name="another", file="other.yaml")
    with pytest.raises(OutDirError, match="recipe 'state-test'"):
        build(load_recipe(other), out)
    res = CliRunner().invoke(app, ["build", str(other), "--out", str(out), "--dry-run"])
    assert res.exit_code == 2
    assert (out / "manifest.parquet").read_bytes() == manifest
    assert build(load_recipe(other), out, force_out=True).exit_code == 0
    assert json.loads((out / ".state" / "build.json").read_text())["recipe"] == "another"


def test_building_into_an_empty_folder_or_a_killed_first_run_is_fine(media, tmp_path, monkeypatch):
    srcs = _sources(tmp_path, ["s0.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    out = tmp_path / "empty"
    (out / ".state").mkdir(parents=True)  # a run killed before it wrote build.json leaves just this
    (out / ".state" / "lock").write_text("999999999\n")  # an older biaudio's flock'ed lock file
    assert build(load_recipe(_recipe(tmp_path, srcs)), out).exit_code == 0


# ------------------------------------------------------------------ lock and archive on NFS


def test_lock_holds_where_flock_is_a_no_op(media, tmp_path, monkeypatch):
    """On filesystems where flock silently succeeds for everyone (some NFS/FUSE mounts) a second
    build must still be refused: the lock must not rest on flock."""
    import fcntl

    monkeypatch.setattr(fcntl, "flock", lambda fd, op: None)
    srcs = _sources(tmp_path, ["s0.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    with _Lock(out):
        with pytest.raises(BuildLockedError, match="another build"):
            build(load_recipe(_recipe(tmp_path, srcs)), out)
    assert not (out / ".state" / "lock").exists()  # released
    assert build(load_recipe(_recipe(tmp_path, srcs)), out).exit_code == 0


def test_lock_of_a_live_process_a_dead_one_and_another_host(media, tmp_path, monkeypatch):
    srcs = _sources(tmp_path, ["s0.mp4"])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path))
    rp = _recipe(tmp_path, srcs)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from biaudio.engine.state import _Lock\n"
        f"l = _Lock(Path({str(out)!r})).__enter__(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildLockedError, match=f"pid {holder.pid}"):
            build(load_recipe(rp), out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert build(load_recipe(rp), out).exit_code == 0  # a dead holder's lock is taken over

    lock = out / ".state" / "lock"
    lock.write_text(json.dumps({"host": "node-7", "boot_id": "b", "pid": 12, "token": "t"}))
    with pytest.raises(BuildLockedError, match="node-7"):
        build(load_recipe(rp), out)
    lock.unlink()
    assert build(load_recipe(rp), out).exit_code == 0


_NFS_APPEND = """
import os, sys, time
from pathlib import Path
import biaudio.ingest.fetch as f

# what an NFS client does for O_APPEND: write at the size it last saw, which another client may
# have moved on meanwhile (so records overwrite each other)
real_open, real_write = os.open, os.write
appending = set()
def nfs_open(path, flags, mode=0o777, **kw):
    fd = real_open(path, flags & ~os.O_APPEND, mode, **kw)
    if flags & os.O_APPEND:
        appending.add(fd)
    return fd
def nfs_write(fd, data):
    if fd in appending:
        end = os.fstat(fd).st_size
        time.sleep(0.02)
        return os.pwrite(fd, data, end)
    return real_write(fd, data)
os.open, os.write = nfs_open, nfs_write
arch, who, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
for i in range(8):
    f._append_archive(arch, {"source_id": f"{who}-{i}", "uri": "u", "path": "p", "section": None})
"""


def test_download_archive_keeps_every_entry_from_concurrent_hosts(tmp_path):
    """Four writers at once, each appending as an NFS client does: every entry must survive."""
    from biaudio.ingest.fetch import read_archive

    arch = tmp_path / "fetch-archive.jsonl"
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _NFS_APPEND, str(arch), f"w{k}", str(start)],
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert set(read_archive(arch)) == {f"w{k}-{i}" for k in range(4) for i in range(8)}


def test_archive_entry_counts_only_for_its_input(tmp_path):
    from biaudio.ingest.fetch import _append_archive, _archived_for, read_archive
    from biaudio.ingest.sources import SourceItem

    arch = tmp_path / "fetch-archive.jsonl"
    _append_archive(arch, {"source_id": "clip-1a2b", "uri": "https://e.org/a/clip.mp4", "path": "x.mp4",
                           "section": [0.0, 10.0]})
    rec = read_archive(arch)["clip-1a2b"]
    assert _archived_for(rec, SourceItem("clip-1a2b", "url", "https://e.org/a/clip.mp4", (0.0, 10.0)))
    assert not _archived_for(rec, SourceItem("clip-1a2b", "url", "https://e.org/b/clip.mp4", (0.0, 10.0)))
    assert not _archived_for(rec, SourceItem("clip-1a2b", "url", "https://e.org/a/clip.mp4", (10.0, 20.0)))
    # an archive of an older version (JSONL lines) is still read
    with open(arch, "w") as f:
        f.write(json.dumps({"source_id": "old", "uri": "u", "path": "p"}) + "\n")
    assert set(read_archive(arch)) == {"old", "clip-1a2b"}


# ------------------------------------------------------------------ a real multi-node Ray cluster


def test_two_node_ray_cluster_spreads_items_and_matches_the_local_build(media, tmp_path, monkeypatch):
    """Ray's own multi-node test cluster (a head and a second node, one CPU each, separate raylets
    on this machine): items run on both nodes, and the manifest is byte-identical to the local one."""
    from ray.cluster_utils import Cluster

    srcs = _sources(tmp_path, [f"s{i}.mp4" for i in range(4)])
    monkeypatch.setenv("BIAUDIO_STANDIN", _env(media, tmp_path, sleep=1.0))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    local = build(load_recipe(_recipe(tmp_path, srcs)), tmp_path / "local")
    assert local.exit_code == 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 1024**2,
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
        cluster.wait_for_nodes()
        rp = _recipe(tmp_path, srcs, file="ray.yaml", executor="ray", workers=2, ray_address=cluster.address)
        s = build(load_recipe(rp), tmp_path / "ray")
    finally:
        cluster.shutdown()
    assert s.exit_code == 0 and sorted(s.processed) == [f"s{i}" for i in range(4)]
    recs = [json.loads(p.read_text()) for p in (tmp_path / "ray" / ".state" / "items").glob("*.json")]
    nodes = {r["node"]["ray_node_id"] for r in recs}
    assert len(nodes) == 2, [r["node"] for r in recs]
    assert (tmp_path / "ray" / "manifest.parquet").read_bytes() == (tmp_path / "local" / "manifest.parquet").read_bytes()
    st = json.loads((tmp_path / "ray" / "stats.json").read_text())["last_run"]
    assert sorted(st["items_per_node"].values()) == sorted(
        [sum(r["node"]["ray_node_id"] == n for r in recs) for n in nodes])
    shutil.rmtree(tmp_path / "ray" / "clips")  # keep tmp small
