"""The stage chain for one source item: fetch -> validate/clean/segment -> per window: direction,
trajectory, binaural, spatial-cue filter, video render, caption -> manifest rows.

Why this shape: the engine (``biaudio.engine.run``) runs ``process_item`` in worker processes
or Ray tasks and treats its :class:`ItemResult` as the item's complete outcome. So every
item-level failure becomes a reject dict here (with the stage that failed and a reason slug), a
rejected clip leaves no files (rejected windows are cleaned up), and only bugs escape as
exceptions. The front half (probe, validate, silence/speech/static filters, shot segmentation) is
``biaudio.ingest.analysis.FileAnalyzer``: one ffmpeg decode feeds the static filter, the shot detector and
the audio filters, and its audio comes back as ambiX FOA at the source rate, so the FOA is decoded
once per source and only resampled here when the recipe's render rate differs. The filters judge
each window (clip): a window that fails one becomes a reject row with its clip id, and its
silence / static / speech ratios are the clip's own. Per window the binaural audio and the spatial-cue
filter come before the video, so a clip without spatial cue never pays for a video render.

The video is decoded once per source (``execution.single_decode``, default): :func:`_analyze` runs
the analyzer's steps in order, reading top-down: the audio pass, then this module plans the windows a
cut-free video would have (their audio side and a render, :class:`_Speculation`), then the video pass
with those renders riding along, then the verdicts. Only windows that a cut moved render with a
decode of their own. Same files either way.

Rows are manifest v2 rows without ``group_id``, ``split``, ``schema_version``, ``recipe_hash`` and
``tool_versions`` (the engine adds those). Times in ``trajectory`` and ``window_directions`` are
seconds from the clip start; ``start_s``/``end_s`` are times in the source *video*: the windows
are found in the item's media, and a sectioned download (or a Sphere360-named clip file with
``timeline.offset_from_name``) starts ``section_start_s`` into the video, so the row adds it.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biaudio.engine.types import ItemResult, WorkItem, reject_from_error, reject_row, source_field
from biaudio.errors import BiaudioError
from biaudio.manifest import ClipRow
from biaudio.stages.render import (
    clip_paths,
    output_fps,
    remove_clip_files,
    render_binaural_along,
    render_clip,
)
from biaudio.stages.spatial_cue import FORMULA
from biaudio.stages.spatial_cue import check as spatial_cue_check
from biaudio.stages.trajectory import make_trajectory


class _Timer:
    """Accumulates seconds per stage into ``ItemResult.stats``."""

    def __init__(self, stats: dict[str, float]):
        self.stats = stats

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stats[stage] = self.stats.get(stage, 0.0) + time.perf_counter() - t0


def _threads(recipe: Any) -> int:
    """ffmpeg decoder/encoder threads per worker: ``execution.threads_per_worker`` (default 1).

    Why 1: parallelism comes from workers, one per core; a multi-threaded VP9/H.264 decoder spends
    ~10 % more CPU on the same frames (0.71 vs 0.64 s for a 10-s 1080p clip), which N busy workers
    pay for with throughput."""
    execution = getattr(recipe, "execution", None)
    return int(getattr(execution, "threads_per_worker", 1) or 1)


def _at_render_rate(foa: np.ndarray, sr_src: int, sr: int, timer: _Timer) -> np.ndarray:
    """The FOA at the render rate (resampled only when the source rate differs)."""
    if sr_src == sr:
        return foa
    from biaudio.media.audio import resample_audio

    with timer("audio_resample"):
        return resample_audio(foa, sr_src, sr)


class _Speculation:
    """The clips rendered inside the source's analysis decode (``execution.single_decode``).

    Why: decoding the video twice (once for the analysis, once per window for the render) was a
    fifth of a clip's CPU. :func:`_analyze` has the analysis decode the audio first and calls
    :meth:`plan` with the windows a video without cuts would have; each gets its audio side (direction, trajectory,
    binaural, spatial cue) and, if it passes, a :class:`ClipRender` that rides along in the video
    pass. Afterwards the windows the analysis really kept take their render from here when one was
    made for exactly that window (:meth:`rendered`); any other window (after a cut, or a render
    that failed) renders with its own decode as before, and :meth:`abort_all` deletes the renders
    of windows the analysis dropped (a cut, a static or speech reject). The frames, hence the
    files, are the same either way (tested).
    """

    def __init__(self, recipe: Any, path: Path, source_id: str, out_dir: Path, sr: int, timer: _Timer,
                 log: logging.Logger) -> None:
        self.recipe, self.path, self.source_id, self.out_dir = recipe, path, source_id, out_dir
        self.sr, self.timer, self.log = sr, timer, log
        self.foa: np.ndarray | None = None  # the FOA at the render rate, once planned
        self.preps: dict[tuple[float, float], _Prepared | BiaudioError] = {}
        self.jobs: dict[tuple[float, float], Any] = {}
        self._all: list[Any] = []
        self.plan_s = 0.0

    @staticmethod
    def _key(w) -> tuple[float, float]:
        return (round(float(w.start_s), 6), round(float(w.end_s), 6))

    def plan(self, info: Any, foa: np.ndarray, sr_src: int, planned: list) -> list:
        """Audio side of each planned window; a render branch for those that pass the spatial cue."""
        from biaudio.stages.render import ClipRender

        t0 = time.perf_counter()
        try:
            self.foa = foa = _at_render_rate(foa, int(sr_src), self.sr, self.timer)
            branches = []
            for w in planned:
                key, clip_id = self._key(w), w.clip_id(self.source_id)
                try:
                    prep = _prepare_window(w, clip_id, self.path, info, foa, self.sr, self.recipe, self.timer)
                    self.preps[key] = prep
                    job = ClipRender(self.path, w.start_s, float(w.end_s - w.start_s), None, self.sr, prep.traj,
                                     self.recipe.render, self.out_dir, clip_id, info, binaural=prep.binaural,
                                     directions=(prep.d.azimuth_deg, prep.d.elevation_deg), clip_dir=prep.clip_dir,
                                     threads=_threads(self.recipe))
                except BiaudioError as e:
                    self.preps.setdefault(key, e)  # the window's reject, if the analysis keeps it
                    continue
                if job.can_branch:
                    self.jobs[key] = job
                    self._all.append(job)
                    branches.append(job.branch())
            return branches
        finally:
            self.plan_s += time.perf_counter() - t0

    def prepared(self, w) -> _Prepared | None:
        """The window's audio side if planned (raising its reject), else None."""
        p = self.preps.get(self._key(w))
        if isinstance(p, BiaudioError):
            raise p
        return p

    def rendered(self, w, clip_id: str):
        """The finished speculative render of exactly this window, or None (render it anew)."""
        job = self.jobs.pop(self._key(w), None)
        if job is None:
            return None
        try:
            with self.timer("render"):
                return job.finish(job.snapshot)
        except BiaudioError as e:
            self.log.info("clip %s: render inside the analysis decode failed (%s); rendering it alone", clip_id, e)
            job.abort()
            return None
        except BaseException:
            job.abort()
            raise

    def render_s(self) -> float:
        return sum(j.render_s for j in self._all)

    def abort_all(self) -> None:
        while self.jobs:
            self.jobs.popitem()[1].abort()


