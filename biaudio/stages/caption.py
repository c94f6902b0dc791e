"""Captions ``Visible sound: ..., Invisible sound: ...`` for a rendered clip, from a pluggable backend.

Why pluggable: the paper captioned with Qwen2.5-Omni (describe the audio-visual clip) followed by a
text model (Qwen3-Instruct-2507) that restructures the description into the two fields. Those
models are tens of GB, need a GPU and are not always present, so a build can also import captions
made elsewhere (``file``) or skip captioning (``none``). Whatever the backend, a caption enters the
manifest only after :func:`parse_caption` split it into the visible and invisible fields, so
downstream code never has to guess the format.

No backend ever downloads anything: local models are opened with ``local_files_only=True`` from
the paths in the recipe, and a missing path is a clear error before any work starts.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from biaudio.errors import BiaudioError, MediaError, RejectItem

STAGE = "caption"
_log = logging.getLogger(__name__)

DEFAULT_AV_PROMPT = (
    "Describe the sounds in this video. For each sound say what makes it and whether its source "
    "is visible in the picture or not."
)
OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
"""The system prompt Qwen2.5-Omni was trained with (its model card asks for it)."""
DEFAULT_TEXT_PROMPT = (
    "Rewrite the following description of a video's sounds as exactly one line of the form "
    "'Visible sound: <sounds whose source is on screen>, Invisible sound: <other sounds>'. "
    "Write 'none' for an empty field.\n\nDescription: {description}"
)


class CaptionConfig(BaseModel):
    """Recipe section ``caption``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["none", "file", "local-model"] = "none"
    file: Path | None = None
    """``file`` backend: a CSV (header row) or JSONL (``.jsonl``/``.ndjson``) of captions."""
    key_column: str = "clip_id"
    """Column holding the key; its value is matched against the clip id first, then the source id."""
    caption_column: str = "caption"
    """Column with the whole ``Visible sound: ..., Invisible sound: ...`` text. If the file has no such
    column but has ``visible`` and ``invisible`` columns, those are used instead."""
    on_missing: Literal["reject", "keep"] = "reject"
    """A clip with no caption in the file: reject it (``no_caption``) or keep it with null captions."""
    av_model_path: Path | None = None
    """``local-model``: a local Qwen2.5-Omni (or other transformers image/video-text) checkpoint folder."""
    text_model_path: Path | None = None
    """``local-model``: a local causal-LM checkpoint folder (paper: Qwen3-Instruct-2507)."""
    av_prompt: str = DEFAULT_AV_PROMPT
    text_prompt: str = DEFAULT_TEXT_PROMPT
    """Must contain ``{description}`` (the AV model's output)."""
    max_new_tokens: int = Field(256, ge=1, le=4096)
    device: str = "cpu"
    """torch device for local models (``cpu``, ``cuda``, ``cuda:0``...)."""
    av_video_fps: float = Field(1.0, gt=0)
    """Frames per second the AV model samples from the clip."""


@dataclass
class Caption:
    """One clip's caption; all ``None`` for the ``none`` backend (or a missing file entry kept)."""

    caption: str | None
    visible: str | None
    invisible: str | None
    backend: str

    def to_row(self) -> dict[str, str | None]:
        return {
            "caption": self.caption,
            "caption_visible": self.visible,
            "caption_invisible": self.invisible,
            "caption_backend": self.backend,
        }


_VIS = re.compile(r"(?<![a-z])visible\s+sounds?\s*:", re.IGNORECASE)
_INV = re.compile(r"(?<![a-z])invisible\s+sounds?\s*:", re.IGNORECASE)


def _clean_field(s: str) -> str:
    s = s.strip().strip("\"'`*").strip()
    s = re.sub(r"\s+", " ", s)
    return s.rstrip(",;.").strip()


