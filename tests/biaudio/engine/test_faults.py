"""Hostile inputs and broken environments: every fault gets one line naming the input and the fix,
the documented exit code, and loses nothing a user wrote or a build finished (docs/FAULTS.md).

Real components throughout: a real full disk (a small tmpfs), real read-only mounts, real ffmpeg on
real files, a real listening socket to catch a network connection. The mount-based cases need root
(they are skipped without it)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from biaudio.cli import app
from biaudio.engine.check import validate
from biaudio.engine.run import build
from biaudio.manifest import read_manifest
from biaudio.recipe import load_recipe
from tests._support.build import make_standin_media

REPO = Path(__file__).resolve().parents[3]
STANDIN = REPO / "tests" / "_support" / "standin.py"
FAULTS_ITEM = REPO / "tests" / "_support" / "faults_item.py"
runner = CliRunner()
N_SOURCES = 4


def _digest(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _one_line_error(r) -> str:
    """The CLI's error output: no traceback, and the error itself on one line."""
    text = r.output
    assert "Traceback" not in text, text
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return text


def _mount(*args: str) -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture(scope="module")
def foa360(tmp_path_factory) -> Path:
    """A 1-s 360° video with 4-channel FOA audio (the synthetic scene generator)."""
    d = tmp_path_factory.mktemp("foa360")
    r = runner.invoke(app, ["synth", str(d), "--duration", "1", "--size", "256x128", "--fps", "10"])
    assert r.exit_code == 0, r.output
    return next(d.glob("*.mp4"))


@pytest.fixture(scope="module")
def engine_media(tmp_path_factory) -> dict[str, Path]:
    """The engine stand-in's template (a 1-s mp4, a flac, a jpg) and N source files."""
    return make_standin_media(tmp_path_factory.mktemp("faults-media"), N_SOURCES)


def _recipe(engine_media, tmp_path: Path, item_fn: Path = STANDIN) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(json.dumps({"name": "faults", "sources": [str(engine_media["src"])],
                             "execution": {"item_fn": f"{item_fn}:process_item", "workers": 1}}))
    return p


@pytest.fixture()
def built(engine_media, tmp_path, monkeypatch) -> Path:
    """A finished (stand-in) build folder."""
    monkeypatch.setenv("BIAUDIO_STANDIN", json.dumps({"template": str(engine_media["tmpl"])}))
    out = tmp_path / "built"
    s = build(load_recipe(_recipe(engine_media, tmp_path)), out)
    assert s.exit_code == 0 and len(read_manifest(out)) == 2 * N_SOURCES
    return out


# ---------------------------------------------------------------- class 2: a full disk is not a reject


