"""The review web server: stdlib ``ThreadingHTTPServer``, one page, a small JSON API, media with
HTTP Range support.

Security model (the server usually runs on a laptop with a browser open to other sites):

* Binds to 127.0.0.1 unless ``allow_remote`` is given explicitly.
* Only three kinds of path exist: the page and its fixed static files, ``/api/...``, and
  ``/media/<path>`` where ``<path>`` must be one of the media paths listed in the manifest and must
  resolve inside OUT. There is no directory listing and no generic file serving, so traversal
  (``/../``, ``%2e%2e``, absolute paths, symlinks out of OUT) has nothing to reach.
* A random session token (printed in the URL) is needed for the API and for media. State-changing
  requests must be POSTs carrying it; a page on another origin can neither read the token nor
  forge a JSON POST with it. The Host header is checked against loopback names, which stops DNS
  rebinding from turning a foreign page into a same-origin one.
"""

from __future__ import annotations

import getpass
import hmac
import ipaddress
import json
import mimetypes
import re
import secrets
import socket
import sqlite3
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from biaudio.errors import BiaudioError
from biaudio.review.clips import ClipSet, load_clipset, safe_relpath
from biaudio.review.db import BUSY_TIMEOUT_MS, QADatabase, db_path

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webm": "video/webm",
}
DEFAULT_REASONS = ("wrong sound", "voice-over/music", "static", "bad direction", "visual artefact", "other")
MAX_BODY = 64 * 1024
LISTEN_BACKLOG = 128  # connections the kernel queues while every thread is busy (stdlib default: 5)
IDLE_TIMEOUT_S = 30.0  # a client silent this long mid-request (or between keep-alive requests) is dropped
MAX_NOTE = 2000
CHUNK = 256 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ReviewError(BiaudioError):
    """The review server cannot start (bad options, unsafe bind address...)."""


