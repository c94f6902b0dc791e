"""The spatial-bench world: synthetic 360° scenes that a colour-saliency map cannot solve.

Why: in the demo world every sound comes from one saturated disc, so "find the salient blob, pan
the mono sound there" (the two-stage baseline) is nearly optimal and the end-to-end model's
advantages (the picture's motion, audio-visual synchrony, sources that are heard and not seen)
are never tested. Each scene here is one of four types (by scene index, so a run of ``4k`` scenes
is balanced):

* ``distractors``: three discs near each other; only one sounds. Every disc pulses (its radius
  swells with a loudness envelope); only the sounding one pulses with the sound actually heard,
  the others with sounds that are never played. Colour and motion saliency cannot tell them apart;
  audio-visual synchrony can.
* ``leave-view``: the sounding disc swings far in azimuth (±70-100°, period ~6-9 s), so with the
  camera's own turning it leaves the 90° view and comes back; a silent pulsing distractor stays
  in view, where a saliency map will point while the source is off-screen.
* ``offscreen-static``: a visible bursty source plus a continuous, invisible, static ambience
  ("rumble") 100-170° away from it (beside or behind the camera). Its ILD changes only because the
  camera turns, which only the picture's motion tells.
* ``two-timbre``: a visible tone and an invisible speech-like (formant) source 60-120° away,
  similar in level.

The background texture is fixed in the world (the demo's drifts, so that no 360° source looks
static): all global motion in a rendered clip is then the camera's, as in a real scene.
Everything else (ambiX encoding, rendering, the truth JSON) is the demo world's
(:mod:`biaudio.synth`); the truth JSON marks each source ``visible``/``sounding``/``pulse`` and the
scene's ``scene_type``.
"""

from __future__ import annotations

import numpy as np

from biaudio.spatial.angles import wrap_deg
from biaudio.synth import COLORS, SceneSpec, SourceSpec

WORLDS = ("demo", "spatial-bench")
SCENE_TYPES = ("distractors", "leave-view", "offscreen-static", "two-timbre")


def scene_type_of(index: int) -> str:
    """Scene type of scene ``index`` of a spatial-bench run (round robin: balanced splits)."""
    return SCENE_TYPES[int(index) % len(SCENE_TYPES)]


def _src(name: str, kind: str, colour: int, az0: float, el0: float, rng: np.random.Generator, **kw) -> SourceSpec:
    cname, col = COLORS[colour % len(COLORS)]
    base = dict(name=name, kind=kind, color_name=cname, color=col, az0=float(wrap_deg(az0)), el0=float(el0),
                radius_deg=float(rng.uniform(7, 9)))
    base.update(kw)
    return SourceSpec(**base)


def bench_scene_spec(scene_id: str, seed: int, index: int, world: str = "spatial-bench", duration: float = 10.0,
                     size: tuple[int, int] = (960, 480), fps: float = 15.0, sr: int = 48000,
                     spatial_metadata: bool = True) -> SceneSpec:
    """The scene ``index`` of a spatial-bench run, drawn from ``seed`` (see the module docstring)."""
    if world != "spatial-bench":
        raise ValueError(f"unknown synth world {world!r}; known: {', '.join(WORLDS)}")
    rng = np.random.default_rng([int(seed), 15])
    kind = scene_type_of(index)
    az_c = float(rng.uniform(-180, 180))
    cols = [int(c) for c in rng.permutation(len(COLORS))]
    wob = dict(az_freq=float(rng.uniform(0.05, 0.15)), az_phase=float(rng.uniform(0, 2 * np.pi)))
    sources: list[SourceSpec] = []
    if kind == "distractors":
        offs = rng.permutation([-35.0, 0.0, 35.0])
        loud = int(rng.integers(3))
        for i, o in enumerate(offs):
            k = str(rng.choice(["noise", "formant"]))
            sources.append(_src(f"s{i}", k, cols[i], az_c + o, rng.uniform(-10, 10), rng, az_amp=float(rng.uniform(0, 8)),
                                az_freq=float(rng.uniform(0.05, 0.2)), az_phase=float(rng.uniform(0, 6.28)),
                                sounding=i == loud, pulse="own" if i == loud else "decoy", pulse_depth=0.8))
        sources.insert(0, sources.pop(loud))  # source 0 is the sounding one (as in the demo world)
        for i, src in enumerate(sources):
            src.name = f"s{i}"
    elif kind == "leave-view":
        sources.append(_src("s0", str(rng.choice(["noise", "formant", "tone"])), cols[0], az_c, rng.uniform(-10, 10), rng,
                            az_amp=float(rng.uniform(70, 100)), az_freq=float(rng.uniform(0.11, 0.17)),
                            az_phase=float(rng.uniform(0, 2 * np.pi)), pulse="own", pulse_depth=0.5))
        sources.append(_src("s1", "formant", cols[1], az_c + float(rng.choice([-1, 1])) * rng.uniform(20, 40),
                            rng.uniform(-10, 10), rng, sounding=False, pulse="decoy", pulse_depth=0.5))
    elif kind == "offscreen-static":
        sources.append(_src("s0", str(rng.choice(["noise", "formant"])), cols[0], az_c, rng.uniform(-10, 10), rng,
                            az_amp=float(rng.uniform(0, 10)), pulse="own", pulse_depth=0.5, **{k: v for k, v in wob.items()}))
        sources.append(_src("s1", "rumble", cols[1], az_c + float(rng.choice([-1, 1])) * rng.uniform(100, 170), 0.0, rng,
                            visible=False, static=True, gain_db=-4.0))
    else:  # two-timbre
        sources.append(_src("s0", "tone", cols[0], az_c, rng.uniform(-10, 10), rng, az_amp=float(rng.uniform(5, 20)),
                            **{k: v for k, v in wob.items()}))
        sources.append(_src("s1", "formant", cols[1], az_c + float(rng.choice([-1, 1])) * rng.uniform(60, 120),
                            rng.uniform(-10, 10), rng, visible=False, gain_db=-2.0, az_amp=float(rng.uniform(0, 15)),
                            az_freq=float(rng.uniform(0.05, 0.15))))
    return SceneSpec(scene_id=scene_id, seed=int(seed), duration=float(duration), size=(int(size[0]), int(size[1])),
                     fps=float(fps), sr=int(sr), sources=sources, ambience=True, spatial_metadata=spatial_metadata,
                     world=world, scene_type=kind, texture_drift=False)