def _analyze(path: Path, source_id: str, section: tuple | None, recipe: Any, spec: _Speculation):
    """The front half (probe, validate, filters, shots, windows) through ``FileAnalyzer``, step by step.

    With ``execution.single_decode`` (the default) the audio is decoded first, this build plans
    the renders of the windows a video without cuts would have (``spec.plan``), and those renders
    ride along in the one video pass; otherwise one pass decodes everything and every clip renders
    with its own decode. Returns the ``FileAnalysis`` (its ``reject`` set when the file was dropped).
    """
    from biaudio.ingest.analysis import FileAnalyzer

    an = FileAnalyzer(path, source_id=source_id, validate_cfg=recipe.validate_, silence_cfg=recipe.clean.silence,
                      static_cfg=recipe.clean.static, speech_cfg=recipe.clean.speech, segment_cfg=recipe.segment,
                      section=section, threads=_threads(recipe),
                      two_pass=recipe.execution.single_decode)
    if not an.open():
        return an.res
    if not an.two_pass:
        return an.judge() if an.decode() else an.res
    if not an.decode_audio():
        return an.res
    try:
        todo = an.to_plan()
        branches = spec.plan(todo.info, todo.foa, todo.sr, todo.windows) if todo is not None else []
    except BiaudioError as e:  # the file's reject, as a failure inside the decode would be
        an.fail(e, e.stage or "decode")
        return an.res
    return an.judge() if an.decode_video(branches) else an.res


