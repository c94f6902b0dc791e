"""Build helpers shared by several test folders: the engine stand-in's media and the demo build.

The session fixture ``demo_build`` (tests/conftest.py) calls :func:`run_demo_build` once.
"""

from __future__ import annotations

from pathlib import Path


def make_standin_template(root: Path) -> Path:
    """``root/tmpl`` with the engine stand-in's template media, all real files made by ffmpeg: a
    1-s H.264 + AAC mp4, a 1-s stereo flac and a jpg (the stand-in copies them as an item's clips)."""
    import subprocess

    tmpl = root / "tmpl"
    tmpl.mkdir(parents=True, exist_ok=True)
    ff = ["ffmpeg", "-v", "error", "-y"]
    subprocess.run([*ff, "-f", "lavfi", "-i", "testsrc=size=64x36:rate=10", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=16000", "-t", "1", "-ac", "2", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(tmpl / "t.mp4")], check=True)
    subprocess.run([*ff, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "1", "-ac", "2",
                    str(tmpl / "t.flac")], check=True)
    subprocess.run([*ff, "-f", "lavfi", "-i", "testsrc=size=64x32", "-frames:v", "1", str(tmpl / "t.jpg")], check=True)
    return tmpl


def make_standin_media(root: Path, n_sources: int) -> dict[str, Path]:
    """The stand-in's template (``make_standin_template``) plus ``n_sources`` copies of its mp4 as
    source files ``src/s<i>.mp4``."""
    tmpl, src = make_standin_template(root), root / "src"
    src.mkdir()
    for i in range(n_sources):
        (src / f"s{i}.mp4").write_bytes((tmpl / "t.mp4").read_bytes())
    return {"root": root, "tmpl": tmpl, "src": src}


def run_demo_build(out_dir: Path, overrides: tuple[str, ...] = ()) -> Path:
    """Build the demo recipe into ``out_dir`` in-process (engine + real stages); raise on failure."""
    from biaudio.engine.run import build
    from biaudio.recipe import load_recipe

    recipe = load_recipe("demo", overrides)
    summary = build(recipe, out_dir)
    if summary.exit_code != 0:
        raise RuntimeError(f"demo build failed: {summary.to_dict()}")
    return Path(out_dir)

