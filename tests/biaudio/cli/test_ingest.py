"""CLI: several inputs, failures reported per item with reasons, run continues, exit code non-zero."""

from __future__ import annotations

import json
import subprocess

from typer.testing import CliRunner

from biaudio.cli import app

runner = CliRunner()


def _mp4(path, channels: int | None, size="256x128", d=1.5):
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=s={size}:r=10:d={d}"]
    if channels:
        cmd += ["-f", "lavfi", "-i", f"sine=f=440:d={d}", "-filter_complex", f"[1]asplit={channels}" + "".join(
            f"[s{k}]" for k in range(channels)) + ";" + "".join(f"[s{k}]" for k in range(channels)) +
            f"amerge=inputs={channels}[a]", "-map", "0:v", "-map", "[a]", "-c:a", "aac"]
    subprocess.run([*cmd, "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True, timeout=60)
    return path


def test_probe_many_inputs_continues_and_fails(testdata_dir, tmp_path):
    good = testdata_dir / "sphere360-erp-foa" / "0B7ds6NmVBQl_20.webm"
    stereo = _mp4(tmp_path / "stereo.mp4", 2)
    mute = _mp4(tmp_path / "mute.mp4", None)
    quad = _mp4(tmp_path / "quad.mp4", 4)  # 4-ch but not FOA (no marker, nothing declared)
    r = runner.invoke(app, ["probe", "--json", str(good), str(stereo), str(tmp_path / "nope.mp4"), str(mute), str(quad),
                            "--declare", "ambix"])
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert [x.get("reason") for x in out] == [None, "not_4_channels", "missing", "no_audio", None]
    assert out[0]["ok"] and out[0]["convention"] == "ambix"
    r = runner.invoke(app, ["probe", "--json", str(quad)])
    assert r.exit_code == 1 and json.loads(r.stdout)[0]["reason"] == "unknown_convention"
    r = runner.invoke(app, ["probe", str(good), "--declare", "ambix"])
    assert r.exit_code == 0 and "FOA ambix" in r.stdout


def test_segment_and_clean_cli(tmp_path):
    short = _mp4(tmp_path / "short.mp4", 4)
    r = runner.invoke(app, ["segment", "--json", str(short), "--window", "1.0"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["windows"][0]["clip_id"] == "short_0"
    r = runner.invoke(app, ["segment", "--json", str(short)])  # 1.5 s < 8 s window
    assert r.exit_code == 1 and json.loads(r.stdout)[0]["reason"] == "too_short"
    r = runner.invoke(app, ["clean", "--json", "--declare", "ambix", str(short), str(tmp_path / "missing.webm")])
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out[1]["reason"] == "missing"
    assert set(out[0]["filters"]) == {"silence", "speech", "static"}


def test_fetch_cli_empty_and_bad_sources(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    r = runner.invoke(app, ["fetch", "--json", str(empty), "--out", str(tmp_path / "dl")])
    assert r.exit_code == 1 and json.loads(r.stdout)[0]["reason"] == "empty_source_list"
    f = _mp4(tmp_path / "local.mp4", 4)
    lst = tmp_path / "l.txt"
    lst.write_text(f"{f}\n-x --exec\n")
    r = runner.invoke(app, ["fetch", "--json", str(lst), "--out", str(tmp_path / "dl")])
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert {x.get("reason") for x in out} == {"malformed_source", None}
    assert any(x["ok"] and x["path"] == str(f) for x in out)


def test_dash_named_file_is_a_path_not_an_option(tmp_path, monkeypatch):
    _mp4(tmp_path / "-dash.mp4", 4)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["probe", "--json", "--declare", "ambix", "--", "-dash.mp4"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["convention"] == "ambix"