def slugify(label: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")
    return s or "reason"


@dataclass
class Reason:
    slug: str
    label: str
    key: str  # the digit that picks it
    needs_note: bool = False


def make_reasons(labels: list[str] | tuple[str, ...] | None = None) -> list[Reason]:
    """Reject reasons, keyed 1..9. "other" is always last and asks for a note, so a reviewer is
    never forced into a wrong reason."""
    labels = [x.strip() for x in (labels or DEFAULT_REASONS) if x and x.strip()]
    labels = [x for x in labels if slugify(x) != "other"] + ["other"]
    if len(labels) > 9:
        raise ReviewError(None, "too_many_reasons", "at most 8 reasons plus 'other' (digits 1-9 pick them)")
    seen: set[str] = set()
    out = []
    for i, label in enumerate(labels, start=1):
        slug = slugify(label)
        if slug in seen:
            raise ReviewError(None, "duplicate_reason", label)
        seen.add(slug)
        out.append(Reason(slug, label, str(i), needs_note=slug == "other"))
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ReviewConfig:
    out_dir: Path
    pass_: int = 1
    reviewer: str = field(default_factory=lambda: _default_reviewer())
    sample: int | None = None
    seed: int = 0
    where: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    allow_remote: bool = False
    reasons: list[Reason] = field(default_factory=make_reasons)
    token: str | None = None
    quiet: bool = True
    idle_timeout_s: float = IDLE_TIMEOUT_S
    db_busy_timeout_s: float = BUSY_TIMEOUT_MS / 1000


def _default_reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "reviewer"


class ReviewApp:
    """Everything the handlers need: the selected clips, the DB, the token, the reasons."""

    def __init__(self, cfg: ReviewConfig):
        if cfg.pass_ < 1:
            raise ReviewError(None, "bad_pass", "--pass must be >= 1")
        if not cfg.reviewer.strip():
            raise ReviewError(None, "bad_reviewer", "--reviewer must not be empty")
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self.clips: ClipSet = load_clipset(self.out_dir, cfg.where, cfg.sample, cfg.seed)
        self.allowed_media = self.clips.allowed_media()
        self.db = QADatabase(db_path(self.out_dir), busy_timeout_ms=int(cfg.db_busy_timeout_s * 1000))
        self.token = cfg.token or secrets.token_urlsafe(24)
        self.reasons = {r.slug: r for r in cfg.reasons}
        self.db.start_session(cfg.pass_, cfg.reviewer, cfg.where, cfg.sample, cfg.seed, len(self.clips))

    # -- state ----------------------------------------------------------------------------------

    def live(self) -> dict[str, Any]:
        """This reviewer's live decision per clip in this pass, restricted to the selection."""
        return {
            d.clip_id: d
            for d in self.db.effective(self.cfg.pass_, self.cfg.reviewer)
            if self.clips.index_of(d.clip_id) is not None
        }

    def progress(self, live: dict[str, Any] | None = None) -> dict[str, Any]:
        live = self.live() if live is None else live
        decisions = {k: 0 for k in ("accept", "reject", "flag", "skip")}
        reasons = {slug: 0 for slug in self.reasons}
        for d in live.values():
            decisions[d.decision] += 1
            if d.decision == "reject" and d.reason:
                reasons[d.reason] = reasons.get(d.reason, 0) + 1
        done = decisions["accept"] + decisions["reject"] + decisions["flag"]
        return {"done": done, "total": len(self.clips), "decisions": decisions, "reasons": reasons}

    def next_open(self, after: int = -1, live: dict[str, Any] | None = None) -> int | None:
        """The next clip this reviewer has not touched in this pass (searching forward from
        ``after``, wrapping); failing that the next skipped one; ``None`` when all are decided."""
        live = self.live() if live is None else live
        n = len(self.clips)
        order = [(after + 1 + k) % n for k in range(n)] if n else []
        for i in order:
            if self.clips.clip_ids[i] not in live:
                return i
        for i in order:
            d = live.get(self.clips.clip_ids[i])
            if d is not None and d.decision == "skip":
                return i
        return None

    def state(self) -> dict[str, Any]:
        live = self.live()
        resume = self.next_open(-1, live)
        progress = self.progress(live)
        return {
            "pass": self.cfg.pass_,
            "reviewer": self.cfg.reviewer,
            "out_dir": self.out_dir.name,
            "where": self.cfg.where,
            "sample": self.cfg.sample,
            "seed": self.cfg.seed if self.cfg.sample is not None else None,
            "total": len(self.clips),
            "reasons": [r.__dict__ for r in self.reasons.values()],
            "progress": progress,
            "resume_index": resume,
            # every clip decided (accept/reject/flag); skipped clips keep a pass open
            "complete": progress["done"] == progress["total"],
        }

    def clip(self, i: int) -> dict[str, Any]:
        payload = self.clips.clip_payload(i)
        d = self.live().get(payload["clip_id"])
        payload["decision"] = d.to_json() if d else None
        return payload

    # -- changes --------------------------------------------------------------------------------

    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        # Strict JSON types: bool is an int in Python, so {"index": true} would be clip 1, and a
        # list or object where text belongs would reach set lookups and SQLite.
        unknown = set(body) - {"index", "clip_id", "decision", "reason", "note"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        i = body.get("index")
        if type(i) is not int:
            raise ValueError(f"index must be an integer, not {type(i).__name__ if i is not None else 'missing'}")
        if not 0 <= i < len(self.clips):
            raise ValueError("index out of range")
        clip_id = self.clips.clip_ids[i]
        for name in ("clip_id", "decision", "reason", "note"):
            v = body.get(name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{name} must be text or null, not {type(v).__name__}")
        if body.get("clip_id") not in (None, clip_id):
            raise ValueError("clip_id does not match index (stale page? reload)")
        decision = body.get("decision")
        if decision not in ("accept", "reject", "flag", "skip"):
            raise ValueError("decision must be accept, reject, flag or skip")
        reason = body.get("reason") or None
        note = body.get("note") or None
        if note is not None and len(note) > MAX_NOTE:
            raise ValueError(f"note must be text of at most {MAX_NOTE} characters")
        note = note.strip() if note else None
        if decision == "reject":
            if reason not in self.reasons:
                raise ValueError(f"reject needs a reason among {list(self.reasons)}")
            if self.reasons[reason].needs_note and not note:
                raise ValueError(f"reason '{reason}' needs a note")
        elif reason is not None:
            raise ValueError("only reject takes a reason (use the note for flags)")
        d = self.db.record(clip_id, self.cfg.pass_, self.cfg.reviewer, decision, reason, note or None)
        live = self.live()
        return {
            "ok": True,
            "decision": d.to_json(),
            "progress": self.progress(live),
            "next_index": self.next_open(i, live),
        }

    def undo(self) -> dict[str, Any]:
        d = self.db.undo_last(self.cfg.pass_, self.cfg.reviewer)
        return {
            "ok": True,
            "undone": d.to_json() if d else None,
            "index": self.clips.index_of(d.clip_id) if d else None,
            "progress": self.progress(),
        }


class Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "biaudio-review"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # -- plumbing -------------------------------------------------------------------------------

    def setup(self) -> None:
        # the socket timeout: a client that stalls mid-request (or idles on keep-alive) is
        # dropped after idle_timeout_s instead of holding its thread forever
        self.timeout = self.server.app.cfg.idle_timeout_s
        self._answered = False
        super().setup()

    def handle_one_request(self) -> None:
        self._answered = False
        super().handle_one_request()

    def _guarded(self, fn) -> None:
        """Run a request so that every failure still gets a JSON answer: a locked database is
        503 (retry; nothing was recorded), any other bug 500. A client that went away or went
        silent only closes its own connection. ``fn(path, query)`` runs only for a request whose
        Host and target are safe (the others are answered here)."""
        try:
            target = self._split() if self._host_ok() else None
            if target is not None:
                fn(*target)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser cancelled (seek, next clip): normal
        except TimeoutError:
            raise  # handle_one_request logs it and closes the connection
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            self._fail_safe(
                HTTPStatus.SERVICE_UNAVAILABLE if busy else HTTPStatus.INTERNAL_SERVER_ERROR,
                "the QA database is locked by another process; nothing was recorded, try again"
                if busy else f"QA database error: {exc}; nothing was recorded",
            )
        except Exception as exc:
            self._fail_safe(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__}): {exc}")

    def _fail_safe(self, status: int, message: str) -> None:
        self.log_error("%s %s: %s", self.command, self.path, message)
        self.close_connection = True
        if self._answered:  # headers already out (a media stream): all we can do is close
            return
        try:
            self._error(status, message[:500])
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if not self.server.app.cfg.quiet:
            sys.stderr.write("review: " + (format % args) + "\n")

    def _headers(self, status: int, ctype: str, length: int, extra: dict[str, str] | None = None) -> None:
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self._headers(status, ctype, len(body), {"Cache-Control": "no-store", **(extra or {})})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"ok": False, "error": message})

    def _split(self) -> tuple[str, dict[str, list[str]]] | None:
        """Path and query of the request target, or None (after answering) when it is unsafe."""
        raw = self.path
        if not raw.startswith("/"):
            self._error(HTTPStatus.BAD_REQUEST, "request target must be a path")
            return None
        path, _, query = raw.partition("?")
        decoded = unquote(path)
        parts = decoded.split("/")
        if ".." in parts or "\\" in decoded or "\x00" in decoded or "//" in decoded:
            self._error(HTTPStatus.FORBIDDEN, "path not allowed")
            return None
        return decoded, parse_qs(query)

    def _host_ok(self) -> bool:
        if self.server.app.cfg.allow_remote:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name in ("127.0.0.1", "localhost", "[::1]", "::1") or is_loopback(name):
            return True
        self._error(HTTPStatus.FORBIDDEN, "unexpected Host header (DNS rebinding?)")
        return False

    def _token_ok(self, query: dict[str, list[str]]) -> bool:
        given = self.headers.get("X-Review-Token") or (query.get("token") or [""])[0]
        if given and hmac.compare_digest(given.encode(), self.server.app.token.encode()):
            return True
        self._error(
            HTTPStatus.FORBIDDEN, "missing or wrong session token (use the URL printed by `biaudio review`)"
        )
        return False

    # -- GET/HEAD -------------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 (stdlib naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self._guarded(self._get)

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        app = self.server.app
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            self._send(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), ctype)
            return
        if path.startswith("/api/") or path.startswith("/media/"):
            if not self._token_ok(query):
                return
        if path == "/api/state":
            self._json(HTTPStatus.OK, app.state())
        elif path == "/api/clip":
            try:
                i = int((query.get("i") or ["x"])[0])
            except ValueError:
                self._error(HTTPStatus.BAD_REQUEST, "i must be an integer")
                return
            if not 0 <= i < len(app.clips):
                self._error(HTTPStatus.NOT_FOUND, "no such clip index")
                return
            self._json(HTTPStatus.OK, app.clip(i))
        elif path.startswith("/media/"):
            self._media(path[len("/media/") :])
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    def _media(self, rel_raw: str) -> None:
        app = self.server.app
        rel = safe_relpath(rel_raw)
        if rel is None or rel != rel_raw or rel not in app.allowed_media:
            self._error(HTTPStatus.NOT_FOUND, "not a media file of this manifest")
            return
        f = app.clips.media_file(rel)
        if f is None:
            self._error(HTTPStatus.NOT_FOUND, "media file missing")
            return
        ctype = (
            MEDIA_TYPES.get(f.suffix.lower()) or mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        )
        self._send_file(f, ctype)

    def _send_file(self, f: Path, ctype: str) -> None:
        """Serve a file, honouring a single ``Range: bytes=`` request (browsers need 206 to seek
        and Chromium will not even start some videos without it)."""
        size = f.stat().st_size
        start, end, status = 0, size - 1, HTTPStatus.OK
        extra = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=60"}
        rng = self.headers.get("Range")
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng or "")
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                suffix = int(m.group(2))
                start, end = max(0, size - suffix), size - 1
                if suffix == 0:
                    start = size
            if start >= size or start > end:
                self._headers(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    "text/plain",
                    0,
                    {"Content-Range": f"bytes */{size}", **extra},
                )
                return
            status = HTTPStatus.PARTIAL_CONTENT
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self._headers(status, ctype, length, extra)
        if self.command == "HEAD" or length == 0:
            return
        with f.open("rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    # -- POST -----------------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        if not self._token_ok(query):
            return
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            return
        raw = self.rfile.read(n) if n else b""
        if len(raw) < n:  # the client closed before sending the body it announced
            self.close_connection = True
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"bad JSON: {exc}")
            return
        app = self.server.app
        try:
            if path == "/api/decision":
                self._json(HTTPStatus.OK, app.decide(body))
            elif path == "/api/undo":
                self._json(HTTPStatus.OK, app.undo())
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))

    def do_PUT(self) -> None:  # noqa: N802
        self._guarded(lambda: self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed"))

    do_DELETE = do_PUT
    do_PATCH = do_PUT


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG  # a burst of POSTs waits in the kernel queue, not reset

    def __init__(self, app: ReviewApp):
        self.app = app
        host = app.cfg.host
        if not is_loopback(host) and not app.cfg.allow_remote:
            raise ReviewError(
                None,
                "remote_bind_refused",
                f"refusing to listen on {host!r}: other machines could reach the review page; "
                "pass --allow-remote to do it anyway",
            )
        if ":" in host.strip("[]"):
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), app.cfg.port), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.app.cfg.host
        shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
        return f"http://{shown}:{self.port}/?token={self.app.token}"


def make_server(cfg: ReviewConfig) -> ReviewServer:
    """Build the app (reads the manifest, opens the DB) and bind the socket; does not serve yet."""
    return ReviewServer(ReviewApp(cfg))


def serve_in_thread(cfg: ReviewConfig) -> tuple[ReviewServer, threading.Thread]:
    """Start a server on a background thread (tests, notebooks); stop with ``server.shutdown()``."""
    srv = make_server(cfg)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    return srv, t
