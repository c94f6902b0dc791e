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