@pytest.mark.parametrize("writer", ["flac", "mp4"])
def test_full_disk_in_libsndfile_or_ffmpeg_stops_the_run_and_a_rerun_continues(engine_media, tmp_path, writer):
    """ENOSPC inside libsndfile (FLAC) or inside the ffmpeg encoder (mp4) on a real 1 MiB tmpfs:
    the run stops with exit 1, the item gets no completion record (so it is not a permanent
    reject), finished items stay valid, and a plain rerun after freeing space completes it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)):
        pytest.skip("needs root to mount a tmpfs")
    out = disk / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "BIAUDIO_STANDIN": json.dumps({"template": str(engine_media["tmpl"])}),
           "BIAUDIO_FAULTS": json.dumps({"writer": writer, "big": {"s2": 20}})}
    cmd = [sys.executable, "-m", "biaudio.cli", "build", str(_recipe(engine_media, tmp_path, FAULTS_ITEM)),
           "--out", str(out), "--json"]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 1, r.stderr[-2000:]
        summary = json.loads(r.stdout)
        assert summary["stopped"] and summary["write_errors"] == ["s2"], summary
        done = {p.stem for p in (out / ".state" / "items").glob("*.json")}
        assert {"s0", "s1"} <= done and "s2" not in done
        assert not [p for p in (out / "clips").iterdir() if p.name.startswith(".")]  # no temporary left
        if (out / "rejects.parquet").exists():
            import pandas as pd

            rej = pd.read_parquet(out / "rejects.parquet")
            assert ("s2", "write", "disk_full") in set(zip(rej["item_id"], rej["stage"], rej["reason"], strict=True))
        env["BIAUDIO_FAULTS"] = "{}"  # space again
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert len(read_manifest(out)) == 2 * N_SOURCES and validate(out).ok
    finally:
        _umount(disk)


def test_media_writers_report_a_full_disk_as_enospc(tmp_path):
    """The writers themselves: an OSError with errno ENOSPC (not a MediaError, not libsndfile's
    "System error."), and no partial or temporary file left behind."""
    from biaudio.media import write_audio
    from biaudio.media.video import VideoWriter, mux

    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)):
        pytest.skip("needs root to mount a tmpfs")
    rng = np.random.default_rng(1)
    try:
        with pytest.raises(OSError) as ei:
            write_audio(disk / "a.flac", rng.uniform(-0.5, 0.5, (2, 48000 * 5)), 48000)
        assert ei.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as ei:
            with VideoWriter(disk / "v.mp4", 320, 240, 10, crf=0, preset="ultrafast") as vw:
                for _ in range(40):
                    vw.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
        assert ei.value.errno == errno.ENOSPC and "v.mp4" in ei.value.filename
        small = tmp_path / "small.mp4"
        with VideoWriter(small, 64, 32, 10) as vw:
            for _ in range(10):
                vw.write(np.zeros((32, 64, 3), np.uint8))
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk to the last block
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        with pytest.raises(OSError) as ei:
            mux(small, rng.uniform(-0.5, 0.5, (2, 48000)).astype(np.float32), 48000, disk / "m.mp4")
        assert ei.value.errno == errno.ENOSPC
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        _umount(disk)


# ------------------------------------------------------------- class 5: outputs never over inputs


def test_render_refuses_to_write_over_its_input(foa360, tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(foa360.read_bytes())
    before = _digest(src)
    link = tmp_path / "link.mp4"
    os.link(src, link)
    for out in (src, link, tmp_path / "." / "in.mp4"):
        r = runner.invoke(app, ["render", str(src), "--out", str(out), "--size", "64x32"])
        assert r.exit_code == 2, r.output
        assert "input" in _one_line_error(r)
    assert _digest(src) == before
    traj = tmp_path / "traj.json"
    traj.write_text(json.dumps([{"t": 0, "yaw": 10}]))
    r = runner.invoke(app, ["render", str(src), "--trajectory", str(traj), "--out", str(traj), "--size", "64x32"])
    assert r.exit_code == 2 and json.loads(traj.read_text()) == [{"t": 0, "yaw": 10}]


# ------------------------------------------------ class 6: file names never options or protocols


def _listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                c, _ = s.accept()
                hits.append(1)
                c.close()
            except OSError:
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return s, hits, stop, t


@pytest.mark.parametrize("cmd", [["probe"], ["doa", "--json"], ["segment", "--json", "--window", "0.5"]])
def test_protocol_like_file_name_opens_no_connection(foa360, tmp_path, monkeypatch, cmd):
    """A local file named ``tcp:127.0.0.1:PORT`` is read as that file, never as a URL."""
    s, hits, stop, t = _listener()
    try:
        port = s.getsockname()[1]
        monkeypatch.chdir(tmp_path)
        name = f"tcp:127.0.0.1:{port}"
        Path(name).write_bytes(foa360.read_bytes())
        r = runner.invoke(app, [*cmd, name])
        _one_line_error(r)
    finally:
        stop.set()
        t.join()
        s.close()
    assert hits == [], "a file name opened a network connection"
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("cmd", [["probe"], ["doa", "--json"]])
def test_option_like_file_name_is_a_file(foa360, tmp_path, monkeypatch, cmd):
    monkeypatch.chdir(tmp_path)
    Path("-x.mp4").write_bytes(foa360.read_bytes())
    r = runner.invoke(app, [*cmd, "--", "-x.mp4"])
    assert r.exit_code == 0, r.output


def test_render_with_hostile_names_in_and_out(foa360, tmp_path, monkeypatch):
    """Input and output named like an option and a protocol: the output is a local file."""
    monkeypatch.chdir(tmp_path)
    Path("-in.mp4").write_bytes(foa360.read_bytes())
    r = runner.invoke(app, ["render", "--size", "64x32", "--out", "pipe:1.mp4", "--", "-in.mp4"])
    assert r.exit_code == 0, r.output
    assert Path("pipe:1.mp4").stat().st_size > 1000


def test_ffpath_local_and_non_utf8_names(foa360, tmp_path):
    from biaudio.media import ffpath

    assert ffpath.local("-x.webm") == "file:" + os.path.abspath("-x.webm")
    assert ffpath.input_args("tcp:1.2.3.4:5")[:2] == ["-protocol_whitelist", "file,pipe"]
    if sys.platform.startswith("linux"):
        raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9-\xff.mp4")  # latin-1 bytes, not UTF-8
        with open(raw, "wb") as f:
            f.write(foa360.read_bytes())
        r = runner.invoke(app, ["doa", "--json", os.fsdecode(raw)])
        assert r.exit_code == 0, r.output


def test_a_playlist_cannot_reach_the_network(tmp_path):
    """A local HLS playlist naming an http URL: the demuxer may open local files only."""
    s, hits, stop, t = _listener()
    try:
        pl = tmp_path / "list.m3u8"
        pl.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:{s.getsockname()[1]}/a.ts\n"
                      "#EXT-X-ENDLIST\n")
        r = runner.invoke(app, ["doa", "--json", str(pl)])
    finally:
        stop.set()
        t.join()
        s.close()
    assert hits == [] and r.exit_code == 1
    _one_line_error(r)


# ---------------------------------------------------- class 8: user errors are one line, not a traceback


@pytest.mark.parametrize("args, needle", [
    (["segment", "x.mp4", "--window", "0"], "--window"),
    (["segment", "x.mp4", "--stride", "-1"], "--stride"),
    (["render", "x.mp4", "--out", "o.mp4", "--size", "100000x100000"], "8192"),
    (["review", ".", "--port", "99999"], "--port"),
])
def test_bad_option_values_exit_2(args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert needle in _one_line_error(r)


def test_read_only_output_folder_exit_2(engine_media, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if not _mount("-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)):
        pytest.skip("needs root to mount a read-only tmpfs")
    monkeypatch.setenv("BIAUDIO_STANDIN", json.dumps({"template": str(engine_media["tmpl"])}))
    try:
        r = runner.invoke(app, ["build", str(_recipe(engine_media, tmp_path)), "--out", str(ro / "out")])
        assert r.exit_code == 2, r.output
        text = _one_line_error(r)
        assert "Read-only file system" in text and "writable" in text
    finally:
        _umount(ro)


def _qa_db(out: Path) -> Path:
    from biaudio.review.db import QADatabase, db_path

    db = QADatabase(db_path(out))
    db.record(clip_id="s0_0", pass_=1, reviewer="ann", decision="accept", reason=None, note=None)
    with sqlite3.connect(db.path) as con:  # fold the WAL in, as a closed server leaves it
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.path


def test_qa_summary_reads_a_read_only_database_without_writing(built, tmp_path):
    path = _qa_db(built)
    before = _digest(path)
    if not _mount("--bind", str(built), str(built)) or not _mount("-o", "remount,ro,bind", str(built)):
        _umount(built)
        pytest.skip("needs root for a read-only bind mount")
    try:
        r = runner.invoke(app, ["qa", "summary", str(built), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["passes"][0]["clips_decided"] == 1
        r = runner.invoke(app, ["review", str(built), "--port", "0"])
        assert r.exit_code == 1, r.output
        assert "qa.sqlite" in _one_line_error(r)
    finally:
        _umount(built)
    assert _digest(path) == before


def test_corrupt_qa_database_is_an_error_and_kept(built):
    from biaudio.review.db import db_path

    path = db_path(built)
    path.write_bytes(b"these are a reviewer's notes, not SQLite" * 100)
    before = _digest(path)
    for args in (["qa", "summary", str(built)], ["qa", "apply", str(built)], ["review", str(built), "--port", "0"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert "qa.sqlite" in _one_line_error(r) and "move it aside" in r.output
    assert _digest(path) == before


# ------------------------------------------------------------------ class 9: no stale figures


@pytest.mark.parametrize("damage", ["truncate", "delete", "other_schema"])
def test_stats_refuses_a_folder_whose_manifest_is_unreadable(built, damage):
    m = built / "manifest.parquet"
    if damage == "truncate":
        m.write_bytes(m.read_bytes()[:100])
    elif damage == "delete":
        m.unlink()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"clip_id": ["a"]}).replace_schema_metadata({b"biaudio.schema_version": b"99"}), m)
    r = runner.invoke(app, ["stats", str(built), "--json"])
    assert r.exit_code == 1, r.output
    assert "manifest.parquet" in _one_line_error(r)
    assert '"kept"' not in r.stdout  # none of stats.json's old counts


# ------------------------------------------------------------------ more hostile inputs


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe garbage \x91", b"name: [unclosed\n", b"- a\n- b\n"])
def test_empty_or_garbage_recipe_exit_2(tmp_path, content):
    p = tmp_path / "r.yaml"
    p.write_bytes(content)
    r = runner.invoke(app, ["build", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "recipe error" in _one_line_error(r)
    assert not (tmp_path / "o").exists()


def test_recipe_path_is_a_folder_exit_2(tmp_path):
    r = runner.invoke(app, ["build", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "is_a_directory" in _one_line_error(r)


def test_missing_ffmpeg_on_path(foa360, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    r = runner.invoke(app, ["doa", str(foa360)])
    assert r.exit_code == 1
    assert "ffprobe: not found on PATH" in _one_line_error(r)
    r = runner.invoke(app, ["build", "demo", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not found on PATH" in _one_line_error(r)
    assert not (tmp_path / "o").exists()


def test_a_folder_where_a_media_file_is_expected(tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    for args in (["doa", str(tmp_path / "clip.mp4")], ["probe", str(tmp_path / "clip.mp4")],
                 ["render", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "o.mp4")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert "clip.mp4" in _one_line_error(r)


def test_render_output_path_is_a_folder(foa360, tmp_path):
    (tmp_path / "o.mp4").mkdir()
    (tmp_path / "o.mp4" / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["render", str(foa360), "--out", str(tmp_path / "o.mp4"), "--size", "64x32"])
    assert r.exit_code == 2, r.output
    assert "folder" in _one_line_error(r)
    assert (tmp_path / "o.mp4" / "keep.txt").read_text() == "mine"


def test_validate_and_stats_on_a_manifest_of_another_schema(built):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), built / "manifest.parquet")
    r = runner.invoke(app, ["validate", str(built), "--no-media"])
    assert r.exit_code == 1
    _one_line_error(r)
    r = runner.invoke(app, ["stats", str(built)])
    assert r.exit_code == 1 and "manifest.parquet" in _one_line_error(r)


def test_visaudio_generate_refuses_to_write_over_its_video(foa360, tmp_path):
    """The check runs before any checkpoint is read: OUT.mp4 (or OUT.flac beside it) naming the
    input video is refused and the video is untouched."""
    from visaudio.data import DataError
    from visaudio.generate import generate_to_files

    v = tmp_path / "v.mp4"
    v.write_bytes(foa360.read_bytes())
    before = _digest(v)
    for out in (v, tmp_path / "sub" / ".." / "v.mp4"):
        with pytest.raises(DataError, match="input video"):
            generate_to_files(v, tmp_path / "no-run", out)
    flac_video = tmp_path / "w.flac"
    flac_video.write_bytes(foa360.read_bytes())
    with pytest.raises(DataError, match="input video"):
        generate_to_files(flac_video, tmp_path / "no-run", tmp_path / "w.mp4")
    assert _digest(v) == before
