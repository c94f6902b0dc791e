"""FOA -> binaural decoders as 4+4 SH-domain FIR filters (``filters (2, 4, N)``, row 0 = left).

A first-order decoder is linear and time-invariant, so it is folded once into one FIR per
(ear, ambiX channel) and applied after the per-frame rotation (docs/ARCHITECTURE.md, conventions §5). Built offline
from any HRIR set:

- ``cube``: YouTube-style virtual loudspeakers (az ±45/±135, el ±35.26), sampling decoder, each
  speaker convolved with its nearest measured HRIR;
- ``magls``: least squares below ~600 Hz, magnitude-only least squares above with the phase
  continued from the previous bin (Schörkhuber et al. 2018): best timbre at first order, where a
  plain LS fit loses the high-frequency level;
- ``omnitone``: the published Omnitone/SADIE SH-domain filters, as a reference.

All decoders are made left/right symmetric (``H_R,n = H_L,n`` except ``H_R,Y = -H_L,Y``), which
makes a source at 0° or 180° give exactly L ≡ R.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from biaudio.atomic import atomic_path
from biaudio.errors import BiaudioError
from biaudio.spatial.angles import dir_to_vec
from biaudio.spatial.foa import check_foa
from biaudio.spatial.hrir import HRIRSet, load_hrir, resample_ir

_Y_SIGN = np.array([1.0, -1.0, 1.0, 1.0])  # mirror left/right: only the Y channel flips
_BLOCK = 1 << 16  # overlap-add block: bounded memory for long clips, one batched FFT per call


def sh_vector(az_deg: np.ndarray | float, el_deg: np.ndarray | float) -> np.ndarray:
    """ambiX (SN3D, ACN) encoding gains ``[1, d_y, d_z, d_x]`` of a plane wave, ``(..., 4)``."""
    d = dir_to_vec(az_deg, el_deg)
    return np.concatenate([np.ones(d.shape[:-1] + (1,)), d[..., [1, 2, 0]]], axis=-1)


@dataclass
class BinauralDecoder:
    """SH-domain binaural filters: ``ear_e = Σ_n filters[e, n] * b_n`` with ambiX input ``b``."""

    filters: np.ndarray  # (2, 4, N) float
    sr: int
    name: str
    _spec: dict = field(default_factory=dict, repr=False, compare=False)

    def _spectrum(self, nfft: int) -> np.ndarray:
        if nfft not in self._spec:
            from scipy.fft import rfft

            self._spec[nfft] = rfft(self.filters.astype(np.float32), nfft, axis=-1).astype(np.complex64)
        return self._spec[nfft]

    def decode(self, foa: np.ndarray) -> np.ndarray:
        """Binaural ``(2, T)`` float32 from ambiX ``(4, T)`` (same length; the HRIR tail is cut).

        Blocked FFT convolution: all blocks and channels go through one batched rfft, the eight
        products are summed in the frequency domain and only two inverse transforms are needed.
        """
        from scipy.fft import irfft, next_fast_len, rfft

        x = check_foa(foa).astype(np.float32, copy=False)
        T = x.shape[1]
        N = self.filters.shape[-1]
        B = max(min(_BLOCK, T), N)  # blocks at least as long as the filters keep the OLA to one overlap
        nb = -(-T // B)
        nfft = next_fast_len(B + N - 1, real=True)
        xp = np.zeros((4, nb * B), np.float32)
        xp[:, :T] = x
        X = rfft(xp.reshape(4, nb, B), nfft, axis=-1, workers=1)  # (4, nb, F)
        H = self._spectrum(nfft)  # (2, 4, F)
        Yf = np.einsum("cbf,ecf->ebf", X, H)
        y = irfft(Yf, nfft, axis=-1, workers=1)[..., : B + N - 1]  # (2, nb, B+N-1)
        out = np.zeros((2, (nb + 1) * B), np.float32)
        out[:, : nb * B] += y[..., :B].reshape(2, nb * B)
        tail = np.zeros((2, nb, B), np.float32)
        tail[..., : N - 1] = y[..., B:]
        out[:, B : (nb + 1) * B] += tail.reshape(2, nb * B)
        return out[:, :T]

    def response(self, az_deg: np.ndarray | float, el_deg: np.ndarray | float) -> np.ndarray:
        """Effective HRIRs ``(..., 2, N)`` the decoder produces for plane waves from ``(az, el)``."""
        Y = sh_vector(az_deg, el_deg)
        return np.einsum("...n,enk->...ek", Y, self.filters)


def symmetrize(filters: np.ndarray) -> np.ndarray:
    """Average the left filters with the mirrored right ones and rebuild R by the symmetric rule."""
    left = 0.5 * (filters[0] + _Y_SIGN[:, None] * filters[1])
    return np.stack([left, _Y_SIGN[:, None] * left])


def _quadrature_weights(vec: np.ndarray, n_dense: int = 20000, max_gap_deg: float = 15.0) -> np.ndarray:
    """Approximate Voronoi area of each measured direction (dense-grid nearest-neighbour count).

    Irregular sets (KEMAR: 710 points, denser near the equator, nothing below -40°) would
    otherwise bias the fit toward crowded regions; dense points far from any measurement are
    dropped instead of inflating the edge ring.
    """
    from biaudio.spatial.direction import fibonacci_grid

    dense = fibonacci_grid(n_dense)
    dots = dense @ vec.T  # (n_dense, M)
    idx = np.argmax(dots, axis=1)
    ok = dots[np.arange(len(dense)), idx] >= np.cos(np.deg2rad(max_gap_deg))
    w = np.bincount(idx[ok], minlength=vec.shape[0]).astype(np.float64)
    w = np.maximum(w, 0.1 * max(w.mean(), 1e-9))
    return w / w.sum()


def _fade_out(h: np.ndarray, frac: float = 0.125) -> np.ndarray:
    n = h.shape[-1]
    k = max(1, int(n * frac))
    win = np.ones(n)
    win[n - k :] = 0.5 * (1 + np.cos(np.linspace(0, np.pi, k)))
    return h * win


def _nfft_for(n: int) -> int:
    return int(max(256, 1 << int(np.ceil(np.log2(max(n, 2))))))


def make_cube_decoder(hrir: HRIRSet) -> BinauralDecoder:
    """Virtual cube loudspeakers (az ±45/±135, el ±35.26) with a sampling decoder, folded to 4+4 FIRs."""
    el0 = np.rad2deg(np.arctan(1 / np.sqrt(2)))
    spk = [(az, el) for el in (el0, -el0) for az in (45.0, 135.0, -135.0, -45.0)]
    L = len(spk)
    D = np.stack([np.array([1.0, 3.0, 3.0, 3.0]) * sh_vector(a, e) / L for a, e in spk])  # (L, 4)
    hs = np.stack([hrir.ir[hrir.nearest(a, e)] for a, e in spk])  # (L, 2, N)
    filters = np.einsum("sn,sek->enk", D, hs)
    return BinauralDecoder(symmetrize(filters), hrir.sr, f"cube:{hrir.name}")


def make_magls_decoder(hrir: HRIRSet, cutoff_hz: float = 600.0, reg: float = 1e-3) -> BinauralDecoder:
    """MagLS: complex LS fit below ``cutoff_hz``, magnitude-only LS above with continued phase."""
    from scipy.fft import irfft, rfft

    vec = hrir.vectors
    Y = sh_vector(hrir.az_deg, hrir.el_deg)  # (M, 4)
    w = _quadrature_weights(vec)
    G = Y.T @ (w[:, None] * Y)
    A = np.linalg.solve(G + reg * np.trace(G) / 4 * np.eye(4), (Y * w[:, None]).T)  # (4, M)
    nfft = _nfft_for(hrir.ir.shape[-1])
    Hf = rfft(hrir.ir, nfft, axis=-1)  # (M, 2, F)
    F = Hf.shape[-1]
    freqs = np.arange(F) * hrir.sr / nfft
    kc = int(np.searchsorted(freqs, cutoff_hz))
    kc = max(kc, 1)
    S = np.zeros((2, 4, F), np.complex128)
    S[:, :, :kc] = np.einsum("nm,mek->enk", A, Hf[:, :, :kc])
    mag = np.abs(Hf)
    for k in range(kc, F):
        phase = np.angle(Y @ S[:, :, k - 1].T)  # (M, 2): phase of the previous bin's fit
        S[:, :, k] = (A @ (mag[:, :, k] * np.exp(1j * phase))).T
    S[:, :, -1] = S[:, :, -1].real  # Nyquist bin must be real
    filters = _fade_out(irfft(S, nfft, axis=-1))
    return BinauralDecoder(symmetrize(filters), hrir.sr, f"magls:{hrir.name}")


def make_decoder(hrir: HRIRSet, kind: str = "magls") -> BinauralDecoder:
    """Build a decoder of ``kind`` ("magls" | "cube") from an HRIR set."""
    if kind == "magls":
        return make_magls_decoder(hrir)
    if kind == "cube":
        return make_cube_decoder(hrir)
    raise BiaudioError(None, "unknown_decoder", f"{kind!r} is not one of magls, cube, omnitone")


def load_omnitone(path: str | Path, sr: int = 48000) -> BinauralDecoder:
    """Omnitone's SH-domain filters (4-ch wav, ACN W,Y,Z,X); R = L with the Y filter negated."""
    import soundfile as sf

    path = Path(path)
    try:
        h, sr0 = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:
        raise BiaudioError(path, "unreadable_filters", str(exc)) from exc
    if h.shape[1] != 4:
        raise BiaudioError(path, "not_4_channels", f"expected 4 SH filters, got {h.shape[1]} channels")
    left = resample_ir(h.T, int(sr0), int(sr))
    return BinauralDecoder(np.stack([left, _Y_SIGN[:, None] * left]), int(sr), f"omnitone:{path.stem}")


