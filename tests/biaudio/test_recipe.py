"""Recipes: strict validation with messages naming the dotted key, overrides, hashing, built-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from biaudio.errors import RecipeError
from biaudio.recipe import (
    builtin_recipes,
    load_recipe,
    recipe_from_dict,
    recipe_hash,
)

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_dotted_key_and_allowed_keys(tmp_path):
    p = _write(tmp_path, "name: x\nrender:\n  widht: 320\n")
    with pytest.raises(RecipeError) as ei:
        load_recipe(p)
    msg = str(ei.value)
    assert ei.value.reason == "render.widht"
    assert "unknown key 'render.widht'" in msg and "width" in msg  # the hint lists the right key
    assert str(p) in msg


def test_unknown_key_inside_a_synth_source_and_top_level(tmp_path):
    with pytest.raises(RecipeError) as ei:
        recipe_from_dict({"sources": [{"synth": {"scnes": 3}}]})
    assert ei.value.reason == "sources.0.synth.scnes"
    assert "scenes" in ei.value.detail
    with pytest.raises(RecipeError) as ei:
        recipe_from_dict({"renderer": {}})
    assert ei.value.reason == "renderer"


def test_bad_value_names_key_and_value():
    with pytest.raises(RecipeError) as ei:
        recipe_from_dict({"split": {"val_fraction": "lots"}})
    assert ei.value.reason == "split.val_fraction"
    assert "'lots'" in ei.value.detail
    with pytest.raises(RecipeError) as ei:
        recipe_from_dict({"execution": {"executor": "spark"}})
    assert ei.value.reason == "execution.executor" and "'spark'" in ei.value.detail
    with pytest.raises(RecipeError) as ei:
        recipe_from_dict({"sources": [5]})
    assert ei.value.reason == "sources.0" and "5" in ei.value.detail
    # a stride of 0 or less would never advance the window start (an endless loop, not an error)
    for bad in (0, -1.0):
        with pytest.raises(RecipeError) as ei:
            recipe_from_dict({"segment": {"stride_s": bad}})
        assert ei.value.reason == "segment.stride_s"


def test_stage_sections_are_real_and_strict():
    # the stage configs are nested for real and forbid unknown keys too
    for section in ("trajectory", "render", "caption", "spatial_cue", "segment", "fetch", "validate"):
        with pytest.raises(RecipeError) as ei:
            recipe_from_dict({section: {"no_such_key": 1}})
        assert ei.value.reason == f"{section}.no_such_key"
    with pytest.raises(RecipeError) as ei:
        recipe_from_dict({"clean": {"silence": {"no_such_key": 1}}})
    assert ei.value.reason == "clean.silence.no_such_key"


def test_overrides(tmp_path):
    p = _write(tmp_path, "name: x\nsources:\n  - synth: {scenes: 3}\n")
    r = load_recipe(p, ["sources.0.synth.scenes=5", "render.width=320", "split.salt=abc", "execution.workers=2"])
    assert r.sources[0].synth.scenes == 5 and r.render.width == 320 and r.split.salt == "abc"
    assert r.execution.workers == 2
    with pytest.raises(RecipeError) as ei:
        load_recipe(p, ["render.widht=320"])
    assert ei.value.reason == "render.widht"
    with pytest.raises(RecipeError) as ei:
        load_recipe(p, ["render.width=wide"])
    assert ei.value.reason == "render.width" and "'wide'" in ei.value.detail
    with pytest.raises(RecipeError, match="not key=value"):
        load_recipe(p, ["render.width"])
    with pytest.raises(RecipeError, match="out of range"):
        load_recipe(p, ["sources.3.synth.scenes=1"])


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(RecipeError) as ei:
        load_recipe(_write(tmp_path, "name: [unclosed\n"))
    assert ei.value.reason == "yaml"
    with pytest.raises(RecipeError) as ei:
        load_recipe(tmp_path / "nope.yaml")
    assert ei.value.reason == "not_found" and "demo" in ei.value.detail


def test_hash_ignores_output_and_execution_only():
    base = load_recipe("demo")
    same = load_recipe("demo", ["execution.workers=7", "execution.executor=ray", "output=/elsewhere"])
    other = load_recipe("demo", ["render.width=320"])
    assert recipe_hash(base) == recipe_hash(same)
    assert recipe_hash(base) != recipe_hash(other)
    assert recipe_hash(load_recipe("demo")) == recipe_hash(base)  # stable across loads


def test_builtin_recipe_names_resolve_to_pipelines():
    """pipelines/ is the one home of the recipes: every file there is a built-in name, and the
    name loads that file (there is no second copy to drift)."""
    names = builtin_recipes()
    assert set(names) == {p.stem for p in (REPO / "pipelines").glob("*.yaml")} >= {"demo", "biaudio"}
    for name, path in names.items():
        assert path.resolve() == (REPO / "pipelines" / f"{name}.yaml").resolve(), name
        assert load_recipe(name).name == load_recipe(path).name  # both validate, the same recipe


def test_builtin_recipes_from_a_wheel_layout(tmp_path, monkeypatch):
    """Installed from a wheel, the recipes sit in biaudio/recipes/ (setup.py maps that data package
    onto pipelines/) and there is no checkout around the package: that folder is used."""
    import shutil

    import biaudio.recipe as rmod

    packaged = tmp_path / "recipes"
    packaged.mkdir()
    shutil.copy(REPO / "pipelines" / "demo.yaml", packaged / "demo.yaml")
    monkeypatch.setattr(rmod, "PACKAGED_RECIPES_DIR", packaged)
    assert builtin_recipes()["demo"].parent == REPO / "pipelines"  # a checkout: pipelines/ wins
    monkeypatch.setattr(rmod, "PIPELINES_DIR", tmp_path / "site-packages" / "pipelines")  # no checkout
    assert builtin_recipes() == {"demo": packaged / "demo.yaml"}
    assert recipe_hash(load_recipe("demo")) == recipe_hash(load_recipe(REPO / "pipelines" / "demo.yaml"))


def test_paper_recipe_values():
    r = load_recipe("biaudio")
    assert r.segment.window_s == 8.0
    assert (r.render.width, r.render.height, r.render.hfov_deg, r.render.fps_cap) == (640, 360, 90.0, 30.0)
    assert r.render.sample_rate == 48000 and r.render.decoder == "magls" and r.render.hrtf == "kemar"
    assert r.spatial_cue.min_lr_difference == 0.01
    assert r.caption.backend in ("none", "file")
    d = load_recipe("demo")
    assert d.sources and hasattr(d.sources[0], "synth")  # the demo needs no network


def test_build_help_lists_every_builtin_recipe():
    """``biaudio build --help`` names the built-in recipes; a new file in pipelines/ must be named there."""
    from biaudio.cli.build import BUILD_HELP

    flat = " ".join(BUILD_HELP.split())
    listed = flat.split("pipelines/: ", 1)[1].split(")", 1)[0]
    assert {n.strip() for n in listed.split(",")} == set(builtin_recipes())


DRAWS = ("spatial-bench-train", "spatial-bench-confirm", "spatial-bench-fresh", "spatial-bench-fresh2")


@pytest.mark.parametrize("other,split", [("spatial-bench-train", "train"), ("spatial-bench-confirm", "test"),
                                         ("spatial-bench-fresh", "test"), ("spatial-bench-fresh2", "test")])
def test_spatial_bench_draws_are_the_same_world_drawn_apart(other, split):
    """The training, confirmation and fresh draws differ from the benchmark only in seed, size, split
    and output (same world and stages), each puts every clip in one split, and none of their scenes is
    one of the benchmark's or of any other draw's (per-scene seeds disjoint)."""
    from biaudio.synth import scene_seed

    def seeds(synth: dict) -> set[int]:
        return {scene_seed(synth["seed"], i) for i in range(synth["scenes"])}

    bench, extra = load_recipe("spatial-bench"), load_recipe(other)
    b, e = bench.dump(), extra.dump()
    bs, es = b.pop("sources")[0]["synth"], e.pop("sources")[0]["synth"]
    for k in ("name", "description", "output"):
        b.pop(k), e.pop(k)
    bsplit, esplit = b.pop("split"), e.pop("split")
    assert b == e  # every stage setting is the benchmark's
    assert {k: v for k, v in bs.items() if k not in ("seed", "scenes")} == \
        {k: v for k, v in es.items() if k not in ("seed", "scenes")}
    fractions = {"val": esplit["val_fraction"], "test": esplit["test_fraction"]}
    fractions["train"] = 1.0 - fractions["val"] - fractions["test"]
    assert fractions[split] == 1.0 and bsplit["test_fraction"] > 0
    assert es["scenes"] >= bs["scenes"]
    assert not seeds(bs) & seeds(es)
    for third in set(DRAWS) - {other}:
        assert not seeds(es) & seeds(load_recipe(third).dump()["sources"][0]["synth"]), (other, third)


def test_cli_bad_recipe_exits_2(tmp_path):
    from biaudio.cli import app

    p = _write(tmp_path, "render: {widht: 3}\n")
    res = CliRunner().invoke(app, ["build", str(p), "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 2
    assert "render.widht" in res.stdout
    assert not (tmp_path / "o").exists()  # nothing written for a recipe that does not validate
