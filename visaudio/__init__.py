"""ViSAudio: silent perspective video (+ caption) -> binaural audio by conditional flow matching
with dual left/right branches and a conditional spacetime module (arXiv 2512.03036), trained
from scratch on a BiAudio manifest."""

__version__ = "0.1.0"
