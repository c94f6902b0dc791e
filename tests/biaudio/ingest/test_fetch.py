"""yt-dlp fetch against a real local HTTP server (generic extractor) + format selection on
YouTube-shaped info dicts + error classification."""

from __future__ import annotations

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from biaudio.errors import BiaudioError
from biaudio.ingest.fetch import FetchConfig, classify_error, fetch, read_archive, select_formats
from biaudio.ingest.sources import SourceItem, read_sources


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("served")
    v = ["-f", "lavfi", "-i", "testsrc2=s=128x64:r=10:d=1"]
    tones = [x for f in (300, 500, 700, 900) for x in ("-f", "lavfi", "-i", f"sine=f={f}:d=1")]
    _ffmpeg(*v, *tones, "-filter_complex", "[1][2][3][4]join=inputs=4:channel_layout=4.0[a]", "-map", "0:v", "-map", "[a]",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(d / "foa.mp4"))
    _ffmpeg(*v, "-f", "lavfi", "-i", "sine=f=440:d=1", "-ac", "2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
            "-shortest", str(d / "stereo.mp4"))
    _ffmpeg("-i", str(d / "foa.mp4"), "-i", str(d / "foa.mp4"), "-filter_complex", "[0:v][0:a][1:v][1:a]concat=n=2:v=1:a=1[v][a]",
            "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast", "-g", "5", "-c:a", "aac",
            "-movflags", "+faststart", str(d / "long.mp4"))  # 2 s; faststart: http.server has no Range support
    return {"foa": d / "foa.mp4", "stereo": d / "stereo.mp4", "long": d / "long.mp4"}


