"""biaudio.atomic: the one write-to-temporary-then-rename every output goes through."""

from __future__ import annotations

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
