"""Faults a ViSAudio user meets, on real runs of the micro config: crafted, truncated, foreign or
diverged checkpoints, a truncated manifest, a read-only run folder, bad sampler settings, a config
file with a wrong type. Each must give one line naming the input and the fix, the documented exit
status (1 for an unusable input, 2 for an option out of range), never a traceback, never run code
from a checkpoint, and never lose a finished checkpoint or leave a broken output file."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._support.model import _write_mp4
from visaudio.checkpoint import (
    CKPT_NAME,
    PREV_CKPT_NAME,
    CheckpointUnreadable,
    UnsafeCheckpoint,
)
from visaudio.cli import app
from visaudio.train import train

torch.set_num_threads(1)
FAST = ["train.num_threads=1"]
REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Pickles as a call to ``exec`` that writes ``marker``: what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


def _cli(*args: str):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def _one_line_error(r, code: int, *needles: str) -> str:
    """The CLI failed cleanly: ``code``, no exception escaped (a traceback), one ``error:`` line
    holding every needle."""
    assert r.exception is None or isinstance(r.exception, SystemExit), f"traceback: {r.exception!r}\n{r.output}"
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1, r.stderr
    for n in needles:
        assert n in err[0], (n, err[0])
    assert "Traceback" not in r.output
    return err[0]


@pytest.fixture(scope="module")
def base_run(toy_manifest, tmp_path_factory) -> Path:
    """A micro run of 3 steps with a checkpoint every step: last.pt (step 3) and prev.pt (2)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    train(toy_manifest, "micro", run, max_steps=3, overrides=FAST + ["train.ckpt_every=1"], progress=False)
    return run


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    v = tmp_path_factory.mktemp("vid") / "in.mp4"
    rng = np.random.default_rng(0)
    _write_mp4(v, rng.integers(0, 255, (12, 24, 32, 3), dtype=np.uint8), 8.0)  # 1.5 s >= the 1-s window
    return v


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _losses(run: Path) -> dict[int, float]:
    with open(run / "train_log.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


# -- class 3: checkpoints must not execute code ------------------------------------------------------


def test_crafted_checkpoint_is_refused_and_its_payload_never_runs(run, video, toy_manifest, tmp_path):
    """A last.pt whose pickle calls ``exec`` (it writes a marker file when loaded with
    weights_only=False, as the trainer, `generate` and `eval` did): resume, generate and eval all
    refuse it with one line, and the marker is never written."""
    marker = tmp_path / "PAYLOAD_RAN"
    good = torch.load(run / "ckpt" / CKPT_NAME, weights_only=True)
    good["model"] = {"w": _Payload(marker)}
    torch.save(good, run / "ckpt" / CKPT_NAME)
    torch.save(good, run / "ckpt" / PREV_CKPT_NAME)  # a fallback must not load it either

    with pytest.raises(UnsafeCheckpoint, match="would call exec"):
        train(toy_manifest, "micro", run, max_steps=4, overrides=FAST, progress=False)
    assert not marker.exists()

    r = _cli("train", "--manifest", toy_manifest, "--run", run, "--config", "micro", "--max-steps", 4,
             "--set", "train.num_threads=1")
    _one_line_error(r, 1, str(run / "ckpt" / CKPT_NAME), "Nothing was executed")
    r = _cli("generate", video, "--ckpt", run, "--out", tmp_path / "o.mp4", "--steps", 1)
    _one_line_error(r, 1, "refused", "exec")
    r = _cli("generate", video, "--ckpt", run / "ckpt" / CKPT_NAME, "--out", tmp_path / "o.mp4", "--steps", 1)
    _one_line_error(r, 1, "refused")
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.flac").exists()
    r = _cli("eval", "--manifest", toy_manifest, "--report", tmp_path / "rep", "--ckpt", run,
             "--baselines", "reference", "--limit", 1, "--steps", 1, "--n-boot", 10, "--json")
    assert r.exit_code == 1 and "refused" in r.stderr and "Traceback" not in r.output, r.output
    assert not marker.exists(), "the checkpoint's payload ran"
    # the good run's files are untouched (nothing deleted or renamed)
    assert (run / "ckpt" / CKPT_NAME).is_file() and (run / "ckpt" / PREV_CKPT_NAME).is_file()


def test_new_checkpoints_are_weights_only_and_old_ones_still_resume_exactly(toy_manifest, tmp_path):
    """A checkpoint from this trainer loads with plain ``torch.load(weights_only=True)``; one in
    the earlier format (numpy's RNG state pickled as an ndarray) still resumes, bit for bit the
    same losses as an uninterrupted run."""
    ov = FAST + ["train.ckpt_every=1000", "data.augment=true", "train.warmup_steps=3"]
    a, b = tmp_path / "a", tmp_path / "b"
    train(toy_manifest, "micro", a, max_steps=8, overrides=ov, progress=False)
    train(toy_manifest, "micro", b, max_steps=4, overrides=ov, progress=False)
    p = b / "ckpt" / CKPT_NAME
    ck = torch.load(p, weights_only=True)  # no allow-list needed for the current format
    assert isinstance(ck["rng"]["numpy"]["keys"], torch.Tensor)
    # rewrite it as the earlier trainer did: numpy state tuple with an ndarray, python state tuple
    n = ck["rng"]["numpy"]
    ck["rng"]["numpy"] = (n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                          n["cached_gaussian"])
    torch.save(ck, p)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(p, weights_only=True)  # it really is the old, pickled-ndarray form
    s = train(toy_manifest, "micro", b, max_steps=8, overrides=ov, progress=False)
    assert s["start_step"] == 4 and s["steps"] == 8
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 9))
    assert max(abs(la[k] - lb[k]) for k in la) < 1e-6


