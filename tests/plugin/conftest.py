"""Pipeline fixtures: a real intent model, a real FAISS image index over hashed-word vectors,
a real tantivy template index, and a fake (deterministic) rewriter (``fakes.FakeRewriter``).

Image records ``img00``..``img29``: caption ``"<colour> <subject> photo"`` with colour
``COLOURS[i % 3]`` and subject ``SUBJECTS[i % 10]``; ``meta.colour`` holds the colour.
"""

from __future__ import annotations

import pytest

from indexers.images import ImageIndex
from plugin.config import Settings
from plugin.pipeline import Pipeline

from ..conftest import make_examples
from ..indexers.template_fixtures import make_templates
from .fakes import FakeRewriter, HashEncoder

COLOURS = ("red", "green", "blue")
SUBJECTS = ("cabin", "forest", "beach", "dog", "cat", "mountain", "sunset", "flower", "city",
            "lake")


@pytest.fixture(scope="session")
def intent_detector():
    from rewriters.intent_train import train_intent

    detector, _ = train_intent(make_examples(120), progress=False)
    return detector


@pytest.fixture(scope="session")
def image_index():
    enc = HashEncoder()
    captions = [f"{COLOURS[i % 3]} {SUBJECTS[i % 10]} photo" for i in range(30)]
    ids = [f"img{i:02d}" for i in range(30)]
    meta = [{"title": c, "colour": COLOURS[i % 3]} for i, c in enumerate(captions)]
    return ImageIndex.build(enc.encode_texts(captions), ids, meta, enc.name)


@pytest.fixture(scope="session")
def template_index(tmp_path_factory):
    from indexers.template_backends import build_template_index, open_template_index

    root = tmp_path_factory.mktemp("templates")
    build_template_index("tantivy", make_templates(120).records, root=root)
    return open_template_index("tantivy", root=root)


def settings_for(tmp_path, **sections) -> Settings:
    data = {"workspace": tmp_path, **sections}
    return Settings.model_validate(data)


@pytest.fixture
def make_pipeline(tmp_path, intent_detector, image_index, template_index):
    """Factory: ``make_pipeline(rewriter=None, **settings sections)``; closed after the test."""
    made = []

    def make(rewriter=None, **sections):
        pipe = Pipeline(rewriter or FakeRewriter(), intent_detector, settings_for(tmp_path, **sections),
                        image_index=image_index, image_encoder=HashEncoder(),
                        template_index=template_index)
        made.append(pipe)
        return pipe

    yield make
    for p in made:
        p.batcher.close()
