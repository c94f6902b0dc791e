"""HRIR sets: the MIT KEMAR set inside the ``slab`` wheel (offline default) and any SOFA file.

Directions follow the project convention (az counter-clockwise, +90 = left; el +90 up) and
``ir[:, 0]`` is always the left ear. HRIRs are resampled to the audio rate (never the audio to
the HRIR rate), so the decoder matches whatever the input clip uses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biaudio.errors import BiaudioError
from biaudio.spatial.angles import dir_to_vec, vec_to_dir, wrap_deg


@dataclass
class HRIRSet:
    """Measured head-related impulse responses ``ir (M, 2, N)`` (row 0 = left) at ``M`` directions."""

    ir: np.ndarray
    az_deg: np.ndarray
    el_deg: np.ndarray
    sr: int
    name: str

    def nearest(self, az_deg: float, el_deg: float) -> int:
        """Index of the measured direction closest (great circle) to ``(az, el)``."""
        d = dir_to_vec(self.az_deg, self.el_deg) @ dir_to_vec(az_deg, el_deg)
        return int(np.argmax(d))

    @property
    def vectors(self) -> np.ndarray:
        return dir_to_vec(self.az_deg, self.el_deg)


def _import_slab():
    """Import slab without PortAudio: slab imports ``sounddevice`` at module level, which raises
    OSError when the PortAudio library is missing (headless servers, CI). Marking it absent makes
    slab fall back to no playback, which we never use."""
    if "sounddevice" not in sys.modules:
        try:
            import sounddevice  # noqa: F401
        except Exception:  # OSError (no PortAudio) or ImportError
            sys.modules["sounddevice"] = None  # type: ignore[assignment]
    import slab

    return slab


def _load_kemar() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    slab = _import_slab()
    h = slab.HRTF.kemar()
    src = np.asarray(h.sources.vertical_polar, dtype=np.float64)  # az (ccw, deg), el, r
    ir = np.stack([np.asarray(f.data, dtype=np.float64).T for f in h.data])  # (M, 2, N), ch 0 = left
    return ir, src[:, 0], src[:, 1], int(round(float(h.samplerate)))


def _load_sofa(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    try:
        import warnings

        import sofar

        with warnings.catch_warnings():  # "preliminary conventions 0.4" is harmless for reading
            warnings.simplefilter("ignore")
            s = sofar.read_sofa(str(path), verify=False, verbose=False)
        ir = np.asarray(s.Data_IR, dtype=np.float64)
        pos = np.asarray(s.SourcePosition, dtype=np.float64)
        ptype = str(getattr(s, "SourcePosition_Type", "spherical")).lower()
        sr = float(np.ravel(s.Data_SamplingRate)[0])
    except Exception as exc:  # fall back to reading the netCDF4/HDF5 container directly
        try:
            import h5py

            with h5py.File(path, "r") as f:
                ir = np.asarray(f["Data.IR"], dtype=np.float64)
                pos = np.asarray(f["SourcePosition"], dtype=np.float64)
                ptype = f["SourcePosition"].attrs.get("Type", b"spherical")
                ptype = (ptype.decode() if isinstance(ptype, bytes) else str(ptype)).lower()
                sr = float(np.ravel(f["Data.SamplingRate"])[0])
        except Exception as exc2:
            raise BiaudioError(path, "unreadable_sofa", f"sofar: {exc}; h5py: {exc2}") from exc2
    if ir.ndim != 3 or ir.shape[1] < 2:
        raise BiaudioError(path, "bad_sofa", f"Data.IR must be (M, 2, N), got {ir.shape}")
    if pos.ndim == 1:
        pos = np.broadcast_to(pos, (ir.shape[0], pos.shape[0]))
    if "cart" in ptype:
        az, el = vec_to_dir(pos[:, :3])
    else:
        az, el = pos[:, 0], pos[:, 1]
    return ir[:, :2], wrap_deg(az), np.asarray(el, dtype=np.float64), int(round(sr))


def resample_ir(ir: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling of ``ir (..., N)`` along the last axis (exact rational ratio)."""
    from biaudio.media.audio import resample

    return resample(ir, sr_in, sr_out, axis=-1)


def load_hrir(spec: str | Path, sr: int = 48000) -> HRIRSet:
    """``"kemar"`` (MIT KEMAR from the slab wheel) or a path to a ``.sofa`` file, at ``sr`` Hz."""
    if str(spec).lower() == "kemar":
        ir, az, el, sr0 = _load_kemar()
        name = "mit-kemar-normal-pinna"
    else:
        path = Path(spec)
        if not path.is_file():
            raise BiaudioError(path, "unknown_hrtf", "expected 'kemar' or an existing .sofa file")
        ir, az, el, sr0 = _load_sofa(path)
        name = path.stem
    ir = resample_ir(ir, sr0, int(sr))
    return HRIRSet(ir=np.ascontiguousarray(ir), az_deg=wrap_deg(az), el_deg=np.asarray(el), sr=int(sr), name=name)
