"""biaudio.atomic: the one write-to-temporary-then-rename every output goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from biaudio import atomic
from biaudio.engine.types import is_temp_name


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    final = tmp_path / "rec.json"
    atomic.write_text(final, "old")
    seen = []
    with pytest.raises(RuntimeError), atomic.atomic_path(final) as tmp:
        tmp.write_text("half")
        seen.append(tmp)
        # a *.json glob over a records folder (validate, upgrade) never sees a writer's temporary
        assert [p.name for p in tmp_path.glob("*.json")] == ["rec.json"]
        assert is_temp_name(tmp.name) and atomic.TEMP_MARKER in tmp.name
        raise RuntimeError("killed mid-write")
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.json"]
    with atomic.atomic_path(tmp_path / "clip.mp4", keep_suffix=True, mode=0o640) as tmp:
        assert tmp.suffix == ".mp4" and tmp.name.startswith(".clip.tmp-")  # ffmpeg picks the format by it
        tmp.write_bytes(b"x")
    assert (tmp_path / "clip.mp4").stat().st_mode & 0o777 == 0o640
    assert seen[0] != atomic._unique_temp(final, False), "two writes never share a temporary name"


# renames that are not "write a temporary, then rename it": each with its reason
_OTHER_RENAMES = {
    "biaudio/media/video.py": "VideoWriter: the temporary lives across write() calls, renamed in close()",
    "biaudio/ingest/fetch.py": "moves yt-dlp's finished download out of its work folder",
    "biaudio/cli/core.py": "moves `biaudio render`'s finished clip out of its work folder",
    "biaudio/engine/state.py": "moves a stale lock aside",
    "visaudio/checkpoint.py": "keeps the previous checkpoint / sets a damaged one aside",
    "visaudio/model/codecs.py": "swaps a whole codec folder",
}


def test_write_then_rename_lives_only_in_biaudio_atomic() -> None:
    """One helper writes every file through a temporary (same temp names, sweepable, mode and fsync
    in one place): elsewhere a rename call is allowed only in the modules listed with a reason."""
    import ast

    repo = Path(__file__).resolve().parents[2]
    hits = []
    for root in ("biaudio", "visaudio"):
        for f in sorted((repo / root).rglob("*.py")):
            rel = f.relative_to(repo).as_posix()
            if rel == "biaudio/atomic.py" or rel in _OTHER_RENAMES:
                continue
            for n in ast.walk(ast.parse(f.read_text())):
                if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
                    continue
                fn = n.func
                if isinstance(fn.value, ast.Name) and fn.value.id == "os" and fn.attr in ("replace", "rename"):
                    hits.append(f"{rel}:{n.lineno}: os.{fn.attr}")
                elif fn.attr in ("replace", "rename") and len(n.args) == 1 and not n.keywords \
                        and not isinstance(n.args[0], ast.Constant):  # Path.replace(target), not str.replace
                    hits.append(f"{rel}:{n.lineno}: .{fn.attr}(...)")
    assert not hits, "\n".join(hits)