def _as_source_item(source: Any, item_id: str):
    from biaudio.ingest.sources import SourceItem

    if isinstance(source, SourceItem):
        return source
    section = source_field(source, "section")
    return SourceItem(
        source_id=str(source_field(source, "source_id", item_id)),
        kind=source_field(source, "kind", "file"),
        uri=str(source_field(source, "uri", "")),
        section=tuple(section) if section else None,
        origin=source_field(source, "origin"),
    )


def _reject(item_id: str, stage: str, reason: str, detail: str, clip_id: str | None = None) -> dict:
    return reject_row(item_id, stage, reason, detail, **({} if clip_id is None else {"clip_id": clip_id}))


def _from_error(item_id: str, e: BiaudioError, default_stage: str, clip_id: str | None = None) -> dict:
    where = f"{e.path}: " if e.path else ""
    return reject_from_error(item_id, e, default_stage, f"{where}{e.detail}".strip(),
                             **({} if clip_id is None else {"clip_id": clip_id}))


def process_item(item: WorkItem, recipe: Any, out_dir: Path, log: logging.Logger) -> ItemResult:
    """Run every stage for one source item; returns kept rows, rejects, per-stage seconds, bytes."""
    from biaudio.ingest.fetch import fetch

    out_dir = Path(out_dir)
    res = ItemResult(item.item_id)
    timer = _Timer(res.stats)
    src = _as_source_item(item.source, item.item_id)
    source_id = src.source_id

    # -- fetch (a no-op for local files and synthetic scenes) ---------------------------------
    try:
        with timer("fetch"):
            path = Path(fetch(src, out_dir / "sources" / "downloads", recipe.fetch))
    except BiaudioError as e:
        log.warning("fetch failed: %s", e)
        res.rejects.append(_from_error(item.item_id, e, "fetch"))
        return res
    log.info("input %s", path)

    # -- probe + validate + clean filters + segmentation (one decode of video and audio) -------
    section = tuple(src.section) if src.section and src.kind == "file" else None  # a local file: windows inside it
    sr = int(recipe.render.sample_rate)
    spec = _Speculation(recipe, path, source_id, out_dir, sr, timer, log)
    try:
        a = _analyze(path, source_id, section, recipe, spec)
    except BaseException:
        spec.abort_all()
        raise
    for k, v in a.timings.items():
        res.stats[k] = res.stats.get(k, 0.0) + float(v)
    # the planning (direction ... spatial cue) ran between the analysis' two passes: not decode time;
    # the renders inside the decode overlap it (stage seconds are wall time, so these two add up to more)
    res.stats["decode"] = max(0.0, res.stats.get("decode", 0.0) - spec.plan_s)
    if spec.render_s():
        res.stats["render"] = res.stats.get("render", 0.0) + spec.render_s()
    if a.reject is not None:
        spec.abort_all()
        log.info("rejected at %s: %s", a.reject.stage, a.reject)
        res.rejects.append(_from_error(item.item_id, a.reject, "clean"))
        return res
    for w, e in a.window_rejects:
        clip_id = w.clip_id(source_id)
        log.info("clip %s rejected at %s: %s", clip_id, e.stage, e)
        res.rejects.append(_from_error(item.item_id, e, "clean", clip_id))
    wins = list(a.windows)
    try:
        return _finish_item(item, res, a, wins, spec, path, src, recipe, out_dir, timer, log)
    finally:
        spec.abort_all()  # speculative renders of windows the analysis did not keep leave no file


