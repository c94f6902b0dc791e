"""Fixtures shared by the biaudio test folders: the tiny caption models and a short clip (used by
stages/test_caption.py and annotate/test_annotate.py), each made once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._support.tiny_models import make_av_clip, make_tiny_omni_model, make_tiny_text_model


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> Path:
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_text_model"))


@pytest.fixture(scope="module")
def tiny_omni_model(tmp_path_factory) -> Path:
    return make_tiny_omni_model(tmp_path_factory.mktemp("tiny_omni_model"))


@pytest.fixture(scope="module")
def av_clip(tmp_path_factory) -> Path:
    return make_av_clip(tmp_path_factory.mktemp("av_clip"))