# -- class 8: clean errors, more than one checkpoint ---------------------------------------------------


def test_truncated_last_checkpoint_falls_back_to_previous_and_says_so(run, toy_manifest, video, tmp_path):
    """last.pt cut to a third (a copy interrupted, a disk fault): generate uses prev.pt with a
    warning; training resumes from prev.pt (step 2), says so, keeps the damaged file aside, and
    gives exactly the losses of an uninterrupted run."""
    from visaudio.generate import Synthesizer

    _truncate(run / "ckpt" / CKPT_NAME)
    syn = Synthesizer.from_run(run)  # warns on stderr
    assert syn.config.name == "micro"
    r = _cli("train", "--manifest", toy_manifest, "--run", run, "--config", "micro", "--max-steps", 5,
             "--set", "train.num_threads=1", "--set", "train.ckpt_every=1")
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and CKPT_NAME in warn[0] and "step 2" in warn[0] and "unreadable" in warn[0], r.stderr
    assert (run / "ckpt" / (CKPT_NAME + ".unreadable")).is_file()
    straight = tmp_path / "straight"
    train(toy_manifest, "micro", straight, max_steps=5, overrides=FAST + ["train.ckpt_every=1"], progress=False)
    la, lb = _losses(straight), _losses(run)
    assert sorted(lb) == list(range(1, 6))
    assert max(abs(la[k] - lb[k]) for k in la) < 1e-6
    assert torch.load(run / "ckpt" / CKPT_NAME, weights_only=True)["step"] == 5
    assert torch.load(run / "ckpt" / PREV_CKPT_NAME, weights_only=True)["step"] == 4


def test_every_checkpoint_damaged_is_one_line(run, toy_manifest, video, tmp_path):
    for name in (CKPT_NAME, PREV_CKPT_NAME):
        _truncate(run / "ckpt" / name)
    r = _cli("train", "--manifest", toy_manifest, "--run", run, "--config", "micro", "--max-steps", 4)
    _one_line_error(r, 1, str(run / "ckpt" / CKPT_NAME), "truncated", "damaged too")
    r = _cli("generate", video, "--ckpt", run, "--out", tmp_path / "o.mp4", "--steps", 1)
    _one_line_error(r, 1, "truncated")
    (run / "ckpt" / PREV_CKPT_NAME).unlink(missing_ok=True)
    (run / "ckpt" / CKPT_NAME).write_bytes(b"")
    with pytest.raises(CheckpointUnreadable, match="no earlier checkpoint"):
        train(toy_manifest, "micro", run, max_steps=4, overrides=FAST, progress=False)
    # a file that is a valid torch file but no training checkpoint (e.g. a codec.pt)
    other = tmp_path / "codec.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, other)
    r = _cli("generate", video, "--ckpt", other, "--out", tmp_path / "o.mp4", "--steps", 1)
    _one_line_error(r, 1, "not a ViSAudio training checkpoint")


def test_checkpoint_from_another_config_is_one_line(run, toy_manifest, video, tmp_path):
    r = _cli("train", "--manifest", toy_manifest, "--run", run, "--config", "micro", "--max-steps", 4,
             "--set", "model.hidden=32")
    _one_line_error(r, 1, "model.hidden")
    assert torch.load(run / "ckpt" / CKPT_NAME, weights_only=True)["step"] == 3  # nothing overwritten


def test_truncated_manifest_is_one_line(toy_manifest, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(toy_manifest, m, ignore=shutil.ignore_patterns(".cache"))
    _truncate(m / "manifest.parquet")
    r = _cli("train", "--manifest", m, "--run", tmp_path / "r", "--config", "micro", "--max-steps", 1)
    _one_line_error(r, 1, str(m / "manifest.parquet"), "truncated", "biaudio build")


def test_config_file_with_wrong_type_or_bad_yaml_is_one_line(toy_manifest, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "visaudio" / "configs" / "micro.yaml").read_text().replace("lr: 2.0e-3", "lr: fast"))
    r = _cli("train", "--manifest", toy_manifest, "--run", tmp_path / "r", "--config", bad)
    _one_line_error(r, 1, str(bad), "train.lr")
    bad.write_text("train: [\n")
    r = _cli("train", "--manifest", toy_manifest, "--run", tmp_path / "r", "--config", bad)
    _one_line_error(r, 1, str(bad), "not valid YAML")
    r = _cli("train", "--manifest", toy_manifest, "--run", tmp_path / "r", "--config", "micro",
             "--set", "train.batch_size=[1")
    _one_line_error(r, 1, "train.batch_size")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.pt"))