def _finish_item(item: WorkItem, res: ItemResult, a: Any, wins: list, spec: _Speculation, path: Path, src: Any,
                 recipe: Any, out_dir: Path, timer: _Timer, log: logging.Logger) -> ItemResult:
    """The back half for the windows the analysis kept: rows from the renders made inside the
    analysis decode where they match, a render of its own for any other window."""
    source_id = src.source_id
    probe = a.validated.probe
    convention = a.validated.convention
    if not wins:
        return res

    # -- audio: the ambiX FOA the analysis decoded; resampled only if the render rate differs ----
    sr = spec.sr
    foa, a.foa = a.foa, None  # the analysis no longer holds it: one copy alive
    if foa is None:
        res.rejects.append(_reject(item.item_id, "decode", "no_audio", f"{path}: no FOA decoded"))
        return res
    foa = spec.foa if spec.foa is not None else _at_render_rate(foa, int(a.audio_sr), sr, timer)  # planned: done

    from biaudio.engine.splits import section_start

    timeline = getattr(recipe, "timeline", None)
    offset = section_start(src, bool(getattr(timeline, "offset_from_name", False)))
    speech = a.filters.get("speech")
    speech_extra = getattr(speech, "extra", {}) or {}
    common = {
        "source_id": source_id,
        "source_uri": src.uri,
        "section_start_s": offset,
        "speech_backend": speech_extra.get("backend") if speech is not None else None,
        "speech_checkpoint": speech_extra.get("checkpoint") if speech is not None else None,
        "foa_convention": convention,
        "hrir_set": recipe.render.hrtf,
        "decoder": recipe.render.decoder,
    }

    for w in wins:
        clip_id = w.clip_id(source_id)
        try:
            row, nbytes = _process_window(w, clip_id, source_id, path, probe, foa, sr, recipe, out_dir, timer, log,
                                          spec)
        except BiaudioError as e:
            remove_clip_files(out_dir, clip_id)
            log.info("clip %s rejected at %s: %s", clip_id, e.stage, e)
            res.rejects.append(_from_error(item.item_id, e, "render", clip_id))
            continue
        except BaseException:
            remove_clip_files(out_dir, clip_id)
            raise
        row.update(common)
        if offset:  # media time -> source-video time (the clip id keeps the media time: it names files)
            row["start_s"], row["end_s"] = row["start_s"] + offset, row["end_s"] + offset
        scores = a.window_scores.get(clip_id, {})
        row.update(silence_ratio=scores.get("silence"), static_ratio=scores.get("static"), speech_ratio=scores.get("speech"))
        clip = ClipRow.from_dict(row, stage=True)  # a stage bug (a column missing or mistyped) shows here, named
        res.rows.append(clip.to_dict(stage=True))
        res.bytes_written += nbytes
        log.info("clip %s kept (lr_difference %.4f)", clip_id, clip.lr_difference)
    return res


@dataclass
class _Prepared:
    """A window's audio-side results (all a pure function of the window's FOA and the recipe)."""

    d: Any
    clip_dir: tuple[float, float]
    traj: Any
    binaural: np.ndarray
    lr: float


