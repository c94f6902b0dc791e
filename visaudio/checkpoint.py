"""Checkpoints of ViSAudio runs: writing them atomically, reading them safely, and turning one
into a model. Generation and evaluation load checkpoints through this module and never import
the trainer (``visaudio.train``), which writes them.

Reading is ``torch.load(weights_only=True)`` with a small allow-list (the numpy pieces of an old
RNG state), so a crafted file cannot run code; a run keeps ``last.pt`` and the one before it,
``prev.pt``, and a damaged ``last.pt`` falls back to ``prev.pt``.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from visaudio.config import Config, load_config

CKPT_NAME = "last.pt"
PREV_CKPT_NAME = "prev.pt"  # the checkpoint before last.pt: a damaged last.pt does not lose the run
CKPT_KEYS = ("step", "config")  # plus "ema" or "model" (exports for generation carry only "ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint written with a different model/codec/data architecture."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint holding Python objects beyond tensors and plain data. Loading it would run
    whatever code the pickle names, so it is refused, never executed."""


class CheckpointUnreadable(CheckpointError):
    """A truncated, empty or foreign file where a checkpoint should be."""


def atomic_save(obj: Any, path: Path, keep_prev: Path | None = None) -> None:
    """Write ``path`` through a temporary file (fsync'd, then renamed), so a crash or a full disk
    leaves the old file whole. With ``keep_prev`` the old file becomes that one first: two
    checkpoints exist, and one damaged file does not lose the run."""
    from biaudio.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_prev is not None and path.is_file():
            os.replace(path, keep_prev)


def arch_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += arch_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} != {vb!r}")
    return keys


def _legacy_numpy_globals() -> list[Any]:
    """The numpy pieces of a pre-tensor RNG state (``np.random.get_state()``'s ndarray). Allowed
    only while reading a checkpoint: they rebuild a plain array and call nothing else."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2.x
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # numpy 1.x
    # a pickle names the function by the module of the numpy that wrote it: allow both spellings
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct,
            (_reconstruct, "numpy.core.multiarray._reconstruct"), (_reconstruct, "numpy._core.multiarray._reconstruct")]


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a crafted
    file cannot run code. Raises UnsafeCheckpoint (never executes the payload) or
    CheckpointUnreadable (truncated, empty, not a checkpoint), both naming the file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            import re

            m = re.search(r"GLOBAL (\S+)", msg)
            what = f"loading it would call {m.group(1)}" if m else "it holds Python objects"
            raise UnsafeCheckpoint(
                f"checkpoint {path} was refused: {what}, and a checkpoint may only hold tensors and plain "
                "data (a crafted file runs code that way). "
                "Nothing was executed. Delete the file unless you made it yourself; checkpoints written by "
                "`visaudio train` load as they are") from None
        raise CheckpointUnreadable(f"checkpoint {path} is damaged ({msg.splitlines()[0][:200]}); "
                                   "restore it or delete it to start again") from None
    except (EOFError, OSError, RuntimeError, zipfile.BadZipFile, ValueError, AttributeError, ImportError) as e:
        if isinstance(e, FileNotFoundError):
            raise CheckpointUnreadable(f"no checkpoint at {path}") from None
        if isinstance(e, PermissionError):
            raise CheckpointUnreadable(f"checkpoint {path} cannot be read (permission denied)") from None
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointUnreadable(
            f"checkpoint {path} is unreadable, probably truncated ({why}); restore it, or delete it to start "
            "the run again") from None
    if not isinstance(ck, dict) or any(k not in ck for k in CKPT_KEYS) or not ("ema" in ck or "model" in ck):
        have = sorted(map(str, ck))[:8] if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointUnreadable(f"{path} is not a ViSAudio training checkpoint (has {have}, needs "
                                   f"{list(CKPT_KEYS)} and ema or model); pass a run folder written by "
                                   "`visaudio train`")
    return ck


def load_checkpoint(path: Path, cfg: Config | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (see ``read_checkpoint_file``) and, given ``cfg``, check that it
    was written for the same architecture (CheckpointMismatch otherwise)."""
    ck = read_checkpoint_file(path)
    if cfg is not None and ck.get("arch_hash") != cfg.arch_hash():
        saved = load_config(ck["config"])
        diff = arch_diff(saved.arch_dict(), cfg.arch_dict())
        raise CheckpointMismatch(
            f"checkpoint {path} was written by config {saved.name!r} with a different architecture: "
            + "; ".join(diff[:6])
        )
    return ck


def newest_checkpoint(ckpt_dir: Path, cfg: Config | None = None, quarantine: bool = False,
                      warn=None) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run: ``last.pt``, else ``prev.pt``. None if the run has
    neither. A damaged ``last.pt`` (truncated copy, disk trouble) falls back to ``prev.pt`` with a
    warning through ``warn``; with ``quarantine`` (the trainer) the damaged file is renamed to
    ``last.pt.unreadable`` so the next save cannot rotate it over the good ``prev.pt``.
    Unsafe or mismatched checkpoints are errors, never skipped: they are not accidents."""
    ckpt_dir = Path(ckpt_dir)
    last, prev = ckpt_dir / CKPT_NAME, ckpt_dir / PREV_CKPT_NAME
    errors: list[str] = []
    for i, p in enumerate((last, prev)):
        if not p.is_file():
            continue
        try:
            ck = load_checkpoint(p, cfg)
        except CheckpointUnreadable as e:
            errors.append(str(e))
            continue
        if i == 1 and errors:
            note = f"{errors[0]}; using the previous checkpoint {p} (step {int(ck['step'])}) instead"
            if quarantine and last.is_file():
                bad = last.with_name(last.name + ".unreadable")
                os.replace(last, bad)
                note += f"; the damaged file is kept as {bad}"
            (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(note)
        return p, ck
    if errors:
        raise CheckpointUnreadable(errors[0] + ("" if prev.is_file() else
                                                f" (no earlier checkpoint {prev.name} to fall back to)")
                                   + ("; the earlier one is damaged too" if len(errors) > 1 else ""))
    return None


def load_weights(model: nn.Module, state: dict, path: Path | str) -> None:
    """load_state_dict with a clear error when the checkpoint's tensors don't fit the model
    (a checkpoint written by a different version of the model code)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines()[1:3]]
        raise CheckpointMismatch(f"checkpoint {path} does not fit this model (written by another model "
                                 f"version or config): {' '.join(first)}") from None


def build_model(cfg: Config, device="cpu"):
    """The codec and a freshly initialised ViSAudio for ``cfg`` (seeded by ``cfg.seed``, so the
    same config gives the same initial weights); load a checkpoint into it with ``load_weights``."""
    from visaudio.model import ViSAudio
    from visaudio.model.codecs import build_codec

    codec = build_codec(cfg.codec, cfg.data.sample_rate).to(device)
    torch.manual_seed(cfg.seed)
    model = ViSAudio(cfg, codec.latent_dim).to(device)
    return model, codec
