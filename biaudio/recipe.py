"""Build recipes: one YAML file says everything a build does, so a dataset can be rebuilt exactly.

Why pydantic with ``extra="forbid"`` at every level: a typo in a recipe (``widht: 640``) must stop
the build with a message naming ``render.widht``, not silently build a dataset with defaults.

Stage configs are owned by the stage modules (ingest/clean/segment by the ingest area,
trajectory/render/spatial_cue/caption by the per-clip stages, annotate by ``biaudio.annotate``);
this module only nests them, so a stage's options are declared once, next to the code that reads
them.

``recipe_hash`` is a stable hash of the canonical JSON of everything that changes the *data*
(so it excludes ``output`` and ``execution``: the same dataset built with 1 or 16 workers, here
or on Ray, has the same hash; and ``annotate``: captions added later by ``biaudio annotate`` do
not make the build render again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from biaudio.annotate.config import AnnotateConfig
from biaudio.clean.silence import SilenceConfig
from biaudio.clean.speech import SpeechConfig
from biaudio.clean.static import StaticConfig
from biaudio.errors import RecipeError
from biaudio.ingest.fetch import FetchConfig
from biaudio.ingest.validate import ValidateConfig
from biaudio.segment import SegmentConfig
from biaudio.stages.caption import CaptionConfig
from biaudio.stages.render import RenderConfig
from biaudio.stages.spatial_cue import SpatialCueConfig
from biaudio.stages.trajectory import TrajectoryConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# pipelines/ is the one home of the built-in recipes (a source checkout, an editable install); a
# wheel carries the same files as the data package biaudio.recipes (setup.py maps it onto pipelines/)
PIPELINES_DIR = REPO_ROOT / "pipelines"
PACKAGED_RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")




class SynthParams(_Strict):
    """Synthetic 360° scenes made on the fly (the demo needs no network and no input files)."""

    scenes: int = Field(12, ge=1, le=10000)
    seed: int = 0
    duration: float = Field(10.0, gt=0)
    size: tuple[int, int] = (960, 480)
    fps: float = Field(30.0, gt=0)
    world: Literal["demo", "spatial-bench"] = "demo"
    """``spatial-bench``: the hard spatial world (silent distractors, sources leaving the view,
    off-screen ambience, unseen second sources; ``biaudio.synth_bench``)."""


class SynthSource(_Strict):
    """``{synth: {scenes: N, seed: S, duration: 10, size: [W, H], fps: 30, world: demo}}``."""

    synth: SynthParams


SourceEntry = str | SynthSource


class CleanSection(_Strict):
    """The Sphere360 filters: silence, static video, speech (each a score in the manifest, and a
    reason when it rejects)."""

    silence: SilenceConfig = Field(default_factory=SilenceConfig)  # type: ignore[valid-type]
    static: StaticConfig = Field(default_factory=StaticConfig)  # type: ignore[valid-type]
    speech: SpeechConfig = Field(default_factory=SpeechConfig)  # type: ignore[valid-type]


class DirectionSection(_Strict):
    """Steered-power dominant-direction estimator (docs/ARCHITECTURE.md, conventions §4);
    ``to_config`` -> DirectionConfig."""

    band_hz: tuple[float, float] = (200.0, 8000.0)
    window_s: float = Field(0.2, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    grid_points: int = Field(2562, ge=12)
    gate_db: float = Field(30.0, ge=0)
    smooth_windows: int = Field(3, ge=1)

    def to_config(self) -> Any:
        """The ``biaudio.spatial.direction.DirectionConfig`` the estimator takes."""
        from biaudio.spatial.direction import DirectionConfig

        return DirectionConfig(**self.model_dump())


class SplitConfig(_Strict):
    """Train/val/test per *group* (the original video, ``group_id``), never per clip or per item:
    Sphere360 cuts many items out of one YouTube video, and all of them must land in one split.

    Groups are hashed (``salt``, fractions) unless ``lists`` assign them: files with one clip id,
    source id or group id per line, e.g. Sphere360's ``train.txt``/``test.txt``; relative paths are
    resolved like sources (next to the recipe first). A group whose entries name two splits is
    reported in ``stats.json`` (``split.conflicts``) and, with ``repair``, moved whole to the split
    most of its entries name (ties: test, val, train); without ``repair`` it keeps the lists'
    assignment and ``biaudio validate`` refuses the leak.
    """

    val_fraction: float = Field(0.1, ge=0, le=1)
    test_fraction: float = Field(0.1, ge=0, le=1)
    salt: str = "biaudio-v1"
    group_pattern: str | None = Field(
        None, description="regex with one capturing group, searched in the file stem of local files and URLs; "
                          "its capture is the group id (default: the stem without a trailing _<digits>)")
    lists: dict[Literal["train", "val", "test"], str] = Field(
        default_factory=dict, description="fixed assignments: split -> list file (one clip/source/group id per line)")
    repair: bool = Field(True, description="move a group that the lists put in several splits whole to one split")

    def model_post_init(self, __context: Any) -> None:
        if self.val_fraction + self.test_fraction > 1:
            raise ValueError("val_fraction + test_fraction must be <= 1")

    @field_validator("group_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        from biaudio.engine.splits import check_group_pattern

        check_group_pattern(v)
        return v


class TimelineConfig(_Strict):
    """Where a source's media sits in the original video, so manifest times are video times.

    Sectioned downloads are always shifted by their section start. ``offset_from_name``: a local
    file named ``<YouTube id>_<start second>.<ext>`` (Sphere360's clip files) starts at that second
    of the YouTube video; off by default, because other files named ``take_12.mp4`` are whole videos.
    """

    offset_from_name: bool = False


class ExecutionConfig(_Strict):
    """How the build runs; excluded from the recipe hash (it never changes the data).

    ``item_fn`` replaces ``biaudio.stages.item:process_item`` ("module:function" or
    "/path/file.py:function"); it exists for the engine's tests (a fast, controllable stand-in)
    and for experiments, and is never set by the shipped recipes.
    """

    workers: int | None = Field(None, ge=1, description="parallel items; None = number of CPUs")
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    item_fn: str | None = None
    on_write_error: Literal["stop", "continue"] = "stop"
    single_decode: bool = Field(
        True, description="render the clips inside the source's analysis decode (audio first, then one video decode "
                          "for the analysis and the windows of a cut-free video); False: each clip decodes its window "
                          "again. The files are the same either way")
    threads_per_worker: int = Field(
        1, ge=1, description="BLAS/OpenMP/torch and ffmpeg decoder/x264 threads inside one worker; parallelism comes from workers "
                             "(1 keeps N workers on N cores from oversubscribing, and results independent of N)")


class Recipe(_Strict):
    """A whole build: sources, every stage's parameters, the split and how to execute."""

    name: str = "biaudio"
    description: str = ""
    sources: list[SourceEntry] = Field(default_factory=list)
    output: str | None = None
    fetch: FetchConfig = Field(default_factory=FetchConfig)  # type: ignore[valid-type]
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")  # type: ignore[valid-type]
    clean: CleanSection = Field(default_factory=CleanSection)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)  # type: ignore[valid-type]
    direction: DirectionSection = Field(default_factory=DirectionSection)
    trajectory: TrajectoryConfig = Field(default_factory=TrajectoryConfig)  # type: ignore[valid-type]
    render: RenderConfig = Field(default_factory=RenderConfig)  # type: ignore[valid-type]
    spatial_cue: SpatialCueConfig = Field(default_factory=SpatialCueConfig)  # type: ignore[valid-type]
    caption: CaptionConfig = Field(default_factory=CaptionConfig)  # type: ignore[valid-type]
    split: SplitConfig = Field(default_factory=SplitConfig)
    timeline: TimelineConfig = Field(default_factory=TimelineConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)  # type: ignore[valid-type]
    """What ``biaudio annotate`` adds after the build (captions, audio-visual consistency); outside
    the recipe hash, because annotations never change the build's media or rows."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # where the recipe file lives: relative source paths are resolved against it first
    _base_dir: Path | None = PrivateAttr(default=None)
    _origin: str = PrivateAttr(default="<dict>")

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    @property
    def origin(self) -> str:
        """The file (or built-in name) this recipe was loaded from."""
        return self._origin

    def dump(self) -> dict:
        """JSON-ready dict with the YAML key names (``validate``, not ``validate_``)."""
        return self.model_dump(mode="json", by_alias=True)


def builtin_recipes() -> dict[str, Path]:
    """Recipes shipped with the package, by name: ``pipelines/*.yaml`` of the checkout (a source
    tree or an editable install: a stray ``biaudio/recipes/`` there never shadows it), else the
    wheel's ``biaudio/recipes/``, the same files."""
    checkout = PIPELINES_DIR.is_dir() and (REPO_ROOT / "pyproject.toml").is_file()
    folder = PIPELINES_DIR if checkout else PACKAGED_RECIPES_DIR
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def recipe_hash(recipe: Recipe) -> str:
    """Stable short hash of the canonical JSON, without ``output``, ``execution`` and ``annotate``."""
    data = recipe.dump()
    data.pop("output", None)
    data.pop("execution", None)
    for src in data.get("sources") or []:  # the default world leaves older recipes' hashes as they were
        if isinstance(src, dict) and isinstance(src.get("synth"), dict) and src["synth"].get("world") == "demo":
            src["synth"].pop("world")
    data["segment"] = SegmentConfig.hash_view(data["segment"])  # keys at a setting that changes nothing stay out
    data.pop("annotate", None)
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe YAML (a path, or a built-in name such as ``demo``) and apply ``a.b=value`` overrides.

    Raises :class:`RecipeError` naming the dotted key for an unknown key or a bad value.
    """
    p = Path(path)
    if p.is_file():
        origin, base = str(p), p.resolve().parent
    elif str(path) in builtin_recipes():
        p = builtin_recipes()[str(path)]
        origin, base = f"{path} (built-in)", p.parent
    elif p.is_dir():
        raise RecipeError(str(path), "is_a_directory", "give the recipe YAML file inside it, not the folder")
    else:
        names = ", ".join(builtin_recipes()) or "none"
        raise RecipeError(str(path), "not_found", f"no such recipe file, and not a built-in recipe ({names})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(origin, "unreadable", str(e)) from e
    except yaml.YAMLError as e:
        raise RecipeError(origin, "yaml", str(e).replace("\n", " ")) from e
    if data is None:  # an empty file is a mistake (a truncated copy), not a recipe for an empty dataset
        raise RecipeError(origin, "empty", "the recipe file is empty; see `biaudio build demo --dry-run` and "
                                           "the built-in recipes (biaudio, demo) for the sections it needs")
    if not isinstance(data, dict):
        raise RecipeError(origin, "not_a_mapping", f"top level must be a mapping of sections, got {type(data).__name__}")
    recipe = recipe_from_dict(apply_overrides(data, overrides, origin), origin=origin)
    recipe._base_dir = base
    return recipe


def recipe_from_dict(data: dict, origin: str = "<dict>") -> Recipe:
    """Validate a recipe mapping; errors become one :class:`RecipeError` naming every bad key."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # a union (str | SynthSource) reports one error per branch: keep the dict branch's
        non_str = [x for x in errors if "str" not in x.get("loc", ())]
        problems = [_describe(err, data) for err in (non_str or errors)]
        first_key = problems[0][0]
        detail = "; ".join(msg for _, msg in problems)
        raise RecipeError(origin, first_key, detail) from None
    recipe._origin = origin
    return recipe


def apply_overrides(data: dict, overrides: Iterable[str], origin: str = "<recipe>") -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` set (value parsed as YAML).

    List items are addressed by index (``sources.0.synth.scenes=4``).
    """
    data = json.loads(json.dumps(data))  # deep copy, and a YAML-dated value fails here, early
    for ov in overrides:
        if "=" not in ov:
            raise RecipeError(origin, "--set", f"override {ov!r} is not key=value (e.g. render.width=320)")
        key, raw = ov.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise RecipeError(origin, "--set", f"override {ov!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise RecipeError(origin, key, f"bad value {raw!r} for '{key}': not valid YAML ({e})") from None
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: i + 1]), origin, create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(last, node, key, origin)
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(origin, key, f"cannot set '{key}': '{'.'.join(parts[:-1])}' is not a section")
    return data


def _index(part: str, node: list, key: str, origin: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise RecipeError(origin, key, f"'{key}': list index {part!r} out of range (list has {len(node)} items)")
    return int(part)


def _child(node: Any, part: str, key: str, origin: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(part, node, key, origin)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            node[part] = {}
        return node[part]
    raise RecipeError(origin, key, f"cannot descend into '{key}': not a section")


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "tuple", "none"}


def _describe(err: dict, data: Any) -> tuple[str, str]:
    """(dotted key, message) for one pydantic error, with union-branch tags removed from the key."""
    loc: list[Any] = []
    node = data
    value_found = True
    for part in err.get("loc", ()):
        if isinstance(node, dict) and part in node:
            loc.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            loc.append(part)
            node = node[part]
        elif part == "validate_" and isinstance(node, dict) and "validate" in node:
            loc.append("validate")
            node = node["validate"]
        elif part in _UNION_TAGS or (isinstance(part, str) and part[:1].isupper()):
            continue  # a union-branch tag such as 'SynthSource' or 'str': not part of the user's key
        else:
            # a key missing from the input (a required field) or the offending extra key
            loc.append(part)
            value_found = False
            node = None
    key = ".".join(str(p) for p in loc) or "<root>"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return key, f"unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return key, f"missing required key '{key}'"
    value = err.get("input") if not value_found else node
    return key, f"bad value for '{key}': {value!r} ({err.get('msg', 'invalid')})"


def _allowed_keys(loc: list[Any]) -> list[str]:
    """Field names accepted at ``loc`` (walks the Recipe model), for the unknown-key hint."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            if model is Recipe or model is None:
                model = SynthSource if loc and loc[0] == "sources" else None
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        f = fields.get(part)
        if f is None:
            return []
        model = f.annotation
        if model is not None and not isinstance(model, type):
            args = [a for a in getattr(model, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = args[0] if args else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [(f.alias or n) for n, f in model.model_fields.items()]
    return []


def resolve_source_entry(entry: str, base_dir: Path | None) -> str:
    """A relative path in a recipe means relative to the recipe file, else to the cwd, else the checkout.

    Anything that is not an existing path (a Sphere360 id, a URL, a YouTube id) is returned as is.
    """
    if "://" in entry or Path(entry).is_absolute():
        return entry
    has_glob = any(c in entry for c in "*?[")
    for root in [base_dir, Path.cwd(), REPO_ROOT]:
        if root is None:
            continue
        cand = root / entry
        if cand.exists() or (has_glob and any(root.glob(entry))):
            return str(cand.resolve()) if not has_glob else str(root.resolve() / entry)
    return entry