def test_read_only_run_folder_is_one_line_before_any_work(toy_manifest, tmp_path):
    """Runs the real CLI in a process that cannot override file permissions (root drops
    CAP_DAC_OVERRIDE through setpriv), so a mode-555 run folder really is read-only."""
    run = tmp_path / "ro"
    run.mkdir()
    run.chmod(0o555)
    cmd = [sys.executable, "-m", "visaudio.cli", "train", "--manifest", str(toy_manifest), "--run", str(run),
           "--config", "micro", "--max-steps", "1"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only for this process")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        run.chmod(0o755)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and str(run) in err[0] and "not writable" in err[0] and "--run" in err[0], r.stderr
    assert list(run.iterdir()) == []


def test_generate_refuses_nan_cfg_and_zero_steps_and_writes_nothing(run, video, tmp_path):
    """--cfg nan made every sample NaN and left a broken .flac; --steps 0 wrote the prior noise
    with exit 0. Both are usage errors now (exit 2), and no file is written."""
    out = tmp_path / "o.mp4"
    for args, needle in ((["--cfg", "nan"], "--cfg"), (["--cfg", "inf"], "--cfg"), (["--steps", "0"], "--steps"),
                         (["--side-noise", "2"], "--side-noise")):
        r = _cli("generate", video, "--ckpt", run, "--out", out, *args)
        files = sorted(p.name for p in tmp_path.iterdir() if p.name != "run")
        assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.output, (args, r.exit_code, files,
                                                                                         r.output[-300:])
        assert files == [], files
    from visaudio.generate import GenerationError, Synthesizer, generate_to_files

    with pytest.raises(GenerationError, match="steps"):
        generate_to_files(video, run, out, steps=0)
    with pytest.raises(GenerationError, match="finite"):
        generate_to_files(video, run, out, steps=1, cfg=float("nan"))
    with pytest.raises(GenerationError, match="side_noise"):
        generate_to_files(video, run, out, steps=1, side_noise=1.5)
    syn = Synthesizer.from_run(run)
    with pytest.raises(GenerationError):
        syn.generate_frames(np.zeros((8, 24, 32, 3), np.uint8), fps=8.0, steps=0)
    assert list(tmp_path.glob("*.flac")) == [] and list(tmp_path.glob(".*")) == []
    # a good call still works and leaves exactly the two outputs (no temporary files)
    r = _cli("generate", video, "--ckpt", run, "--out", out, "--steps", "1", "--cfg", "1.0")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == ["o.flac", "o.mp4"]


def test_diverged_checkpoint_writes_no_audio(run, video, tmp_path):
    """A checkpoint whose EMA weights are NaN (a run that diverged before the NaN check) makes
    non-finite audio: refused with one line, no .flac or .mp4 left behind."""
    p = run / "ckpt" / CKPT_NAME
    ck = torch.load(p, weights_only=True)
    for k, v in ck["ema"].items():
        if v.is_floating_point() and "latent" not in k:
            v.fill_(float("nan"))
    torch.save(ck, p)
    out = tmp_path / "o.mp4"
    r = _cli("generate", video, "--ckpt", run, "--out", out, "--steps", "1")
    _one_line_error(r, 1, "non-finite", "Nothing was written")
    assert not out.exists() and not out.with_suffix(".flac").exists()


def test_generation_only_export_generates_but_does_not_resume(run, toy_manifest, video, tmp_path):
    """A slim export (EMA weights, no optimizer state, as benchmarks/gpu_train_demo.py writes)
    still generates; resuming training from it is one line saying why, and the file is kept."""
    p = run / "ckpt" / CKPT_NAME
    ck = torch.load(p, weights_only=True)
    torch.save({k: ck[k] for k in ("step", "config", "arch_hash", "ema", "latent_mean", "latent_std")}, p)
    (run / "ckpt" / PREV_CKPT_NAME).unlink(missing_ok=True)
    r = _cli("generate", video, "--ckpt", run, "--out", tmp_path / "o.mp4", "--steps", "1")
    assert r.exit_code == 0, r.output
    r = _cli("train", "--manifest", toy_manifest, "--run", run, "--config", "micro", "--max-steps", 4)
    _one_line_error(r, 1, "generation only", "--run")
    assert p.is_file()