def parse_caption(text: str) -> tuple[str, str]:
    """Split ``Visible sound: A, Invisible sound: B`` into ``(A, B)``; ``ValueError`` says what is wrong.

    Tolerant of case, ``sounds``, a newline or ``;`` instead of the comma, and text before the first
    label (models like to preface); both fields must be present and non-empty (``none`` is fine).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty caption")
    mv = _VIS.search(text)
    mi = _INV.search(text)
    if mv is None:
        raise ValueError(f"no 'Visible sound:' label in {text[:80]!r}")
    if mi is None:
        raise ValueError(f"no 'Invisible sound:' label in {text[:80]!r}")
    if mi.start() < mv.end():
        raise ValueError(f"'Invisible sound:' comes before 'Visible sound:' in {text[:80]!r}")
    visible = _clean_field(text[mv.end():mi.start()])
    invisible = _clean_field(text[mi.end():].splitlines()[0] if text[mi.end():].strip() else "")
    if not visible:
        raise ValueError(f"empty visible field in {text[:80]!r}")
    if not invisible:
        raise ValueError(f"empty invisible field in {text[:80]!r}")
    return visible, invisible


def _max_pixels(size: Any) -> int | None:
    """Pixel budget per frame from a Qwen-VL style processor ``size`` (``longest_edge``/``max_pixels``)."""
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    v = get("longest_edge") or get("max_pixels")
    return int(v) if v else None


def decode_many(decode, paths: list, threads: int, stage: str) -> list:
    """``decode(path)`` for every clip, ``threads`` at a time (each decode is ffmpeg processes, so
    threads overlap them); a clip that cannot be decoded gets an ``unreadable_clip`` error naming it."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p):
        try:
            return decode(Path(p))
        except BiaudioError as e:
            return BiaudioError(p, "unreadable_clip", f"{e.reason}: {e.detail}", stage)
        except Exception as e:  # noqa: BLE001 - a decoder failure names the clip and goes on
            return BiaudioError(p, "unreadable_clip", f"{type(e).__name__}: {e}", stage)

    if threads <= 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as pool:
        return list(pool.map(one, paths))


def format_caption(visible: str, invisible: str) -> str:
    """The canonical one-line caption stored in the ``caption`` column."""
    return f"Visible sound: {visible}, Invisible sound: {invisible}"


@dataclass
class ClipRef:
    """What a captioner needs to know about one rendered clip (paths are absolute)."""

    clip_id: str
    source_id: str
    video_path: Path | None = None
    audio_path: Path | None = None


class Captioner:
    """Base class. :meth:`caption_batch` is the one code path: the in-build ``caption()`` is a batch
    of one, and ``biaudio annotate`` sends batches of N clips through the same method.

    A batch never fails as a whole: each clip gets its :class:`Caption` or the
    :class:`BiaudioError` (reason + detail) that stopped it.
    """

    backend = "none"

    def caption_one(self, clip: ClipRef) -> Caption:
        return Caption(None, None, None, self.backend)

    def caption_batch(self, clips: list[ClipRef]) -> list[Caption | BiaudioError]:
        out: list[Caption | BiaudioError] = []
        for c in clips:
            try:
                out.append(self.caption_one(c))
            except BiaudioError as e:
                out.append(e)
        return out

    def caption(self, clip_id: str, source_id: str, video_path: Path | None = None,
                audio_path: Path | None = None) -> Caption:
        """One clip (the in-build path): a batch of one; raises the clip's error."""
        res = self.caption_batch([ClipRef(clip_id, source_id, None if video_path is None else Path(video_path),
                                          None if audio_path is None else Path(audio_path))])[0]
        if isinstance(res, BiaudioError):
            raise res
        return res


class NoneCaptioner(Captioner):
    backend = "none"


