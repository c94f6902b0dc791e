"""Media I/O over ffmpeg/ffprobe: probe, FOA-safe audio decode, streaming frames, writers, SA3D.

Every function raises :class:`biaudio.errors.MediaError` (path + reason slug) for bad input, and
no function ever passes a channel-layout option to ffmpeg for multichannel audio (such
options silently remix FOA; docs/ARCHITECTURE.md, conventions §6).
"""

from biaudio.media.audio import decode_audio, decode_foa, write_audio
from biaudio.media.probe import ProbeInfo, probe
from biaudio.media.sa3d import inject_spatial_metadata, parse_sa3d, parse_spherical_video
from biaudio.media.video import VideoWriter, iter_frames, mux, mux_foa

__all__ = [
    "ProbeInfo",
    "VideoWriter",
    "decode_audio",
    "decode_foa",
    "inject_spatial_metadata",
    "iter_frames",
    "mux",
    "mux_foa",
    "parse_sa3d",
    "parse_spherical_video",
    "probe",
    "write_audio",
]
