"""Shot detection on synthetic videos with hard cuts at known frames; windows never cross a cut."""

from __future__ import annotations

import subprocess

import pytest

from biaudio.segment import SegmentConfig, Window, find_cuts, windows

FPS = 25
SEGMENTS = [("testsrc2=s=256x128", 40), ("smptebars=s=256x128", 35), ("mandelbrot=s=256x128:end_scale=0.01", 50), ("rgbtestsrc=s=256x128", 30)]


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuts")
    args, pre, labels = [], "", ""
    for k, (src, n) in enumerate(SEGMENTS):
        args += ["-f", "lavfi", "-i", f"{src}:r={FPS}"]
        pre += f"[{k}:v]trim=end_frame={n},setpts=PTS-STARTPTS,format=yuv420p,setsar=1[v{k}];"
        labels += f"[v{k}]"
    out = d / "cuts.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, "-filter_complex",
                    f"{pre}{labels}concat=n={len(SEGMENTS)}:v=1:a=0,format=yuv420p[v]", "-map", "[v]",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "250", str(out)], check=True, timeout=60)
    truth, acc = [], 0
    for _, n in SEGMENTS[:-1]:
        acc += n
        truth.append(acc)
    return out, truth, acc + SEGMENTS[-1][1]


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_cuts_found_and_windows_inside_shots(cut_video, detector):
    path, truth, n = cut_video
    cfg = SegmentConfig(detector=detector, window_s=1.0, stride_s=0.5, trim_frames=2, min_scene_s=0.6)
    cuts = find_cuts(path, cfg)
    assert len(cuts) == len(truth), cuts
    for c, t in zip(cuts, truth, strict=False):
        assert abs(c - t) <= 2, (cuts, truth)
    ws = windows(n / FPS, FPS, cuts, cfg)
    assert ws
    for w in ws:
        assert w.end_s - w.start_s == pytest.approx(1.0)
        for t in truth:  # true cut time never inside a window (trimmed margin included)
            assert not (w.start_s < t / FPS < w.end_s), (w, t)
    assert sorted({w.shot_index for w in ws}) == [0, 1, 2, 3]


def test_window_rules():
    cfg = SegmentConfig()  # 8 s windows
    assert windows(7.9, 30, [], cfg) == []  # shorter than a window: too_short upstream
    assert windows(10.0, 30, [], cfg) == [Window(0.0, 8.0, 0)]
    ws = windows(40.0, 30, [300], SegmentConfig(stride_s=2.0, trim_frames=3))
    assert ws[0].start_s == 0.0 and ws[0].end_s <= (300 - 3) / 30
    assert min(w.start_s for w in ws if w.shot_index == 1) == pytest.approx(303 / 30)
    assert len(windows(100.0, 25, [], SegmentConfig(stride_s=1.0, max_windows=5))) == 5
    assert ws[1].clip_id("abc_5") == f"abc_5_{round(ws[1].start_s * 1000)}"


# ---- flashes are not cuts (fireworks, lightning, strobes, exposure jumps)

FLASH_FPS = 25
FLASH_TRUTH = [150, 300]  # the hard cuts
FLASHES = [(30, 1), (60, 2), (90, 3), (120, 5), (200, 4), (230, 1), (240, 1)]  # whole-frame, 1-5 frames, repeated
BURSTS = [(170, 40, 90.0), (320, 30, 250.0), (360, 25, 10.0)]  # fireworks: local glow blooming ~1-1.6 s


@pytest.fixture(scope="module")
def flash_video(tmp_path_factory):
    from biaudio.synth import FlashScene

    d = tmp_path_factory.mktemp("flash")
    return FlashScene(n_frames=440, fps=FLASH_FPS, cuts=FLASH_TRUTH, flashes=FLASHES, bursts=BURSTS).write(d / "flash.mp4")


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_flashes_and_bursts_are_not_cuts(flash_video, detector):
    cuts = find_cuts(flash_video, SegmentConfig(detector=detector))
    assert len(cuts) == len(FLASH_TRUTH), cuts
    for c, t in zip(cuts, FLASH_TRUTH, strict=True):
        assert abs(c - t) <= 2, (cuts, FLASH_TRUTH)


def test_without_the_flash_check_flashes_cut(flash_video):
    """The scene is hard enough: PySceneDetect alone cuts at flashes and bursts (the old behaviour)."""
    cuts = find_cuts(flash_video, SegmentConfig(flash_frames=0))
    light = [s for s, *_ in FLASHES + BURSTS]
    fired = [c for c in cuts if any(0 <= c - s <= 5 for s in light)]
    assert len(fired) >= 6, cuts
    assert all(any(abs(c - t) <= 2 for t in FLASH_TRUTH) for c in set(cuts) - set(fired))


def test_fireworks_clip_keeps_its_window(tmp_path):
    """10 s of fireworks with three bursts: too_short before the flash check, one 8-s window after."""
    from biaudio.synth import FlashScene

    fps = 30
    path = FlashScene(n_frames=300, fps=fps, bursts=[(75, 40, 80.0), (165, 30, 200.0), (240, 45, 320.0)],
                      flashes=[(120, 2)], seed=3).write(tmp_path / "fireworks.mp4")
    before = SegmentConfig(flash_frames=0)
    cuts = find_cuts(path, before)
    assert len(cuts) >= 2 and windows(300 / fps, fps, cuts, before) == []
    cuts = find_cuts(path, SegmentConfig())
    assert cuts == [] and windows(300 / fps, fps, cuts, SegmentConfig()) == [Window(0.0, 8.0, 0)]