class FileCaptioner(Captioner):
    """Captions imported from a CSV/JSONL file, validated as a whole when the captioner is made.

    Why validate everything up front: a malformed line found after hours of rendering would waste
    the run; the error names the file and line, so it can be fixed before the build starts.
    """

    backend = "file"

    def __init__(self, cfg: CaptionConfig):
        if cfg.file is None:
            raise BiaudioError(None, "caption_file_missing", "caption.backend=file needs caption.file", STAGE)
        self.cfg = cfg
        self.path = Path(cfg.file)
        if not self.path.is_file():
            raise BiaudioError(self.path, "caption_file_missing", "caption file not found", STAGE)
        self.table: dict[str, tuple[str, str]] = {}
        for line, rec in self._records():
            self._add(line, rec)

    def _records(self):
        suffix = self.path.suffix.lower()
        try:
            if suffix in (".jsonl", ".ndjson", ".json"):
                with open(self.path, encoding="utf-8") as fh:
                    for n, raw in enumerate(fh, start=1):
                        if not raw.strip():
                            continue
                        try:
                            rec = json.loads(raw)
                        except json.JSONDecodeError as e:
                            raise self._err(n, f"not valid JSON ({e.msg})") from None
                        if not isinstance(rec, dict):
                            raise self._err(n, "a JSONL line must be an object")
                        yield n, rec
            else:
                with open(self.path, encoding="utf-8", newline="") as fh:
                    reader = csv.DictReader(fh)
                    if reader.fieldnames is None:
                        raise self._err(1, "empty CSV (no header row)")
                    for rec in reader:
                        if None in rec:
                            raise self._err(reader.line_num, "more fields than header columns")
                        yield reader.line_num, rec
        except UnicodeDecodeError as e:
            raise BiaudioError(self.path, "bad_caption_file", f"not UTF-8 text ({e})", STAGE) from None

    def _err(self, line: int, why: str) -> BiaudioError:
        return BiaudioError(self.path, "bad_caption_file", f"line {line}: {why}", STAGE)

    def _add(self, line: int, rec: dict[str, Any]) -> None:
        key = rec.get(self.cfg.key_column)
        if key is None or not str(key).strip():
            raise self._err(line, f"missing key column {self.cfg.key_column!r}")
        key = str(key).strip()
        if self.cfg.caption_column in rec and rec[self.cfg.caption_column] is not None:
            try:
                vis, inv = parse_caption(str(rec[self.cfg.caption_column]))
            except ValueError as e:
                raise self._err(line, f"malformed caption: {e}") from None
        elif "visible" in rec and "invisible" in rec:
            vis, inv = _clean_field(str(rec["visible"] or "")), _clean_field(str(rec["invisible"] or ""))
            if not vis or not inv:
                raise self._err(line, "empty 'visible' or 'invisible' field")
        else:
            raise self._err(line, f"no {self.cfg.caption_column!r} column (nor 'visible'/'invisible')")
        if key in self.table:
            raise self._err(line, f"duplicate key {key!r}")
        self.table[key] = (vis, inv)

    def caption_one(self, clip: ClipRef) -> Caption:
        clip_id, source_id = clip.clip_id, clip.source_id
        hit = self.table.get(clip_id) or self.table.get(source_id)
        if hit is None:
            if self.cfg.on_missing == "keep":
                return Caption(None, None, None, self.backend)
            raise RejectItem(self.path, "no_caption", f"no caption for {clip_id} / {source_id}", STAGE)
        vis, inv = hit
        return Caption(format_caption(vis, inv), vis, inv, self.backend)


