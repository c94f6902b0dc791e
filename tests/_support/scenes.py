"""The one factory for the small synthetic 360° scenes and demo builds the tests make.

Most tests that need a real FOA video want the same thing: one sound source (often parked at a known
direction), a small equirectangular picture at 10 fps and a few seconds, so that ffmpeg, the
direction search and the renderer run in well under a second per scene. :func:`small_scene` is
:func:`biaudio.synth.make_scene` with those defaults; a test names only what matters to it (seed,
duration, the source's direction, a cut, silence...). The scenes are deterministic in
``(name, seed, options)``, so a module-scoped fixture can share one scene between tests.

:func:`small_demo_overrides` spells the recipe overrides of a small demo build (a few short
scenes, one worker) for :func:`tests._support.build.run_demo_build` and ``load_recipe("demo", ...)``.
"""

from __future__ import annotations

import os
from typing import Any

#: what "small" means unless a test says otherwise: one source, 480x240 at 10 fps, diffuse ambience
SMALL_SCENE: dict[str, Any] = {"size": (480, 240), "fps": 10, "n_sources": 1, "ambience": True}


def small_scene(out_dir: str | os.PathLike, name: str, seed: int, *, duration: float, **options: Any):
    """``make_scene(out_dir, name, seed=seed, duration=duration, **(SMALL_SCENE | options))``: the
    scene's ``ScenePaths`` (``.video``, ``.truth_json``). ``options`` are make_scene's keywords
    (``static_source=(az, el)``, ``cuts_s``, ``silent``, ``frozen``, ``speech_wav``, ``size``,
    ``n_sources=None`` for a random number of sources...)."""
    from biaudio.synth import make_scene

    return make_scene(out_dir, name, seed=seed, duration=duration, **{**SMALL_SCENE, **options})


def small_demo_overrides(scenes: int, duration: float, *, size: tuple[int, int] | None = None,
                         render: tuple[int, int] | None = None, workers: int = 1) -> tuple[str, ...]:
    """Overrides of the built-in demo recipe for a small build: ``scenes`` synthetic scenes of
    ``duration`` s (scene ``size`` and output ``render`` size when given), ``workers`` workers."""
    out = [f"sources.0.synth.scenes={scenes}", f"sources.0.synth.duration={duration}"]
    if size is not None:
        out.append(f"sources.0.synth.size=[{size[0]},{size[1]}]")
    if render is not None:
        out += [f"render.width={render[0]}", f"render.height={render[1]}"]
    return (*out, f"execution.workers={workers}")
