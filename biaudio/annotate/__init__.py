"""Annotation stages over an already built dataset folder (``biaudio annotate OUT``).

Why a stage of its own: captions and audio-visual consistency need large models and a GPU, while
rendering needs CPUs and ffmpeg. Annotating after the build lets a dataset be rendered on CPU
machines and annotated on GPU machines, batches clips through each model (N clips per forward),
and never touches the build's media, rows, QA decisions or recipe hash: it only adds annotation
columns in a new manifest version.

Modules: :mod:`config` (the ``annotate`` recipe section), :mod:`avconsistency` (the audio-visual
embedding model and its score), :mod:`stages` (one class per annotation: models, batching,
columns), :mod:`engine` (per-clip completion records, local and Ray workers, the manifest version).
"""
