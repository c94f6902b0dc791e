"""The review page in real Chromium (Debian's /usr/bin/chromium via Playwright) against the real server.

One browser per module (launching it is the slow part); each test gets its own OUT copy so the
decisions of one test never leak into another.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from biaudio.review.server import ReviewConfig, serve_in_thread
from tests.biaudio.review.support import build_mini_out

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _serve(out: Path, **kw):
    return serve_in_thread(ReviewConfig(out_dir=out, port=0, reviewer=kw.pop("reviewer", "tester"), **kw))


def _decisions(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "qa.sqlite") as con:
        return con.execute(
            "SELECT clip_id, pass, reviewer, decision, reason, undone FROM decisions ORDER BY id"
        ).fetchall()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=15000)
    return page, errors


def _assert_plays(page) -> None:
    """readyState >= 2 (HAVE_CURRENT_DATA) and currentTime moves forward."""
    page.wait_for_function("() => document.getElementById('video').readyState >= 2", timeout=15000)
    page.evaluate("() => { const v = document.getElementById('video'); v.muted = true; return v.play(); }")
    t0 = page.evaluate("document.getElementById('video').currentTime")
    page.wait_for_function(f"() => document.getElementById('video').currentTime > {t0} + 0.3", timeout=15000)
    assert page.evaluate("document.getElementById('video').videoWidth") > 0


def _review_flow(
    browser, out: Path, artifacts: Path | None, shot_name: str, build_reader: bool = False
) -> None:
    """Accept clip 1, reject clip 2 (reason key 2), reload -> clip 3; apply -> statuses."""
    srv, _ = _serve(out)
    try:
        page, errors = _open(browser, srv.url)
        ids = srv.app.clips.clip_ids
        n = len(ids)
        assert page.inner_text("#pos") == f"clip 1 of {n}"
        assert page.inner_text("#clip-id") == ids[0]
        _assert_plays(page)

        page.keyboard.press("a")
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[1]!r}")
        assert _decisions(out) == [(ids[0], 1, "tester", "accept", None, 0)]

        page.keyboard.press("r")
        page.wait_for_selector("#reasons.open")
        page.keyboard.press("2")  # voice-over/music
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[2]!r}")
        assert _decisions(out)[-1] == (ids[1], 1, "tester", "reject", "voice_over_music", 0)
        assert page.inner_text("#progress-text") == f"2 / {n} decided"

        page.reload()
        page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=15000)
        assert page.inner_text("#clip-id") == ids[2], "reload must resume at the next unreviewed clip"
        assert page.inner_text("#pos") == f"clip 3 of {n}"
        assert page.inner_text("#progress-text") == f"2 / {n} decided"
        _assert_plays(page)
        page.wait_for_timeout(300)
        if artifacts is not None:
            page.screenshot(path=str(artifacts / shot_name))
        assert errors == [], errors
        page.close()
    finally:
        srv.shutdown()
        srv.server_close()

    from typer.testing import CliRunner

    from biaudio.cli import app

    res = CliRunner().invoke(app, ["qa", "apply", str(out), "--policy", "last-pass-wins", "--json"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out / "manifest.parquet").set_index("clip_id")
    assert df.loc[ids[0], "qa_status"] == "accepted"
    assert df.loc[ids[1], "qa_status"] == "rejected"
    assert df.loc[ids[1], "qa_reason"] == "voice_over_music"
    assert set(df.loc[ids[2:], "qa_status"]) == {"pending"}
    assert list(df.index) == list(
        pd.read_parquet(out / "manifest_versions" / "manifest.v1.parquet")["clip_id"]
    )
    if build_reader:  # the rewritten manifest still satisfies the build area's schema-checking reader
        from biaudio.manifest import read_manifest

        t = read_manifest(out)
        status = dict(zip(t.column("clip_id").to_pylist(), t.column("qa_status").to_pylist(), strict=True))
        assert len(status) == n and (status[ids[0]], status[ids[1]]) == ("accepted", "rejected")


def test_review_page_plays_decides_resumes_and_applies(browser, mini_out, artifacts_dir):
    _review_flow(browser, mini_out, artifacts_dir, "review_page.png")


def test_review_page_on_demo_manifest(browser, request, tmp_path, artifacts_dir):
    """The required end-to-end check on the demo build (a copy: apply must not touch the shared one)."""
    try:
        demo = Path(request.getfixturevalue("demo_build"))
    except pytest.FixtureLookupError:
        pytest.skip("demo_build fixture not available yet")
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copy2(demo / "manifest.parquet", out / "manifest.parquet")
    for sub in ("clips", "previews"):  # only what review reads (not sources/, logs/, qa.sqlite)
        if (demo / sub).is_dir():
            shutil.copytree(demo / sub, out / sub)
    _review_flow(browser, out, artifacts_dir, "review_page.png", build_reader=True)


def test_keys_flag_skip_undo_navigation_and_other_note(browser, mini_out):
    srv, _ = _serve(mini_out, reviewer="bob", pass_=2)
    try:
        page, errors = _open(browser, srv.url)
        ids = srv.app.clips.clip_ids
        page.keyboard.press("f")
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[1]!r}")
        page.keyboard.press("s")
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[2]!r}")
        assert [d[3] for d in _decisions(mini_out)] == ["flag", "skip"]
        # undo goes back to the skipped clip and marks the row undone (kept, never deleted)
        page.keyboard.press("u")
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[1]!r}")
        rows = _decisions(mini_out)
        assert [(r[0], r[3], r[5]) for r in rows] == [(ids[0], "flag", 0), (ids[1], "skip", 1)]
        # navigation: k back, j forward
        page.keyboard.press("k")
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[0]!r}")
        assert "flag" in page.inner_text("#decided")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[1]!r}")
        # reject with "other" needs a note: the digit focuses the note box, Enter saves
        page.keyboard.press("r")
        page.keyboard.press("6")
        page.wait_for_function("() => document.activeElement.id === 'note'")
        page.keyboard.type("birds dubbed in")
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => document.getElementById('clip-id').textContent === {ids[2]!r}")
        last = _decisions(mini_out)[-1]
        assert last[:5] == (ids[1], 2, "bob", "reject", "other")
        with sqlite3.connect(mini_out / "qa.sqlite") as con:
            assert (
                con.execute("SELECT note FROM decisions ORDER BY id DESC LIMIT 1").fetchone()[0]
                == "birds dubbed in"
            )
        # replay: space seeks back to the start
        page.wait_for_function("() => document.getElementById('video').readyState >= 2", timeout=15000)
        page.evaluate(
            "() => { const v = document.getElementById('video'); v.muted = true; v.pause(); v.currentTime = 1.2; }"
        )
        page.keyboard.press(" ")
        page.wait_for_function("() => document.getElementById('video').currentTime < 1.0")
        assert errors == []
        page.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_page_shows_missing_media_and_no_preview(browser, tmp_path):
    out = build_mini_out(tmp_path / "OUT", n=2, previews=False, drop=("preview_path",))
    (out / "clips" / "src0_0.mp4").unlink()
    srv, _ = _serve(out)
    try:
        page, errors = _open(browser, srv.url)
        assert not page.is_visible("#video")
        assert "video missing: clips/src0_0.mp4" in page.inner_text("#video-missing")
        assert page.inner_text("#preview-missing") == "no preview"
        page.keyboard.press("a")  # review goes on
        page.wait_for_function("() => document.getElementById('clip-id').textContent === 'src0_8000'")
        _assert_plays(page)
        assert _decisions(out)[0][:4] == ("src0_0", 1, "tester", "accept")
        assert errors == []
        page.close()
    finally:
        srv.shutdown()
        srv.server_close()
