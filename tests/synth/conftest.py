"""Fixtures of the synthesis tests (the helpers live in synth_helpers)."""

import pytest
from synth_helpers import make_corpus


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "images")
