"""Session-wide fixtures: the real GPT-2 tokenizer and a tiny random-weight GPT-2 rewriter.

Nothing is downloaded. Tests that mutate a model directory take a copy (``tiny_model_copy``).
"""

from __future__ import annotations

import random
import shutil

import pytest

from rewriters.commands import TASKS
from rewriters.data import Example


@pytest.fixture(scope="session")
def tokenizer():
    from rewriters.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved GPT-2 (2 layers, width 32) on the real tokenizer, random weights."""
    import torch

    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir

    torch.manual_seed(0)
    model = build_model("scratch", tokenizer, MODEL_PRESETS["tiny"])
    meta = RewriterMeta(version="unsaved", base_model="scratch", model_config={},
                        bucket_edges=[0.1, 0.2, 0.3, 0.4], scorer="lexical")
    out = tmp_path_factory.mktemp("tiny-rewriter")
    save_model_dir(out, model, tokenizer, meta)
    return out


@pytest.fixture(scope="session")
def tiny_rewriter(tiny_model_dir):
    from rewriters.engines.torch_engine import load_rewriter

    return load_rewriter(tiny_model_dir)


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


WORDS = ("red blue cabin forest light soft warm photo poster sale bold modern minimal vintage "
         "dog cat beach mountain sunset flyer invitation menu watercolor neon").split()


def make_examples(n_queries: int = 60, seed: int = 0) -> list[Example]:
    """Seeded synthetic examples: 2 tasks per query, lengths 3..40, intents by keyword."""
    rng = random.Random(seed)
    out = []
    for i in range(n_queries):
        q = " ".join(rng.sample(WORDS, 2)) + f" item{i}"
        intent = "template" if any(w in q for w in ("flyer", "poster", "menu", "sale")) else "image"
        for task in TASKS:
            length = rng.randint(3, 40)
            words = q.split()[:2] + [rng.choice(WORDS) for _ in range(length - 2)]
            out.append(Example.make(q, task, " ".join(words), "test", intent))
    return out


@pytest.fixture
def synthetic_examples() -> list[Example]:
    return make_examples()


@pytest.fixture()
def es():
    """A fresh local Elasticsearch HTTP double (``tests/indexers/es_double.py``) per test."""
    from tests.indexers.es_double import EsDouble

    with EsDouble() as double:
        yield double