def _decoder_cache_dir() -> Path | None:
    """``$BIAUDIO_CACHE_DIR/decoders`` (default ``~/.cache/biaudio``); ``BIAUDIO_CACHE_DIR=off`` disables."""
    import os

    root = os.environ.get("BIAUDIO_CACHE_DIR")
    if root is not None and root.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "biaudio"
    return base / "decoders"


def _decoder_cache_key(hrtf: str, kind: str, sr: int) -> str | None:
    """Key over the inputs *and* the code that builds the filters (this module and hrir.py), so an
    edit to either, or a changed .sofa/.wav file, never serves stale filters."""
    import hashlib

    from biaudio.spatial import hrir as hrir_mod

    h = hashlib.sha256(f"v1|{hrtf}|{kind}|{int(sr)}".encode())
    try:
        for mod_file in (__file__, hrir_mod.__file__):
            h.update(Path(mod_file).read_bytes())
        if hrtf != "kemar":
            st = Path(hrtf).stat()
            h.update(f"|{Path(hrtf).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    except OSError:
        return None
    return h.hexdigest()[:32]


def _cached_build(hrtf: str, kind: str, sr: int) -> BinauralDecoder:
    """Build a decoder, or load the filters an earlier process built (MagLS from KEMAR is expensive:
    slab import, resampling, the per-bin fit; every fresh worker would otherwise pay it)."""

    def build() -> BinauralDecoder:
        if kind == "omnitone":
            return load_omnitone(hrtf, sr)
        return make_decoder(load_hrir(hrtf, sr), kind)

    folder, key = _decoder_cache_dir(), _decoder_cache_key(hrtf, kind, sr)
    if folder is None or key is None:
        return build()
    path = folder / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return BinauralDecoder(np.array(z["filters"]), int(z["sr"]), str(z["name"]))
    except (OSError, KeyError, ValueError):
        pass
    dec = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, keep_suffix=True) as tmp:  # np.savez adds .npz to any other name
            np.savez(tmp, filters=dec.filters, sr=np.int64(dec.sr), name=np.str_(dec.name))
    except OSError:  # read-only home, full disk: the cache is only an optimisation
        pass
    return dec


