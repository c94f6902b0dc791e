"""BiAudio: build binaural video datasets from 360° video with first-order ambisonics (FOA).

Conventions (axes, FOA channel order, rotation, projection) are written down in
docs/ARCHITECTURE.md ("Conventions") and implemented once, in :mod:`biaudio.spatial.angles`.
"""

__version__ = "0.1.0"