def _prepare_window(w, clip_id: str, path: Path, probe: Any, foa: np.ndarray, sr: int, recipe: Any,
                    timer: _Timer) -> _Prepared:
    """Direction, trajectory, binaural audio and the spatial-cue filter of one window; raises
    BiaudioError (with its stage) to reject the clip. Comes before any video work, so a clip
    without spatial cue never pays for a render."""
    from biaudio.spatial.direction import estimate

    duration = float(w.end_s - w.start_s)
    n = int(round(duration * sr))
    s0 = int(round(w.start_s * sr))
    seg = foa[:, s0:s0 + n]
    if seg.shape[1] < 0.95 * n:
        raise BiaudioError(str(path), "audio_short", f"{seg.shape[1] / sr:.2f} s of audio for a {duration:.2f} s window",
                           "decode")
    if seg.shape[1] < n:  # the last few ms of a container's audio may be missing: pad silence
        seg = np.pad(seg, ((0, 0), (0, n - seg.shape[1])))

    with timer("direction"):
        d = estimate(seg, sr, recipe.direction.to_config())
    clip_dir = (float(d.clip_azimuth_deg), float(d.clip_elevation_deg))
    if not all(np.isfinite(clip_dir)):
        raise BiaudioError(str(path), "no_direction", "dominant direction is undefined (silent window?)", "direction")

    rcfg = recipe.render
    fps = output_fps(getattr(probe, "fps", None), rcfg)
    with timer("trajectory"):
        traj = make_trajectory(clip_id, duration, fps, clip_dir, (d.t, d.azimuth_deg, d.elevation_deg),
                               recipe.trajectory, recipe.trajectory.seed)

    with timer("binaural"):
        binaural = render_binaural_along(seg, sr, traj, rcfg)
    with timer("spatial_cue"):
        lr, reason, detail = spatial_cue_check(binaural, recipe.spatial_cue)
    if reason is not None:
        raise BiaudioError(str(path), reason, f"{clip_id}: {detail}", "spatial_cue")
    return _Prepared(d, clip_dir, traj, binaural, float(lr))


def _process_window(w, clip_id: str, source_id: str, path: Path, probe: Any, foa: np.ndarray, sr: int, recipe: Any,
                    out_dir: Path, timer: _Timer, log: logging.Logger, spec: _Speculation | None = None
                    ) -> tuple[dict, int]:
    """One window -> (row, bytes written); raises BiaudioError (with its stage) to reject the clip.
    With ``spec``: the window's audio side and render from the analysis decode when it made them."""
    from biaudio.stages.caption import get_captioner

    duration = float(w.end_s - w.start_s)
    prep = spec.prepared(w) if spec is not None else None
    if prep is None:
        prep = _prepare_window(w, clip_id, path, probe, foa, sr, recipe, timer)
    d, clip_dir, traj, binaural, lr = prep.d, prep.clip_dir, prep.traj, prep.binaural, prep.lr
    rcfg = recipe.render
    rendered = spec.rendered(w, clip_id) if spec is not None else None
    if rendered is None:
        with timer("render"):
            rendered = render_clip(path, w.start_s, duration, None, sr, traj, rcfg, out_dir, clip_id, probe, binaural=binaural,
                                   directions=(d.azimuth_deg, d.elevation_deg), clip_dir=clip_dir,
                                   threads=_threads(recipe))
    with timer("caption"):
        cap = get_captioner(recipe.caption).caption(clip_id, source_id, rendered.video_path, rendered.audio_path)

    mp4, flac, jpg = clip_paths(Path("."), clip_id)  # relative to OUT
    row = {
        "clip_id": clip_id,
        "start_s": float(w.start_s),
        "end_s": float(w.end_s),
        "duration_s": duration,
        "video_path": mp4.as_posix(),
        "audio_path": flac.as_posix(),
        "preview_path": jpg.as_posix() if rendered.preview_path is not None else None,
        "fps": float(rendered.fps),
        "hfov_deg": float(rcfg.hfov_deg),
        "width": int(rendered.width),
        "height": int(rendered.height),
        "sample_rate": int(rcfg.sample_rate),
        "num_frames": int(rendered.num_frames),
        "trajectory": traj.to_records(),
        "trajectory_mode": traj.mode,
        "clip_azimuth_deg": clip_dir[0],
        "clip_elevation_deg": clip_dir[1],
        "window_directions": d.to_records(),
        "lr_difference": float(lr),
        "lr_difference_formula": FORMULA,
        **cap.to_row(),
        "qa_status": "pending",
        "qa_reason": None,
    }
    return row, rendered.bytes_written