class LocalModelCaptioner(Captioner):
    """Two local transformers models: an audio-visual describer, then a text model that restructures.

    Models load lazily (first clip) and once per process; paths are checked at construction so a
    wrong path fails before any rendering. Only ``local_files_only=True`` loads are used.
    """

    backend = "local-model"

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        if "{description}" not in cfg.text_prompt:
            raise BiaudioError(None, "bad_caption_prompt", "caption.text_prompt must contain {description}", STAGE)
        for name in ("av_model_path", "text_model_path"):
            p = getattr(cfg, name)
            if p is None:
                raise BiaudioError(None, "model_path_missing", f"caption.{name} is required for local-model", STAGE)
            if not Path(p).is_dir():
                raise BiaudioError(p, "model_path_missing",
                                   f"caption.{name} is not a local folder (models are never downloaded)", STAGE)
        self._lock = threading.RLock()
        self.decode_threads = 1
        """Clips of a batch decoded at once (ffmpeg processes); ``biaudio annotate`` raises it."""
        self._text: tuple[Any, Any] | None = None
        self._av: tuple[Any, Any, str] | None = None

    # -- text model -------------------------------------------------------------------------------
    def _load_text(self):
        with self._lock:  # once, even when two batches (threads) arrive together
            return self._load_text_locked()

    def _load_text_locked(self):
        if self._text is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            p = str(self.cfg.text_model_path)
            try:
                tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
            except (OSError, ValueError) as e:
                raise BiaudioError(p, "model_load_failed", f"text model: {e}", STAGE) from None
            model.to(self.cfg.device).eval()
            self._text = (tok, model)
        return self._text

    def restructure(self, description: str) -> str:
        """Run the text model on ``text_prompt.format(description=...)``; returns the generated text."""
        return self.restructure_batch([description])[0]

    def restructure_batch(self, descriptions: list[str]) -> list[str]:
        """The text model on N prompts in one ``generate`` (left-padded, greedy): the same texts as N
        single calls, because padding is masked out of attention and positions."""
        import torch

        if not descriptions:
            return []
        tok, model = self._load_text()
        prompts = []
        for d in descriptions:
            prompt = self.cfg.text_prompt.format(description=d)
            if getattr(tok, "chat_template", None):
                prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            prompts.append(prompt)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        side, tok.padding_side = tok.padding_side, "left"  # generation continues at the right end
        try:
            enc = tok(prompts, return_tensors="pt", padding=True).to(self.cfg.device)
        finally:
            tok.padding_side = side
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        n_in = enc["input_ids"].shape[1]
        return [tok.decode(o[n_in:], skip_special_tokens=True).strip() for o in out]

    # -- audio-visual model -----------------------------------------------------------------------
    def _load_av(self):
        with self._lock:
            return self._load_av_locked()

    def _load_av_locked(self):
        if self._av is None:
            import transformers
            from transformers import AutoConfig, AutoProcessor

            p = str(self.cfg.av_model_path)
            try:
                conf = AutoConfig.from_pretrained(p, local_files_only=True)
                kind = getattr(conf, "model_type", "")
                processor = AutoProcessor.from_pretrained(p, local_files_only=True)
                if kind == "qwen2_5_omni":
                    # text only: the talker and token2wav (speech output) are never built
                    model = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
                        p, local_files_only=True, dtype="auto", enable_audio_output=False)
                    if getattr(model, "has_talker", False):
                        model.disable_talker()
                else:
                    model = transformers.AutoModelForImageTextToText.from_pretrained(
                        p, local_files_only=True, dtype="auto")
            except (OSError, ValueError, ImportError) as e:
                raise BiaudioError(p, "model_load_failed", f"audio-visual model: {e}", STAGE) from None
            model.to(self.cfg.device).eval()
            self._av = (processor, model, kind)
        return self._av

    def _clip_frames(self, video_path: Path, processor) -> np.ndarray:
        """The clip's frames at ``av_video_fps`` as ``(T, H, W, 3)`` uint8 RGB.

        Decoded here (ffmpeg pipe) rather than by the processor, so no av/decord backend is needed.
        Frames larger than the video processor's pixel budget are scaled down by ffmpeg first (the
        processor still does its own exact resize to a multiple of the patch size).
        """
        from biaudio.media.probe import probe
        from biaudio.media.video import iter_frames

        info = probe(video_path)
        size = None
        vp = getattr(processor, "video_processor", None)
        # a processor-level default (Qwen2.5-Omni's) takes precedence over the video processor's own
        max_px = _max_pixels((getattr(processor, "videos_kwargs", None) or {}).get("size")
                             or getattr(vp, "size", None))
        if max_px and info.width and info.height and info.width * info.height > max_px:
            scale = math.sqrt(max_px / (info.width * info.height))
            size = (max(2, int(info.width * scale) // 2 * 2), max(2, int(info.height * scale) // 2 * 2))
        frames = list(iter_frames(video_path, size=size, fps=self.cfg.av_video_fps, info=info))
        return np.stack(frames)

    def _clip_audio(self, video_path: Path, processor) -> np.ndarray | None:
        """The clip's soundtrack mixed to mono float32 at the feature extractor's rate (``None``: silent clip)."""
        from biaudio.media.audio import decode_audio

        fe = getattr(processor, "feature_extractor", None)
        sr = int(getattr(fe, "sampling_rate", None) or 16000)
        try:
            x, _ = decode_audio(video_path, sr=sr)
        except MediaError as e:
            if e.reason == "no_audio":
                return None
            raise
        return x.mean(axis=0).astype(np.float32)

    def decode_clip(self, video_path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(frames, mono audio or ``None``) of one clip, as the AV model will see them.

        Why mono: Qwen2.5-Omni's audio tower takes one channel, so the binaural track is mixed down
        (mean of left and right) before it hears it; the caption describes *what* sounds, not where.
        """
        processor, _model, kind = self._load_av()
        frames = self._clip_frames(Path(video_path), processor)
        audio = self._clip_audio(Path(video_path), processor) if kind == "qwen2_5_omni" else None
        return frames, audio

    def av_inputs(self, video_path: Path) -> dict[str, Any]:
        """Processor output (tensors on the model's device) for one clip: prompt + frames (+ audio for Omni)."""
        return self.av_inputs_batch([self.decode_clip(Path(video_path))])

    def av_inputs_batch(self, decoded: list[tuple[np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
        """Processor output for N decoded clips in one left-padded batch (all with audio, or all without)."""
        from transformers.video_utils import VideoMetadata

        processor, model, kind = self._load_av()
        omni = kind == "qwen2_5_omni"
        conv: list[dict[str, Any]] = []
        if omni:
            conv.append({"role": "system", "content": [{"type": "text", "text": OMNI_SYSTEM_PROMPT}]})
        conv.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": self.cfg.av_prompt}]})
        text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        n = len(decoded)
        videos = [f for f, _ in decoded]
        fps = self.cfg.av_video_fps
        # the frames are already sampled at av_video_fps: the processor must not resample them, and its
        # time axis (Qwen2.5-Omni: ``fps``; Qwen2.5-VL and others: the metadata) must know their rate
        kw: dict[str, Any] = {"text": [text] * n, "videos": videos, "return_tensors": "pt",
                              "fps": fps, "do_sample_frames": False, "padding": True}
        if hasattr(getattr(processor, "video_processor", None), "cap_pixels_per_frame"):
            kw["cap_pixels_per_frame"] = True  # the per-video pixel budget of qwen-vl-utils (reference)
        audios = [a for _, a in decoded]
        if omni:
            if all(a is not None for a in audios):
                # the soundtrack of videos[i], already decoded: its tokens interleave with the video's
                kw.update(audio=audios, audio_from_video_indices=list(range(n)), load_audio_from_video=True)
            elif any(a is not None for a in audios):
                raise ValueError("a batch mixes clips with and without audio")
        else:
            kw["video_metadata"] = [VideoMetadata(total_num_frames=len(f), fps=fps, width=f.shape[2],
                                                  height=f.shape[1], duration=len(f) / fps) for f in videos]
        tok = getattr(processor, "tokenizer", None)
        side = getattr(tok, "padding_side", None)
        if tok is not None:
            tok.padding_side = "left"  # generation continues at the right end of every row
        try:
            inputs = processor(**kw).to(model.device)
        finally:
            if tok is not None:
                tok.padding_side = side
        # pixels and mel features in the model's dtype (bf16 checkpoints); ids and the float time
        # steps (``*second_per_grid*``, used for positions) stay as they are
        for k in ("pixel_values", "pixel_values_videos", "input_features"):
            if k in inputs:
                inputs[k] = inputs[k].to(model.dtype)
        return inputs

    def describe(self, video_path: Path) -> str:
        """Free-text description of the clip (picture + binaural soundtrack) by the AV model."""
        res = self.describe_batch([Path(video_path)])[0]
        if isinstance(res, BiaudioError):
            raise res
        return res

    def _generate_descriptions(self, decoded: list[tuple[np.ndarray, np.ndarray | None]]) -> list[str]:
        import torch

        processor, model, kind = self._load_av()
        inputs = self.av_inputs_batch(decoded)
        gen_kw: dict[str, Any] = {"max_new_tokens": self.cfg.max_new_tokens, "do_sample": False}
        if kind == "qwen2_5_omni":
            # the thinker writes the text; the wrapper's generate() also wants speaker files (spk_dict)
            generator = model.thinker
            gen_kw["use_audio_in_video"] = "input_features" in inputs
        else:
            generator = model
        with torch.no_grad():
            out = generator.generate(**inputs, **gen_kw)
        if isinstance(out, tuple):
            out = out[0]
        n_in = inputs["input_ids"].shape[1]
        return [t.strip() for t in processor.batch_decode(out[:, n_in:], skip_special_tokens=True)]

    def describe_batch(self, video_paths: list[Path]) -> list[str | BiaudioError]:
        """Descriptions of N clips: each decoded by us (an unreadable clip gets its own error), then one
        ``generate`` per group (clips with a soundtrack, silent clips), greedy."""
        self._load_av()
        decoded = decode_many(self.decode_clip, video_paths, self.decode_threads, STAGE)
        with self._lock:
            return self._describe_decoded(decoded, video_paths)

    def _describe_decoded(self, decoded: list, video_paths: list[Path]) -> list[str | BiaudioError]:
        out: list[str | BiaudioError | None] = [None] * len(video_paths)
        groups: dict[bool, list[tuple[int, tuple[np.ndarray, np.ndarray | None]]]] = {True: [], False: []}
        for i, dec in enumerate(decoded):
            if isinstance(dec, BiaudioError):
                out[i] = dec
            else:
                groups[dec[1] is not None].append((i, dec))
        for members in groups.values():
            if members:
                for i, text in zip([i for i, _ in members], self._generate_safely([d for _, d in members],
                                   [video_paths[i] for i, _ in members]), strict=True):
                    out[i] = text
        return out  # type: ignore[return-value]

    def _generate_safely(self, decoded: list, paths: list[Path]) -> list[str | BiaudioError]:
        """One batched generate; if it fails, each clip alone, so one bad clip cannot sink N-1 good ones."""
        try:
            return list(self._generate_descriptions(decoded))
        except Exception as e:  # noqa: BLE001 - model errors become per-clip reasons
            if len(decoded) > 1:
                _log.warning("caption batch of %d failed (%s: %s); captioning its clips one by one",
                             len(decoded), type(e).__name__, e)
            if len(decoded) == 1:
                return [BiaudioError(paths[0], "caption_model_failed", f"audio-visual model: {type(e).__name__}: {e}",
                                     STAGE)]
            return [r for d, p in zip(decoded, paths, strict=True) for r in self._generate_safely([d], [p])]

    def _restructure_safely(self, descriptions: list[str], paths: list[Path]) -> list[str | BiaudioError]:
        try:
            return list(self.restructure_batch(descriptions))
        except Exception as e:  # noqa: BLE001 - model errors become per-clip reasons
            if len(descriptions) > 1:
                _log.warning("text batch of %d failed (%s: %s); rewriting one by one", len(descriptions),
                             type(e).__name__, e)
            if len(descriptions) == 1:
                return [BiaudioError(paths[0], "caption_model_failed", f"text model: {type(e).__name__}: {e}", STAGE)]
            return [r for d, p in zip(descriptions, paths, strict=True) for r in self._restructure_safely([d], [p])]

    def caption_batch(self, clips: list[ClipRef]) -> list[Caption | BiaudioError]:
        """N clips through the AV model (one batch) then the text model (one batch), then parsed."""
        results: list[Caption | BiaudioError | None] = [None] * len(clips)
        todo = []
        for i, c in enumerate(clips):
            if c.video_path is None:
                results[i] = BiaudioError(None, "no_video", "local-model captions need the rendered clip", STAGE)
            else:
                todo.append(i)
        # describe_batch decodes (ffmpeg) outside the model lock: a second batch decodes while this
        # one is on the model
        descs = self.describe_batch([clips[i].video_path for i in todo]) if todo else []  # type: ignore[misc]
        ok = []
        for i, d in zip(todo, descs, strict=True):
            if isinstance(d, BiaudioError):
                results[i] = d
            else:
                ok.append((i, d))
        with self._lock:
            texts = self._restructure_safely([d for _, d in ok], [clips[i].video_path for i, _ in ok]) if ok else []
        for (i, _), text in zip(ok, texts, strict=True):
            if isinstance(text, BiaudioError):
                results[i] = text
                continue
            try:
                vis, inv = parse_caption(text)
            except ValueError as e:
                results[i] = RejectItem(clips[i].video_path, "caption_unparsable", f"text model output: {e}", STAGE)
                continue
            results[i] = Caption(format_caption(vis, inv), vis, inv, self.backend)
        return results  # type: ignore[return-value]


_CACHE: dict[str, Captioner] = {}


def get_captioner(cfg: CaptionConfig) -> Captioner:
    """One captioner per configuration per process (models and caption files load once)."""
    key = cfg.model_dump_json()
    cap = _CACHE.get(key)
    if cap is None:
        if cfg.backend == "none":
            cap = NoneCaptioner()
        elif cfg.backend == "file":
            cap = FileCaptioner(cfg)
        else:
            cap = LocalModelCaptioner(cfg)
        _CACHE[key] = cap
    return cap
