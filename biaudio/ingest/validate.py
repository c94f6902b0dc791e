"""Probe an input and decide whether it is 360° equirect video with 4-channel FOA of a known convention.

Why so strict: every later stage (direction of arrival, rotation, binaural decode) silently gives
wrong answers on a stereo track, a 4.0 surround mix or FuMa read as ambiX. So the FOA convention
must come from evidence (an Opus ``ambisonic`` layout or an MP4 ``SA3D`` box -> ambiX) or from an
explicit recipe declaration, and the projection from spherical metadata or a declared frame-aspect
rule; otherwise the item is rejected with a reason slug instead of guessed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from biaudio.errors import BiaudioError, ConventionError, MediaError

STAGE = "probe"
Convention = Literal["ambix", "fuma", "ambix-n3d"]


class ValidateConfig(BaseModel):
    """Recipe section ``validate``."""

    model_config = ConfigDict(extra="forbid")

    aspect_2to1_is_equirect: bool = Field(
        True, description="a 2:1 frame without spherical metadata counts as equirect (a hint, not proof)")
    equirect_16to9_allow: list[str] = Field(
        default_factory=list,
        description="source ids / file-name globs whose 16:9 frames without metadata are full equirect")
    require_360: bool = True
    allow_6ch: bool = Field(False, description="accept 6 channels (FOA + head-locked stereo); the first 4 are FOA")
    declared_convention: Convention | None = Field(
        None, description="FOA convention of 4-channel audio that carries no ambisonic marker")
    declared_convention_formats: list[str] = Field(
        default_factory=list,
        description="restrict declared_convention to these container formats (e.g. ['webm', 'matroska']); empty = all")
    min_duration_s: float = 1.0
    max_duration_s: float | None = 4 * 3600.0
    min_fps: float = 10.0
    max_fps: float = 120.0
    min_width: int = 256
    max_width: int = 8192


@dataclass
class ValidatedInput:
    """A checked input. ``convention`` is the FOA convention of channels 0-3."""

    path: Path
    probe: object  # biaudio.media.ProbeInfo
    convention: str
    convention_source: str = "hint"  # hint | declared
    projection_source: str = "metadata"  # metadata | aspect_2to1 | allow_16to9 | not_required

    def to_dict(self) -> dict:
        p = asdict(self.probe) if hasattr(self.probe, "__dataclass_fields__") else dict(vars(self.probe))
        p.pop("raw", None)
        return {"path": str(self.path), "convention": self.convention, "convention_source": self.convention_source,
                "projection_source": self.projection_source, "probe": p}


def _fail(path: Path, reason: str, detail: str, cls: type[BiaudioError] = BiaudioError) -> BiaudioError:
    return cls(str(path), reason, detail, stage=STAGE)


def _allowed_16to9(path: Path, source_id: str | None, cfg: ValidateConfig) -> bool:
    names = {path.name, path.stem, str(path)} | ({source_id} if source_id else set())
    return any(fnmatch.fnmatch(n, pat) for pat in cfg.equirect_16to9_allow for n in names)


def check_projection(info, path: Path, cfg: ValidateConfig, source_id: str | None = None) -> str:
    """How we know the frame is equirect; raises ``not_360`` / ``unsupported_projection``."""
    if not cfg.require_360:
        return "not_required"
    if info.projection:
        if info.projection != "equirectangular":
            raise _fail(path, "unsupported_projection", f"projection {info.projection!r}")
        if info.stereo_mode and info.stereo_mode not in ("2D", "2d", "mono"):
            raise _fail(path, "stereoscopic", f"stereo mode {info.stereo_mode!r}")
        return "metadata"
    w, h = info.width or 0, info.height or 0
    aspect = w / h if h else 0.0
    if cfg.aspect_2to1_is_equirect and abs(aspect - 2.0) < 0.02:
        return "aspect_2to1"
    if abs(aspect - 16 / 9) < 0.02 and _allowed_16to9(path, source_id, cfg):
        return "allow_16to9"
    raise _fail(path, "not_360", f"{w}x{h} frame without spherical metadata (aspect {aspect:.3f})")


def check_convention(info, path: Path, cfg: ValidateConfig) -> tuple[str, str]:
    """(convention, source). Evidence first, then the recipe's declaration, else unknown_convention."""
    if info.foa_hint:
        return info.foa_hint, "hint"
    if cfg.declared_convention:
        fmts = set((info.format_name or "").split(","))
        if not cfg.declared_convention_formats or fmts & set(cfg.declared_convention_formats):
            return cfg.declared_convention, "declared"
    raise _fail(path, "unknown_convention",
                f"{info.audio_channels}-ch {info.audio_codec} layout {info.audio_layout!r} has no ambisonic marker "
                "(Opus ambisonic / SA3D) and the recipe declares no convention (validate.declared_convention)",
                ConventionError)


def validate_probe(info, path: Path, cfg: ValidateConfig, source_id: str | None = None) -> ValidatedInput:
    """All checks on an existing ProbeInfo, so callers that already probed do not probe twice."""
    if not info.has_video:
        raise _fail(path, "no_video", "no video stream", MediaError)
    if not info.has_audio:
        raise _fail(path, "no_audio", "no audio stream", MediaError)
    ch = info.audio_channels
    if ch == 6 and not cfg.allow_6ch:
        raise _fail(path, "six_channel", "6 channels (FOA + head-locked stereo?); set validate.allow_6ch", MediaError)
    if ch not in ((4, 6) if cfg.allow_6ch else (4,)):
        raise _fail(path, "not_4_channels", f"{ch} audio channels ({info.audio_layout})", MediaError)
    dur = info.duration_s or 0.0
    if dur < cfg.min_duration_s:
        raise _fail(path, "too_short", f"{dur:.2f} s < {cfg.min_duration_s} s")
    if cfg.max_duration_s is not None and dur > cfg.max_duration_s:
        raise _fail(path, "too_long", f"{dur:.0f} s > {cfg.max_duration_s} s")
    if not info.fps or not (cfg.min_fps <= info.fps <= cfg.max_fps):
        raise _fail(path, "bad_fps", f"fps {info.fps} outside [{cfg.min_fps}, {cfg.max_fps}]")
    if (info.width or 0) < cfg.min_width:
        raise _fail(path, "resolution_too_low", f"width {info.width} < {cfg.min_width}")
    if (info.width or 0) > cfg.max_width:
        raise _fail(path, "resolution_too_high", f"width {info.width} > {cfg.max_width}")
    proj = check_projection(info, path, cfg, source_id)
    conv, conv_src = check_convention(info, path, cfg)
    return ValidatedInput(path=path, probe=info, convention=conv, convention_source=conv_src, projection_source=proj)


def validate_input(path: str | Path, cfg: ValidateConfig | None = None, source_id: str | None = None) -> ValidatedInput:
    """Probe ``path`` and validate it; raises BiaudioError subclasses with ``stage='probe'``."""
    from biaudio.media import probe

    cfg = cfg or ValidateConfig()
    path = Path(path)
    try:
        info = probe(path.absolute())  # absolute: a name like '-x.mp4' must never look like an option
    except BiaudioError as e:
        raise type(e)(e.path or str(path), e.reason, e.detail, stage=STAGE) from None
    return validate_probe(info, path, cfg, source_id)
