"""The review server over raw HTTP: security (traversal, token, Host), Range requests, decisions in
SQLite (append-only, resume, undo, two servers on one DB) and bad input (no previews, missing media,
old schema, bad --where)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from biaudio.review.clips import ManifestError, load_clipset, read_manifest_table, select_rows
from biaudio.review.server import ReviewConfig, ReviewError, make_server, serve_in_thread
from tests.biaudio.review.support import build_mini_out, manifest_rows, raw_request, write_manifest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def template(mini_template) -> Path:
    return mini_template


@pytest.fixture
def out(mini_out) -> Path:
    return mini_out


@pytest.fixture
def server(out):
    srv, _ = serve_in_thread(ReviewConfig(out_dir=out, port=0, reviewer="ann"))
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(srv, path, **kw):
    return raw_request(srv.port, "GET", path, **kw)


def _post(srv, path, body, token=True, **kw):
    headers = {"X-Review-Token": srv.app.token} if token else {}
    return raw_request(srv.port, "POST", path, body=body, headers=headers, **kw)


def _rows(out: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(out / "qa.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT * FROM decisions ORDER BY id").fetchall()
    finally:
        con.close()


# -- security --------------------------------------------------------------------------------------

TRAVERSALS = [
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/etc/passwd",
    "//etc/passwd",
    "/media/../../etc/passwd",
    "/media/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/media/clips%2f..%2f..%2f..%2fetc%2fpasswd",
    "/media//etc/passwd",
    "/media/%2fetc%2fpasswd",
    "/media/clips/..%5c..%5cetc%5cpasswd",
    "/static/../../../etc/passwd",
    "/static/%2e%2e/server.py",
    "/static/server.py",
    "/media/manifest.parquet",
    "/media/qa.sqlite",
    "/manifest.parquet",
    "/clips/src0_0.mp4",
    "/media/clips/",
    "/media/clips",
    "/media/",
    "/clips/",
]


@pytest.mark.parametrize("with_token", [False, True])
def test_traversal_and_listing_refused(server, with_token):
    (server.app.out_dir / "secret.txt").write_text("root:x:0:0")
    for path in TRAVERSALS:
        p = path + (("&" if "?" in path else "?") + "token=" + server.app.token if with_token else "")
        status, _, body = _get(server, p)
        assert status in (400, 403, 404), (path, status)
        assert b"root:" not in body and b"PAR1" not in body, path
    # the same media path IS served when it is listed in the manifest and the token is given
    status, headers, body = _get(server, f"/media/clips/src0_0.mp4?token={server.app.token}")
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert body == (server.app.out_dir / "clips/src0_0.mp4").read_bytes()


def test_symlink_out_of_out_is_not_served(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    (tmp_path / "outside.mp4").write_bytes(b"SECRET-OUTSIDE")
    (out / "clips").mkdir()
    (out / "clips" / "a.mp4").symlink_to(tmp_path / "outside.mp4")
    rows = manifest_rows(3)
    rows[0]["video_path"] = "clips/a.mp4"
    rows[1]["video_path"] = "../outside.mp4"  # a tampered manifest: never resolved
    rows[2]["video_path"] = str(tmp_path / "outside.mp4")  # absolute: never resolved
    write_manifest(out, rows)
    srv, _ = serve_in_thread(ReviewConfig(out_dir=out, port=0))
    try:
        tok = srv.app.token
        for p in ("/media/clips/a.mp4", "/media/../outside.mp4", "/media/" + str(tmp_path / "outside.mp4")):
            status, _, body = _get(srv, p + "?token=" + tok)
            assert status in (403, 404) and b"SECRET" not in body, p
        for i in range(3):
            _, _, body = _get(srv, f"/api/clip?i={i}&token={tok}")
            assert json.loads(body)["media"]["video"]["present"] is False
    finally:
        srv.shutdown()
        srv.server_close()


def test_token_required_for_state_changes_and_api(server, out):
    tok = server.app.token
    status, _, _ = _post(server, "/api/decision", {"index": 0, "decision": "accept"}, token=False)
    assert status == 403
    status, _, _ = raw_request(
        server.port,
        "POST",
        "/api/decision",
        body={"index": 0, "decision": "accept"},
        headers={"X-Review-Token": tok[:-1] + ("A" if tok[-1] != "A" else "B")},
    )
    assert status == 403
    status, _, _ = _post(server, "/api/undo", {}, token=False)
    assert status == 403
    assert _rows(out) == []
    assert _get(server, "/api/state")[0] == 403
    assert _get(server, "/media/clips/src0_0.mp4")[0] == 403
    # the page itself and its static files need no token (the token lives in the page URL)
    for p in ("/", "/static/app.js", "/static/style.css"):
        status, headers, _ = _get(server, p)
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    # token as a query parameter works as well as the header
    status, _, body = raw_request(
        server.port, "POST", f"/api/decision?token={tok}", body={"index": 0, "decision": "accept"}
    )
    assert status == 200 and json.loads(body)["ok"]
    assert [r["decision"] for r in _rows(out)] == ["accept"]


def test_foreign_host_header_refused(server):
    tok = server.app.token
    status, _, _ = _get(server, f"/api/state?token={tok}", host="evil.example:80")
    assert status == 403
    status, _, _ = _get(server, f"/api/state?token={tok}", host=f"localhost:{server.port}")
    assert status == 200


def test_remote_bind_needs_allow_remote(out):
    with pytest.raises(ReviewError, match="allow-remote"):
        make_server(ReviewConfig(out_dir=out, host="0.0.0.0", port=0))
    srv = make_server(ReviewConfig(out_dir=out, host="0.0.0.0", port=0, allow_remote=True))
    srv.server_close()


# -- media ranges --------------------------------------------------------------------------------


def test_range_requests(server, out):
    data = (out / "clips/src0_0.mp4").read_bytes()
    size = len(data)
    url = f"/media/clips/src0_0.mp4?token={server.app.token}"
    status, h, body = _get(server, url, headers={"Range": "bytes=0-99"})
    assert status == 206 and body == data[:100]
    assert h["content-range"] == f"bytes 0-99/{size}" and h["content-length"] == "100"
    status, h, body = _get(server, url, headers={"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:] and h["content-range"] == f"bytes 1000-{size - 1}/{size}"
    status, h, body = _get(server, url, headers={"Range": "bytes=-50"})
    assert status == 206 and body == data[-50:]
    status, h, body = _get(server, url, headers={"Range": f"bytes={size - 10}-{size + 500}"})
    assert status == 206 and body == data[-10:]
    status, h, _ = _get(server, url, headers={"Range": f"bytes={size}-"})
    assert status == 416 and h["content-range"] == f"bytes */{size}"
    status, h, body = _get(server, url)
    assert status == 200 and body == data and h["accept-ranges"] == "bytes"
    status, h, body = raw_request(server.port, "HEAD", url)
    assert status == 200 and body == b"" and h["content-length"] == str(size)
    assert (
        _get(server, f"/media/clips/src0_0.flac?token={server.app.token}")[1]["content-type"] == "audio/flac"
    )


# -- decisions --------------------------------------------------------------------------------------


def test_decisions_validation_resume_and_undo(server, out):
    ids = server.app.clips.clip_ids
    st = json.loads(_get(server, f"/api/state?token={server.app.token}")[2])
    assert st["resume_index"] == 0 and st["total"] == 4 and st["progress"]["done"] == 0
    assert [r["slug"] for r in st["reasons"]] == [
        "wrong_sound",
        "voice_over_music",
        "static",
        "bad_direction",
        "visual_artefact",
        "other",
    ]

    bad = [
        {"index": 9, "decision": "accept"},
        {"index": 0, "decision": "maybe"},
        {"index": 0, "decision": "reject"},
        {"index": 0, "decision": "reject", "reason": "nope"},
        {"index": 0, "decision": "reject", "reason": "other"},
        {"index": 0, "decision": "accept", "reason": "static"},
        {"index": 0, "clip_id": ids[1], "decision": "accept"},
    ]
    for b in bad:
        assert _post(server, "/api/decision", b)[0] == 400, b
    assert _rows(out) == []

    r = json.loads(_post(server, "/api/decision", {"index": 0, "clip_id": ids[0], "decision": "accept"})[2])
    assert r["next_index"] == 1 and r["progress"]["done"] == 1
    r = json.loads(_post(server, "/api/decision", {"index": 2, "decision": "reject", "reason": "static"})[2])
    assert r["next_index"] == 3 and r["progress"]["reasons"]["static"] == 1
    r = json.loads(_post(server, "/api/decision", {"index": 3, "decision": "skip"})[2])
    assert r["next_index"] == 1, "after the last clip the next open one is the untouched clip 1"
    st = json.loads(_get(server, f"/api/state?token={server.app.token}")[2])
    assert (
        st["resume_index"] == 1 and st["progress"]["done"] == 2 and st["progress"]["decisions"]["skip"] == 1
    )

    u = json.loads(_post(server, "/api/undo", {})[2])
    assert u["undone"]["clip_id"] == ids[3] and u["index"] == 3
    u = json.loads(_post(server, "/api/undo", {})[2])
    assert u["undone"]["clip_id"] == ids[2] and u["progress"]["reasons"]["static"] == 0
    rows = _rows(out)
    assert [(r["clip_id"], r["decision"], r["undone"]) for r in rows] == [
        (ids[0], "accept", 0),
        (ids[2], "reject", 1),
        (ids[3], "skip", 1),
    ]
    assert all(r["undone_at"] for r in rows if r["undone"])

    # a new server (restart) for the same pass + reviewer resumes at the first undecided clip
    srv2 = make_server(ReviewConfig(out_dir=out, port=0, reviewer="ann"))
    assert srv2.app.state()["resume_index"] == 1
    srv2.server_close()
    # ... a different reviewer starts from the beginning
    srv3 = make_server(ReviewConfig(out_dir=out, port=0, reviewer="ben"))
    assert srv3.app.state()["resume_index"] == 0
    srv3.server_close()


def test_decisions_table_is_append_only(server, out):
    _post(server, "/api/decision", {"index": 0, "decision": "accept"})
    con = sqlite3.connect(out / "qa.sqlite")
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("DELETE FROM decisions")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE decisions SET decision = 'reject'")
    finally:
        con.close()
    assert len(_rows(out)) == 1


def test_two_servers_on_one_db_lose_nothing(out):
    """Two servers (two reviewers) hammer the same qa.sqlite from 8 threads: every POST answered
    200 has its row, nothing else is there."""
    a, _ = serve_in_thread(ReviewConfig(out_dir=out, port=0, reviewer="ann"))
    b, _ = serve_in_thread(ReviewConfig(out_dir=out, port=0, reviewer="ben", pass_=2))
    n_each = 12
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(srv, k):
        for j in range(n_each):
            st, _, _ = _post(
                srv, "/api/decision", {"index": (k + j) % 4, "decision": ["accept", "flag"][j % 2]}
            )
            with lock:
                statuses.append(st)

    threads = [threading.Thread(target=worker, args=(srv, k)) for srv in (a, b) for k in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for srv in (a, b):
            srv.shutdown()
            srv.server_close()
    assert statuses == [200] * (8 * n_each)
    rows = _rows(out)
    assert len(rows) == 8 * n_each
    assert sum(r["reviewer"] == "ann" and r["pass"] == 1 for r in rows) == 4 * n_each
    assert sum(r["reviewer"] == "ben" and r["pass"] == 2 for r in rows) == 4 * n_each
    assert len({r["id"] for r in rows}) == len(rows)


# -- bad input ---------------------------------------------------------------------------------------


def test_manifest_without_previews_and_missing_media(tmp_path):
    out = build_mini_out(
        tmp_path / "OUT", n=2, previews=False, drop=("preview_path", "window_directions", "caption")
    )
    (out / "clips/src0_8000.mp4").unlink()
    srv, _ = serve_in_thread(ReviewConfig(out_dir=out, port=0))
    try:
        tok = srv.app.token
        c0 = json.loads(_get(srv, f"/api/clip?i=0&token={tok}")[2])
        assert c0["media"]["preview"] == {"path": None, "raw": None, "present": False}
        assert c0["media"]["video"]["present"] is True and c0["caption"] is None
        assert c0["plot"]["win_t"] == [] and len(c0["plot"]["t"]) == 30
        c1 = json.loads(_get(srv, f"/api/clip?i=1&token={tok}")[2])
        assert c1["media"]["video"] == {
            "path": "clips/src0_8000.mp4",
            "raw": "clips/src0_8000.mp4",
            "present": False,
        }
        assert _get(srv, f"/media/clips/src0_8000.mp4?token={tok}")[0] == 404
        # review goes on: the missing clip can still be decided
        assert (
            _post(srv, "/api/decision", {"index": 1, "decision": "reject", "reason": "visual_artefact"})[0]
            == 200
        )
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("version,match", [(0, "is old"), (7, "unknown")])
def test_unsupported_schema_version_refused(tmp_path, version, match):
    rows = manifest_rows(2)
    for r in rows:
        r["schema_version"] = version
    out = tmp_path / "OUT"
    out.mkdir()
    write_manifest(out, rows)
    with pytest.raises(ManifestError, match=match):
        read_manifest_table(out)


def test_manifest_without_schema_version_refused(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    write_manifest(out, manifest_rows(2), drop=("schema_version",))
    with pytest.raises(ManifestError, match="no schema_version column"):
        load_clipset(out)


def test_where_and_sample(template):
    table = read_manifest_table(template)
    ids = table.column("clip_id").to_pylist()
    # lr_difference = 0.02 + 0.05 k, speech_ratio = 0.1 k  ->  k in {0, 1} or k == 3
    rows = select_rows(table, where="lr_difference < 0.1 or speech_ratio > 0.25")
    assert [ids[r] for r in rows] == [ids[0], ids[1], ids[3]]
    assert select_rows(table, where="split = 'test'") == []
    with pytest.raises(ManifestError, match="bad_where"):
        select_rows(table, where="no_such_column > 1")
    with pytest.raises(ManifestError, match="bad_where"):
        select_rows(table, where="1=1) UNION SELECT 1 FROM read_csv('/etc/passwd') WHERE (1=1")
    s1 = select_rows(table, sample=2, seed=5)
    assert len(s1) == 2 and len(set(s1)) == 2 and s1 == select_rows(table, sample=2, seed=5)
    assert len({tuple(select_rows(table, sample=2, seed=s)) for s in range(12)}) > 1
    assert sorted(select_rows(table, sample=10, seed=1)) == [0, 1, 2, 3]
    w = select_rows(table, where="speech_ratio >= 0.1", sample=2, seed=3)
    assert set(w) <= {1, 2, 3} and len(w) == 2


# -- the CLI ---------------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "biaudio.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_cli_review_serves_and_refuses(out, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "biaudio.cli",
            "review",
            str(out),
            "--port",
            "0",
            "--reviewer",
            "cli",
            "--where",
            "speech_ratio > 0.15",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["ok"] and info["clips"] == 2 and info["url"].startswith("http://127.0.0.1:")
        assert f"?token={info['token']}" in info["url"]
        port = int(info["url"].split(":")[2].split("/")[0])
        status, _, body = raw_request(port, "GET", f"/api/state?token={info['token']}")
        assert status == 200 and json.loads(body)["reviewer"] == "cli"
        assert raw_request(port, "POST", "/api/decision", body={"index": 0, "decision": "accept"})[0] == 403
        # a decision acknowledged with 200 survives the server being killed right after (no flush at exit)
        status, _, _ = raw_request(
            port,
            "POST",
            "/api/decision",
            body={"index": 1, "decision": "flag", "note": "crash test"},
            headers={"X-Review-Token": info["token"]},
        )
        assert status == 200
        proc.kill()
        proc.wait(20)
        assert [(r["clip_id"], r["decision"], r["note"], r["reviewer"]) for r in _rows(out)] == [
            ("src1_8000", "flag", "crash test", "cli")
        ]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)

    r = _cli("review", str(out), "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "--allow-remote" in r.stderr
    r = _cli("review", str(out), "--where", "nonsense >>> 1", "--port", "0", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["ok"] is False
    old = tmp_path / "OLD"
    old.mkdir()
    rows = manifest_rows(1)
    rows[0]["schema_version"] = 0
    write_manifest(old, rows)
    r = _cli("review", str(old), "--port", "0")
    assert r.returncode == 1 and "schema_version [0] is old" in r.stderr
    r = _cli("review", str(tmp_path / "nothing"), "--port", "0")
    assert r.returncode == 1 and "no manifest.parquet" in r.stderr


def test_cli_help_is_fast_and_documents_policies():
    t0 = time.monotonic()
    r = _cli("qa", "apply", "--help")
    assert r.returncode == 0 and "any-reject-rejects" in r.stdout and "majority" in r.stdout
    assert time.monotonic() - t0 < 30


def test_configurable_reasons(out):
    from biaudio.review.server import make_reasons

    rs = make_reasons(["Wind noise", "other", "Clipping / distortion"])
    assert [(r.slug, r.key, r.needs_note) for r in rs] == [
        ("wind_noise", "1", False),
        ("clipping_distortion", "2", False),
        ("other", "3", True),
    ]
    with pytest.raises(ReviewError, match="at most 8"):
        make_reasons([f"r{i}" for i in range(9)])
    with pytest.raises(ReviewError, match="duplicate"):
        make_reasons(["Static", "static"])
    srv = make_server(ReviewConfig(out_dir=out, port=0, reasons=rs))
    try:
        assert [r["label"] for r in srv.app.state()["reasons"]] == [
            "Wind noise",
            "Clipping / distortion",
            "other",
        ]
        with pytest.raises(ValueError, match="reject needs a reason"):
            srv.app.decide({"index": 0, "decision": "reject", "reason": "static"})
        assert srv.app.decide({"index": 0, "decision": "reject", "reason": "wind_noise"})["ok"]
    finally:
        srv.server_close()


# -- faults: every request answered, bursts queued, stalled clients dropped, strict types ------------


def test_wrong_json_types_get_a_json_400_and_record_nothing(server, out):
    """Before the fix a ``reason`` sent as a list or object raised TypeError in the handler and
    the client got no answer at all, and ``{"index": true}`` was recorded as clip 1."""
    bad = [
        {"index": True, "decision": "accept"},
        {"index": False, "decision": "accept"},
        {"index": 0.0, "decision": "accept"},
        {"index": "0", "decision": "accept"},
        {"index": None, "decision": "accept"},
        {"index": 0, "decision": "reject", "reason": ["static"]},
        {"index": 0, "decision": "reject", "reason": {"slug": "static"}},
        {"index": 0, "decision": ["accept"]},
        {"index": 0, "decision": {"accept": 1}},
        {"index": 0, "decision": "flag", "note": ["why"]},
        {"index": 0, "decision": "flag", "note": 7},
        {"index": 0, "decision": "accept", "clip_id": 5},
        {"index": 0, "decision": "accept", "clip_id": ["x"]},
        {"index": 0, "decision": "accept", "extra": 1},
    ]
    for b in bad:
        st, h, body = _post(server, "/api/decision", b)
        assert st == 400, b
        assert h["content-type"].startswith("application/json")
        msg = json.loads(body)
        assert msg["ok"] is False and msg["error"], b
    assert _rows(out) == []
    # the same connection pool still works: a good decision after all the bad ones
    st, _, body = _post(server, "/api/decision", {"index": 1, "decision": "reject", "reason": "static"})
    assert st == 200 and json.loads(body)["decision"]["clip_id"] == server.app.clips.clip_ids[1]
    assert len(_rows(out)) == 1


def test_locked_database_gets_503_json_and_loses_nothing(out):
    """Another process holds the write lock longer than the busy timeout: the POST gets a JSON
    503 saying nothing was recorded (before the fix: the connection closed with no answer); the
    same POST after the lock is released is recorded exactly once."""
    srv, _ = serve_in_thread(ReviewConfig(out_dir=out, port=0, reviewer="ann", db_busy_timeout_s=0.3))
    blocker = sqlite3.connect(out / "qa.sqlite", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        st, h, body = _post(srv, "/api/decision", {"index": 0, "decision": "accept"})
        waited = time.monotonic() - t0
        assert st == 503 and h["content-type"].startswith("application/json"), body
        msg = json.loads(body)
        assert msg["ok"] is False and "locked" in msg["error"] and "nothing was recorded" in msg["error"]
        assert waited < 5.0
        # reads still work while a writer holds the lock (WAL)
        assert _get(srv, f"/api/state?token={srv.app.token}")[0] == 200
        blocker.execute("ROLLBACK")
        assert _rows(out) == []
        st, _, _ = _post(srv, "/api/decision", {"index": 0, "decision": "accept"})
        assert st == 200 and len(_rows(out)) == 1
    finally:
        blocker.close()
        srv.shutdown()
        srv.server_close()


def test_burst_of_connections_is_queued_not_refused(out):
    """64 clients connect while the server is not accepting yet (as when every thread is busy):
    the kernel must queue them all. With the stdlib's listen backlog of 5 the 7th connect times
    out; here every connection is accepted once serving starts, and every POST is answered and
    recorded."""
    import socket

    n = 64
    srv = make_server(ReviewConfig(out_dir=out, port=0, reviewer="ann"))
    socks: list[socket.socket] = []
    t = None
    try:
        for k in range(n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
            socks.append(s)
            body = json.dumps({"index": k % 4, "decision": "flag", "note": f"burst {k}"}).encode()
            s.sendall(
                b"POST /api/decision HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"X-Review-Token: {srv.app.token}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        statuses = []
        for s in socks:
            s.settimeout(30)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            head, _, payload = data.partition(b"\r\n\r\n")
            statuses.append(int(head.split()[1]))
            assert json.loads(payload)["ok"] is True
    finally:
        for s in socks:
            s.close()
        if t is not None:
            srv.shutdown()
        srv.server_close()
    assert statuses == [200] * n
    rows = _rows(out)
    assert sorted(r["note"] for r in rows) == sorted(f"burst {k}" for k in range(n))


def test_stalled_clients_are_dropped_and_others_served(out):
    """A client that sends half a request (or nothing) is disconnected after the idle timeout
    instead of holding a server thread forever; requests from others are served meanwhile and
    the half-sent decision is not recorded."""
    import socket

    srv, _ = serve_in_thread(ReviewConfig(out_dir=out, port=0, reviewer="ann", idle_timeout_s=1.0))
    try:
        half = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        half.sendall(
            b"POST /api/decision HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"X-Review-Token: {srv.app.token}\r\nContent-Length: 200\r\n\r\n".encode()
            + b'{"index": 0, "deci'
        )
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        assert _get(srv, f"/api/state?token={srv.app.token}")[0] == 200
        t0 = time.monotonic()
        for s in (half, silent):
            assert s.recv(65536) == b"", "the server answered or kept a stalled connection"
        took = time.monotonic() - t0
        assert took < 5.0, f"stalled sockets closed only after {took:.1f} s"
        half.close()
        silent.close()
        assert _rows(out) == []
        assert _post(srv, "/api/decision", {"index": 0, "decision": "accept"})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
