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
    cuts = find_cuts(flash_video, SegmentConfig(flash_frames=0, dissolve_frames=0))
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
    before = SegmentConfig(flash_frames=0, dissolve_frames=0)
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
    assert find_cuts(path, SegmentConfig(flash_frames=0, dissolve_frames=0)) == [40]  # the flash hid the cut before


@pytest.mark.parametrize("pan", [1.0, 2.0])
def test_flashes_while_the_camera_pans(tmp_path, pan):
    """A yaw pan of up to 2 degrees per frame and sensor noise: flashes and a burst still no cut."""
    from biaudio.synth import FlashScene

    path = FlashScene(n_frames=300, cuts=[150], flashes=[(40, 2), (100, 4), (200, 1), (250, 5)], bursts=[(170, 30, 45.0)],
                      pan_deg_per_frame=pan, noise=3.0, seed=12).write(tmp_path / "pan.mp4")
    assert len(find_cuts(path, SegmentConfig(flash_frames=0, dissolve_frames=0))) >= 5
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
        assert find_cuts(path, SegmentConfig()) == find_cuts(path, SegmentConfig(flash_frames=0, dissolve_frames=0)) == [100]


# ---- dissolves are shot changes (gradual transitions that frame-to-frame scores miss)


@pytest.mark.parametrize("frames", [1, 2, 4, 12, 24, 48])
def test_dissolve_is_one_cut_inside_the_transition(tmp_path, frames):
    """Measured on this scene (whole change: content score 39): the largest frame-to-frame score of
    a dissolve is 28.0 for one blended frame, 21.2 for 2, 13.6 for 4 and 7.7 for 12 frames against a
    threshold of 27, so without the dissolve check only a one-frame blend cuts. With it every
    dissolve is one cut, mid-transition (the first frame that is more the new shot than the old)."""
    from biaudio.synth import FlashScene

    first = 50
    path = FlashScene(n_frames=first + frames + 60, dissolve=(first, frames), seed=7).write(tmp_path / "d.mp4")
    cuts = find_cuts(path, SegmentConfig())
    assert len(cuts) == 1, cuts
    assert first <= cuts[0] <= first + max(1, frames - 1), cuts  # inside the blended frames
    assert abs(cuts[0] - (first + frames / 2)) <= max(1.0, frames / 8), cuts  # near the middle
    assert find_cuts(path, SegmentConfig(dissolve_frames=0)) == ([first] if frames == 1 else [])  # before


def test_dissolve_with_pan_flashes_and_bursts(tmp_path):
    """A 24-frame dissolve while the camera pans 1 degree per frame, with sensor noise, flashes,
    a burst on each side and a hard cut: two cuts (the dissolve's middle and the hard cut), with
    the content and the adaptive detector."""
    from biaudio.synth import FlashScene

    path = FlashScene(n_frames=300, dissolve=(100, 24), cuts=[220], flashes=[(40, 3), (180, 2)],
                      bursts=[(60, 30, 45.0), (150, 25, 200.0)], pan_deg_per_frame=1.0, noise=2.0,
                      seed=21).write(tmp_path / "pd.mp4")
    for det in ("content", "adaptive"):
        cuts = find_cuts(path, SegmentConfig(detector=det))
        assert len(cuts) == 2 and abs(cuts[0] - 112) <= 3 and abs(cuts[1] - 220) <= 2, (det, cuts)


def test_exposure_drift_is_not_a_dissolve(tmp_path):
    """An auto-exposure drift (x1.8 over 30 frames, then x0.5 over 35) is a blend of its end frames
    too; the structure test keeps it from being a cut."""
    from biaudio.synth import FlashScene

    drift = [(60 + j, 1.02) for j in range(30)] + [(150 + j, 0.98) for j in range(35)]
    path = FlashScene(n_frames=240, exposure=drift, pan_deg_per_frame=0.5, seed=9).write(tmp_path / "e.mp4")
    assert find_cuts(path, SegmentConfig()) == []


def test_water_and_moving_figures_are_not_dissolves(tmp_path):
    """Rippling water over half the detector's band, three figures crossing and a slow pan: frames
    2 s apart differ by up to 30 (above the threshold) with new structure in most tiles (measured:
    18 span pairs pass both), but the frames between are no blend of them, so no cut."""
    from biaudio.synth import BusyScene

    path = BusyScene(n_frames=300, water=0.25, movers=[(0, -5.0, 1.5), (40, 5.0, -3.0), (100, 0.0, 6.0)],
                     pan_deg_per_frame=0.5, noise=2.0, seed=4).write(tmp_path / "w.mp4")
    assert find_cuts(path, SegmentConfig()) == []


