"""The annotation stages: what each one loads, how it runs a batch, which columns it fills.

Every stage has an *identity* (backend, model names, checkpoint hashes, prompts, decoding
parameters; not the device or batch size, which do not change the result) whose hash keys the
per-clip records: a clip annotated with the same identity is never annotated again, and a new
model or prompt re-annotates every clip.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa

from biaudio.annotate.config import AnnotateConfig, resolve_device
from biaudio.errors import BiaudioError
from biaudio.stages.caption import Caption, CaptionConfig, ClipRef, decode_many, get_captioner


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_sha256(folder: Path, cache: Path | None = None) -> str:
    """SHA-256 over every file of a checkpoint folder (relative name + content hash, sorted).

    Why every file: weights, config, tokenizer and processor all change the output. Reading tens of
    GB takes a while, so per-file hashes are cached in ``cache`` keyed by path, size and mtime.
    """
    folder = Path(folder).resolve()
    memo: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            memo = json.loads(cache.read_text(encoding="utf-8"))
        except ValueError:
            memo = {}
    h = hashlib.sha256()
    changed = False
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        st = p.stat()
        k = f"{p}|{st.st_size}|{st.st_mtime_ns}"
        if k not in memo:
            memo[k] = _sha256_file(p)
            changed = True
        h.update(f"{p.relative_to(folder).as_posix()}\0{memo[k]}\n".encode())
    if cache is not None and changed:
        from biaudio.manifest import atomic_write_text

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(memo, indent=0, sort_keys=True))
    return h.hexdigest()


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type", "?"))
    except (OSError, ValueError):
        return "?"


class Stage:
    """Base of an annotation stage. ``run`` returns, per clip, its column values or its error."""

    name = ""
    value_columns: dict[str, pa.DataType] = {}
    error_column = ""

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def load(self) -> None:
        """Load the models (once per worker); a missing or broken checkpoint fails here, before any clip."""

    def run(self, clips: list[ClipRef]) -> list[dict[str, Any] | BiaudioError]:
        raise NotImplementedError


class CaptionStage(Stage):
    """Captions through :meth:`Captioner.caption_batch`: the same code path as the in-build caption."""

    name = "caption"
    value_columns = {"caption": pa.string(), "caption_visible": pa.string(), "caption_invisible": pa.string(),
                     "caption_backend": pa.string(), "caption_model": pa.string()}
    error_column = "caption_error"

    def __init__(self, cfg: CaptionConfig, device: str, cache: Path | None = None,
                 identity: dict[str, Any] | None = None, decode_threads: int = 1):
        self.cfg = cfg.model_copy(update={"device": device})
        self.captioner = get_captioner(self.cfg)  # checks paths and files now
        if hasattr(self.captioner, "decode_threads"):
            self.captioner.decode_threads = decode_threads
        self._identity = identity if identity is not None else self._make_identity(cache)

    def _make_identity(self, cache: Path | None) -> dict[str, Any]:
        c = self.cfg
        ident: dict[str, Any] = {"stage": self.name, "backend": c.backend}
        if c.backend == "file":
            ident.update(file_sha256=_sha256_file(Path(c.file)), key_column=c.key_column,  # type: ignore[arg-type]
                         caption_column=c.caption_column, on_missing=c.on_missing)
        elif c.backend == "local-model":
            ident.update(
                models=[{"role": role, "model_type": _model_type(p), "name": Path(p).name,
                         "sha256": checkpoint_sha256(Path(p), cache)}
                        for role, p in (("av", c.av_model_path), ("text", c.text_model_path))],
                av_prompt=c.av_prompt, text_prompt=c.text_prompt, max_new_tokens=c.max_new_tokens,
                av_video_fps=c.av_video_fps, decoding="greedy")
        return ident

    def identity(self) -> dict[str, Any]:
        return self._identity

    def model_label(self) -> str | None:
        models = self._identity.get("models")
        if models:
            return " + ".join(f"{m['name']} ({m['model_type']}, sha256 {m['sha256'][:12]})" for m in models)
        if self.cfg.backend == "file":
            return f"file {Path(self.cfg.file).name} (sha256 {self._identity['file_sha256'][:12]})"  # type: ignore[arg-type]
        return None

    def load(self) -> None:
        if self.cfg.backend == "local-model":
            self.captioner._load_av()  # type: ignore[attr-defined]
            self.captioner._load_text()  # type: ignore[attr-defined]

    def run(self, clips: list[ClipRef]) -> list[dict[str, Any] | BiaudioError]:
        label = self.model_label()
        out: list[dict[str, Any] | BiaudioError] = []
        for res in self.captioner.caption_batch(clips):
            if isinstance(res, Caption):
                out.append({**res.to_row(), "caption_model": label})
            else:
                out.append(res)
        return out


class AVConsistencyStage(Stage):
    """Audio-visual consistency scores (see :mod:`biaudio.annotate.avconsistency`)."""

    name = "av_consistency"
    value_columns = {"av_score": pa.float64(), "av_model": pa.string()}
    error_column = "av_error"

    def __init__(self, cfg: AnnotateConfig, cache: Path | None = None, identity: dict[str, Any] | None = None):
        from biaudio.annotate.avconsistency import AVEmbedder

        a = cfg.av_consistency
        self.decode_threads = cfg.decode_threads
        self._lock = threading.Lock()
        self.embedder = AVEmbedder(a.model_path, cfg.device, a.frames)  # type: ignore[arg-type]
        self._identity = identity if identity is not None else {
            "stage": self.name, "frames": a.frames,
            "models": [{"name": Path(a.model_path).name, "model_types": self.embedder.model_names(),  # type: ignore[arg-type]
                        "sha256": checkpoint_sha256(Path(a.model_path), cache)}]}  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        return self._identity

    def model_label(self) -> str:
        m = self._identity["models"][0]
        return f"{m['name']} ({'+'.join(m['model_types'])}, sha256 {m['sha256'][:12]})"

    def load(self) -> None:
        self.embedder.load()

    def run(self, clips: list[ClipRef]) -> list[dict[str, Any] | BiaudioError]:
        out: list[dict[str, Any] | BiaudioError | None] = [None] * len(clips)
        ok: list[tuple[int, Any]] = []
        decoded = decode_many(self.embedder.decode, [c.video_path for c in clips], self.decode_threads, self.name)
        for i, dec in enumerate(decoded):
            if isinstance(dec, BiaudioError):
                out[i] = dec
            else:
                ok.append((i, dec))
        with self._lock:  # decoding above runs outside it: the next batch decodes during this forward
            for i, score in self._score_safely(ok, clips):
                out[i] = score
        return out  # type: ignore[return-value]

    def _score_safely(self, ok: list[tuple[int, Any]], clips: list[ClipRef]):
        if not ok:
            return []
        try:
            scores = self.embedder.score_decoded([d for _, d in ok])
            return [(i, {"av_score": s, "av_model": self.model_label()}) for (i, _), s in zip(ok, scores, strict=True)]
        except BiaudioError:
            raise  # the model itself is unusable (embedding sizes differ): the whole run stops
        except Exception as e:  # noqa: BLE001 - one bad clip must not sink the others
            if len(ok) == 1:
                i = ok[0][0]
                return [(i, BiaudioError(clips[i].video_path, "av_model_failed", f"{type(e).__name__}: {e}", self.name))]
            return [r for item in ok for r in self._score_safely([item], clips)]


def make_stages(cfg: AnnotateConfig, cache: Path | None = None,
                identities: dict[str, dict[str, Any]] | None = None) -> list[Stage]:
    """The stages ``cfg`` turns on, in order (captions, then consistency). ``identities``: computed once
    by the driver and handed to workers, so checkpoints are hashed once per run, not per worker."""
    identities = identities or {}
    cfg = cfg.model_copy(update={"device": resolve_device(cfg.device)})
    stages: list[Stage] = []
    if cfg.captions.backend != "none":
        stages.append(CaptionStage(cfg.captions, cfg.device, cache, identities.get("caption"), cfg.decode_threads))
    if cfg.av_consistency.model_path is not None:
        stages.append(AVConsistencyStage(cfg, cache, identities.get("av_consistency")))
    return stages


def worker_label() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