class _Server:
    def __init__(self, media: dict[str, Path]) -> None:
        self.hits: list[str] = []
        self.release = threading.Event()
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:
                pass

            def _body(self, data: bytes, length: int | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    self.wfile.flush()
                self.close_connection = True

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                srv.hits.append(self.path)
                name = self.path.lstrip("/").split("?")[0]
                if name == "hang.mp4":
                    srv.release.wait(30)
                    return
                if name == "trunc.mp4":
                    data = media["foa"].read_bytes()
                    return self._body(data[: len(data) // 3], length=len(data))
                if name == "empty.mp4":
                    return self._body(b"")
                if name in ("foa.mp4", "stereo.mp4", "-x1.mp4", "long.mp4"):
                    key = {"stereo.mp4": "stereo", "long.mp4": "long"}.get(name, "foa")
                    return self._body(media[key].read_bytes())
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(media):
    s = _Server(media)
    yield s
    s.close()


FAST = FetchConfig(socket_timeout_s=2.0, retries=1, backoff_s=0.1, ytdlp_retries=0)


def _item(server, name: str) -> SourceItem:
    items = read_sources([f"{server.url}/{name}"]).items
    assert len(items) == 1 and items[0].kind == "url"
    return items[0]


def test_download_foa_keeps_info_and_archive_prevents_refetch(server, tmp_path):
    item = _item(server, "foa.mp4")
    path = fetch(item, tmp_path, FAST)
    assert path.is_file() and path.parent == tmp_path and path.stat().st_size > 1024
    from biaudio.media import probe

    assert probe(path).audio_channels == 4
    info = tmp_path / f"{item.source_id}.info.json"
    assert info.is_file() and '"extractor": "generic"' in info.read_text()
    assert item.source_id in read_archive(tmp_path / "fetch-archive.jsonl")
    assert not list(tmp_path.glob(".fetch-*")), "work folder left behind"
    before = len(server.hits)
    again = fetch(item, tmp_path, FAST)
    assert again == path
    assert len(server.hits) == before, "second run touched the network"


def test_section_download(server, tmp_path):
    from biaudio.media import probe

    item = SourceItem("long_0_5", "url", f"{server.url}/long.mp4", (0.5, 1.5))
    info = probe(fetch(item, tmp_path, FAST))
    assert info.audio_channels == 4
    assert abs(info.duration_s - 1.0) < 0.25, info.duration_s


def test_option_looking_url_path_is_fetched_not_parsed(server, tmp_path):
    path = fetch(_item(server, "-x1.mp4"), tmp_path, FAST)
    assert path.is_file()


@pytest.mark.parametrize("name, reason", [
    ("missing.mp4", "http_404"),
    ("stereo.mp4", "no_foa_format"),
    ("trunc.mp4", "truncated"),
    ("empty.mp4", "too_small"),
])
def test_rejects(server, tmp_path, name, reason):
    with pytest.raises(BiaudioError) as ei:
        fetch(_item(server, name), tmp_path, FAST)
    assert ei.value.reason == reason, str(ei.value)
    assert ei.value.stage == "fetch"
    assert not list(tmp_path.glob("*.mp4")), "a failed download left media behind"
    assert not read_archive(tmp_path / "fetch-archive.jsonl")


def test_hanging_url_times_out_in_bounded_time(server, tmp_path):
    cfg = FetchConfig(socket_timeout_s=1.0, retries=1, backoff_s=0.1, ytdlp_retries=0)
    t0 = time.monotonic()
    with pytest.raises(BiaudioError) as ei:
        fetch(_item(server, "hang.mp4"), tmp_path, cfg)
    dt = time.monotonic() - t0
    assert ei.value.reason == "timeout", str(ei.value)
    assert dt < 15, f"took {dt:.1f} s"
    assert "2 attempts" in ei.value.detail  # retried once with backoff


def test_local_file_is_a_noop(media, tmp_path):
    item = read_sources([str(media["foa"])]).items[0]
    assert fetch(item, tmp_path) == media["foa"]
    with pytest.raises(BiaudioError) as ei:
        fetch(SourceItem("gone", "file", str(tmp_path / "gone.mp4")), tmp_path)
    assert ei.value.reason == "missing"


# ------------------------------------------------------------------ format selection (YouTube-shaped)

def _yt(formats: list[dict]) -> dict:
    return {"id": "abcdefghijk", "extractor_key": "Youtube", "webpage_url": "https://www.youtube.com/watch?v=abcdefghijk",
            "formats": formats}


def _v(fid, h, note="equi", vcodec="vp9"):
    return {"format_id": fid, "vcodec": vcodec, "acodec": "none", "height": h, "width": 2 * h, "tbr": h, "format_note": f"{h}s, {note}"}


def _a(fid, ch, acodec="opus", note="medium", abr=128):
    return {"format_id": fid, "vcodec": "none", "acodec": acodec, "audio_channels": ch, "abr": abr, "format_note": note}


STEREO = [_a("140", 2, "mp4a.40.2"), _a("251", 2, "opus", abr=160)]
VIDEO = [_v("137", 1080), _v("271", 1440), _v("313", 2160), _v("401", 2880)]


def test_select_prefers_opus_4ch_and_height_limit():
    info = _yt(VIDEO + STEREO + [_a("338", 4, "opus", "medium, ambisonics_quad", 256), _a("327", 4, "mp4a.40.2", abr=300)])
    c = select_formats(info, FetchConfig(), section=True)
    assert (c.video_id, c.audio_id, c.format_spec) == ("271", "338", "271+338")
    assert not c.verify and c.audio_channels == 4
    full = select_formats(info, FetchConfig(), section=False)
    assert full.video_id == "137"  # whole videos: height <= 1080


def test_select_six_channel_rejected_unless_configured():
    info = _yt(VIDEO + STEREO + [_a("339", 6, "opus", "ambisonics_5_1")])
    with pytest.raises(BiaudioError) as ei:
        select_formats(info, FetchConfig())
    assert ei.value.reason == "no_foa_format" and "6" in ei.value.detail
    c = select_formats(info, FetchConfig(allow_6ch=True))
    assert c.audio_id == "339" and c.audio_channels == 6


def test_select_stereo_only_is_no_foa():
    with pytest.raises(BiaudioError) as ei:
        select_formats(_yt(VIDEO + STEREO), FetchConfig())
    assert ei.value.reason == "no_foa_format"


def test_select_no_360_video():
    flat = [{k: v for k, v in _v(f, h).items()} | {"format_note": f"{h}p"} for f, h in (("137", 1080), ("22", 720))]
    with pytest.raises(BiaudioError) as ei:
        select_formats(_yt(flat + [_a("338", 4)]), FetchConfig())
    assert ei.value.reason == "not_360"
    # stereoscopic top/bottom is used only when no mono equirect exists
    info = _yt([_v("400", 1440, "equi_threed_top_bottom"), _v("271", 1080), _a("338", 4)])
    assert select_formats(info, FetchConfig(), section=True).video_id == "271"


@pytest.mark.parametrize("msg, reason", [
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable"),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video", "private"),
    ("ERROR: [youtube] abc: The uploader has not made this video available in your country", "geo_blocked"),
    ("ERROR: [youtube] abc: Sign in to confirm you’re not a bot. Use --cookies-from-browser", "bot_check"),
    ("ERROR: Unable to download webpage: HTTP Error 404: Not Found", "http_404"),
    ("ERROR: Unable to download webpage: The read operation timed out", "timeout"),
    ("ERROR: Requested format is not available. Use --list-formats", "no_foa_format"),
    ("ERROR: unable to download video data: <urlopen error [Errno 111] Connection refused>", "network"),
])
def test_classify(msg, reason):
    assert classify_error(msg) == reason


def test_user_options_reach_ytdlp():
    from biaudio.ingest.fetch import _Silent, _ydl_params

    cfg = FetchConfig(cookies_file="/c.txt", proxy="socks5://127.0.0.1:9", player_client=["web", "android"],
                      rate_limit_bps=500_000, socket_timeout_s=7)
    p = _ydl_params(cfg, _Silent())
    assert (p["cookiefile"], p["proxy"], p["ratelimit"], p["socket_timeout"]) == ("/c.txt", "socks5://127.0.0.1:9", 500_000, 7)
    assert p["extractor_args"] == {"youtube": {"player_client": ["web", "android"]}}
    assert p["noplaylist"] and p["quiet"]