def test_real_clips_keep_their_cuts_and_dissolves_between_them_cut(testdata_dir):
    """The five real Sphere360 clips: the dissolve check adds no cut (one decode feeds both
    detectors); the waterfall clip keeps its cut at 256 (on the I420 frames ingest decodes; the RGB
    proxy of ``find_cuts`` also cuts at 128, with or without the check). Then real footage dissolving
    into the next clip over 12 and 60 frames (a linear blend of the decoded proxies, both clips'
    own motion going on): one cut near the middle, where PySceneDetect alone finds none (measured
    over all 20 ordered pairs and 4, 12, 30, 60 frames: 80 of 80 found, at most 4 frames off)."""
    import cv2
    import numpy as np

    from biaudio.media import iter_frames, probe

    clips = sorted((testdata_dir / "sphere360-erp-foa").glob("*.webm"))
    if not clips:
        pytest.skip("no Sphere360 clips in the test data")
    on = SegmentConfig()
    off = SegmentConfig(dissolve_frames=0)
    assert on.dissolve_frames >= 60
    proxies = []
    for clip in clips:
        info = probe(clip)
        frames = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_YUV2BGR_I420)
                  for f in iter_frames(clip, size=on.proxy_dims(), info=info, band=on.proxy_band, pix_fmt="yuv420p")]
        before, after = (_cuts(frames, info.fps, cfg) for cfg in (off, on))
        assert after == before, (clip.name, before, after)
        if clip.stem == "0B7ds6NmVBQl_20":
            assert 256 in after
        else:
            proxies.append(frames[:230])
    start = 100
    for k, (a, b) in enumerate(zip(proxies, proxies[1:] + proxies[:1], strict=True)):
        n = (12, 60)[k % 2]
        mix = [*a[:start]]
        for i in range(start, start + n):
            w = (i - start + 1) / (n + 1)
            mix.append(((1 - w) * a[i].astype(np.float32) + w * b[i].astype(np.float32)).round().astype(np.uint8))
        mix += b[start + n:]
        assert _cuts(mix, 30.0, off) == []
        cuts = _cuts(mix, 30.0, on)
        assert len(cuts) == 1 and abs(cuts[0] - (start + n / 2)) <= max(1.0, n / 8), (k, n, cuts)


def _cuts(frames, fps, cfg):
    from biaudio.segment import CutDetector

    det = CutDetector(fps, cfg)
    for f in frames:
        det.add_bgr(f)
    return det.cuts()


def test_flash_keys_in_recipes():
    """The recipes set the flash check; a bad value stops the build naming the dotted key."""
    from biaudio.errors import RecipeError
    from biaudio.recipe import load_recipe

    for name in ("demo", "biaudio"):
        assert load_recipe(name).segment.flash_frames == 5
        assert load_recipe(name).segment.dissolve_frames == 60
    assert load_recipe("demo", ["segment.flash_frames=0"]).segment.flash_frames == 0
    assert load_recipe("demo", ["segment.dissolve_frames=0"]).segment.dissolve_frames == 0
    for bad in ("segment.flash_frames=-1", "segment.flash_structure=1.5", "segment.dissolve_frames=-2",
                "segment.dissolve_frames=1000"):
        with pytest.raises(RecipeError, match=bad.split("=")[0]):
            load_recipe("demo", [bad])


def test_checks_off_keep_the_old_recipe_hash():
    """Off, the flash and dissolve checks change no data, so their keys stay out of the hash (an old
    build resumes); on, they are in it."""
    from biaudio.recipe import load_recipe, recipe_hash

    both = ["segment.flash_frames=0", "segment.dissolve_frames=0"]
    off = load_recipe("demo", both)
    assert recipe_hash(off) == recipe_hash(load_recipe("demo", [*both, "segment.flash_structure=0.9"]))
    data = off.dump()
    assert data["segment"]["flash_frames"] == 0  # the written recipe still says so (a reload keeps it off)
    assert data["segment"]["dissolve_frames"] == 0
    on = load_recipe("demo")
    assert recipe_hash(on) != recipe_hash(off)
    assert recipe_hash(on) != recipe_hash(load_recipe("demo", ["segment.flash_structure=0.9"]))
    flash_only = load_recipe("demo", ["segment.dissolve_frames=0"])
    assert recipe_hash(flash_only) not in (recipe_hash(on), recipe_hash(off))
    # the dissolve check reads flash_structure, so it stays in the hash when only the flash check is off
    dissolve_only = load_recipe("demo", ["segment.flash_frames=0"])
    assert recipe_hash(dissolve_only) != recipe_hash(load_recipe("demo", ["segment.flash_frames=0", "segment.flash_structure=0.9"]))


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
    old = analyze_file(src, segment_cfg=SegmentConfig(flash_frames=0, dissolve_frames=0), **kw)
    assert old.reject is not None and old.reject.reason == "too_short" and len(old.cuts) >= 2, (old.reject, old.cuts)
    new = analyze_file(src, segment_cfg=SegmentConfig(), **kw)
    assert new.reject is None and new.cuts == [] and [(w.start_s, w.end_s) for w in new.windows] == [(0.0, 8.0)]