def test_cut_right_after_a_flash_is_kept(tmp_path):
    """A vetoed flash must not hide a real cut inside PySceneDetect's minimum scene length."""
    from biaudio.synth import FlashScene

    path = FlashScene(n_frames=120, cuts=[50], flashes=[(40, 2)], seed=5).write(tmp_path / "f.mp4")
    cuts = find_cuts(path, SegmentConfig())
    assert len(cuts) == 1 and abs(cuts[0] - 50) <= 2, cuts
    assert find_cuts(path, SegmentConfig(flash_frames=0)) == [40]  # the flash hid the cut before


@pytest.mark.parametrize("pan", [1.0, 2.0])
def test_flashes_while_the_camera_pans(tmp_path, pan):
    """A yaw pan of up to 2 degrees per frame and sensor noise: flashes and a burst still no cut."""
    from biaudio.synth import FlashScene

    path = FlashScene(n_frames=300, cuts=[150], flashes=[(40, 2), (100, 4), (200, 1), (250, 5)], bursts=[(170, 30, 45.0)],
                      pan_deg_per_frame=pan, noise=3.0, seed=12).write(tmp_path / "pan.mp4")
    assert len(find_cuts(path, SegmentConfig(flash_frames=0))) >= 5
    cuts = find_cuts(path, SegmentConfig())
    assert len(cuts) == 1 and abs(cuts[0] - 150) <= 2, cuts


@pytest.mark.parametrize("seed", [100, 101, 102])
def test_cut_to_a_brighter_or_darker_shot_is_kept(tmp_path, seed):
    """A real cut that also brightens (x2) or darkens (x0.45) the whole picture changes the
    structure: the one-sided-light test must not take it for a flash."""
    from biaudio.synth import FlashScene

    for gain in (2.0, 0.45):
        path = FlashScene(n_frames=200, cuts=[100], exposure=[(100, gain)], seed=seed,
                          pan_deg_per_frame=0.75 * (seed % 3)).write(tmp_path / f"b{gain}.mp4")
        assert find_cuts(path, SegmentConfig()) == find_cuts(path, SegmentConfig(flash_frames=0)) == [100]


@pytest.mark.parametrize("frames", [1, 2, 4, 12])
def test_dissolve_is_not_detected(tmp_path, frames):
    """Measured on this scene (whole change: content score 39): the largest frame-to-frame score
    of a dissolve is 28.0 for one blended frame, 21.2 for 2, 13.6 for 4 and 7.7 for 12 frames,
    against a threshold of 27. So only a one-frame blend cuts (at its frame), with or without the
    flash check: the check changes nothing on dissolves, and a window may span a longer one."""
    from biaudio.synth import FlashScene

    path = FlashScene(n_frames=120, dissolve=(50, frames), seed=7).write(tmp_path / "d.mp4")
    for det in ("content", "adaptive"):
        cuts = find_cuts(path, SegmentConfig(detector=det))
        assert cuts == find_cuts(path, SegmentConfig(detector=det, flash_frames=0))
        assert cuts == ([50] if frames == 1 else []), (det, cuts)


def test_flash_keys_in_recipes():
    """The recipes set the flash check; a bad value stops the build naming the dotted key."""
    from biaudio.errors import RecipeError
    from biaudio.recipe import load_recipe

    for name in ("demo", "biaudio"):
        assert load_recipe(name).segment.flash_frames == 5
    assert load_recipe("demo", ["segment.flash_frames=0"]).segment.flash_frames == 0
    for bad in ("segment.flash_frames=-1", "segment.flash_structure=1.5"):
        with pytest.raises(RecipeError, match=bad.split("=")[0]):
            load_recipe("demo", [bad])


def test_flash_check_off_keeps_the_old_recipe_hash():
    """Off, the check changes no data, so its keys stay out of the hash (an old build resumes);
    on, they are in it."""
    from biaudio.recipe import load_recipe, recipe_hash

    off = load_recipe("demo", ["segment.flash_frames=0"])
    assert recipe_hash(off) == recipe_hash(load_recipe("demo", ["segment.flash_frames=0", "segment.flash_structure=0.9"]))
    data = off.dump()
    assert data["segment"]["flash_frames"] == 0  # the written recipe still says so (a reload keeps it off)
    on = load_recipe("demo")
    assert recipe_hash(on) != recipe_hash(off)
    assert recipe_hash(on) != recipe_hash(load_recipe("demo", ["segment.flash_structure=0.9"]))


def test_ingest_keeps_the_fireworks_window(tmp_path):
    """Through the build's analysis (one ffmpeg decode feeding the proxy to the detector): a 10-s
    360° fireworks source with FOA is too_short without the flash check and keeps its window with it."""
    import numpy as np

    from biaudio.clean.speech import SpeechConfig
    from biaudio.ingest.analysis import analyze_file
    from biaudio.media.video import mux_foa
    from biaudio.synth import FlashScene

    fps, sr = 30, 48000
    video = FlashScene(n_frames=300, fps=fps, size=(640, 320), bursts=[(75, 40, 80.0), (165, 30, 200.0), (240, 45, 320.0)],
                       seed=3).write(tmp_path / "v.mp4")
    rng = np.random.default_rng(0)
    foa = (0.1 * rng.standard_normal((4, 10 * sr))).astype(np.float32)
    src = mux_foa(video, foa, sr, tmp_path / "fireworks.mp4")
    kw = dict(speech_cfg=SpeechConfig(enabled=False), keep_foa=False)
    old = analyze_file(src, segment_cfg=SegmentConfig(flash_frames=0), **kw)
    assert old.reject is not None and old.reject.reason == "too_short" and len(old.cuts) >= 2, (old.reject, old.cuts)
    new = analyze_file(src, segment_cfg=SegmentConfig(), **kw)
    assert new.reject is None and new.cuts == [] and [(w.start_s, w.end_s) for w in new.windows] == [(0.0, 8.0)]