@lru_cache(maxsize=16)
def get_decoder(hrtf: str = "kemar", kind: str = "magls", sr: int = 48000) -> BinauralDecoder:
    """Cached decoder (per process, and on disk across processes, see ``_cached_build``): building
    MagLS takes ~0.1-1 s, rendering thousands of clips in fresh workers must not repeat it.

    ``kind="omnitone"`` takes ``hrtf`` as the path of the Omnitone filter wav.
    """
    if kind not in ("magls", "cube", "omnitone"):
        raise BiaudioError(None, "unknown_decoder", f"{kind!r} is not one of magls, cube, omnitone")
    return _cached_build(str(hrtf), kind, int(sr))


def log_spectral_distance(
    a: BinauralDecoder,
    b: BinauralDecoder,
    az_deg: np.ndarray,
    el_deg: np.ndarray,
    band_hz: tuple[float, float] = (200.0, 16000.0),
    nfft: int = 1024,
) -> np.ndarray:
    """Log-spectral distance (dB) between two decoders' responses per direction and ear ``(D, 2)``.

    One broadband gain (the mean dB difference over all directions) is removed first: HRIR sets
    differ in overall level and that is not a timbre difference.
    """
    if a.sr != b.sr:
        raise ValueError("decoders must share the sample rate")
    ha = np.abs(np.fft.rfft(a.response(az_deg, el_deg), nfft, axis=-1))
    hb = np.abs(np.fft.rfft(b.response(az_deg, el_deg), nfft, axis=-1))
    f = np.arange(ha.shape[-1]) * a.sr / nfft
    sel = (f >= band_hz[0]) & (f <= min(band_hz[1], a.sr / 2))
    d = 20 * np.log10(np.maximum(ha[..., sel], 1e-12) / np.maximum(hb[..., sel], 1e-12))
    d = d - d.mean()
    return np.sqrt(np.mean(d**2, axis=-1))


def ild_db(binaural: np.ndarray) -> float:
    """Broadband interaural level difference L/R in dB (positive = left louder)."""
    b = np.asarray(binaural, dtype=np.float64)
    return float(10 * np.log10(max(np.sum(b[0] ** 2), 1e-30) / max(np.sum(b[1] ** 2), 1e-30)))
