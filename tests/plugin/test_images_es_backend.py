"""The image index on Elasticsearch from the plugin's side: its settings, and the pipeline's
image channels unchanged over it (against the Elasticsearch double; the CLI is tested in
test_cli_images_es.py)."""

from __future__ import annotations

import numpy as np
import pytest

from indexers.es_image_build import publish_es_images
from indexers.es_images import EsImageIndex
from indexers.images import ImageIndex
from plugin.channels import MODES, search_images
from plugin.es_image_jobs import es_image_config, image_es_settings
from plugin.fusion import FusionWeights
from plugin.hook import open_indexes
from rewriters.errors import ConfigError

from .conftest import settings_for
from .fakes import HashEncoder, outcome


def es_workspace(tmp_path, es, **index):
    return settings_for(tmp_path, index={"image_backend": "elasticsearch", "es_url": es.url,
                                         "es_image_alias": "imgs", **index})


def test_image_settings_use_their_own_alias_and_options(tmp_path, es):
    s = es_workspace(tmp_path, es, es_image_num_candidates=300, es_image_index_type="bbq_hnsw",
                     es_image_m=32, es_image_oversample=0)
    e = image_es_settings(s)
    assert (e.alias, e.num_candidates, e.hosts) == ("imgs", 300, es.url)
    c = es_image_config(s)
    assert (c.index_type, c.m, c.ef_construction, c.oversample) == ("bbq_hnsw", 32, 100, 0)
    with pytest.raises(ConfigError, match="needs an alias of its own"):
        image_es_settings(es_workspace(tmp_path, es, es_image_alias="udrl-templates"))
    with pytest.raises(ConfigError, match="index.image_backend is elasticsearch but "
                                          "index.es_url is not set"):
        image_es_settings(settings_for(tmp_path, index={"image_backend": "elasticsearch"}))


@pytest.fixture(scope="module")
def untied(image_index):
    """The conftest's image index with a little seeded noise on each vector: its captions tie
    on a query's words (and FAISS and Elasticsearch may order ties differently)."""
    rng = np.random.default_rng(3)
    vecs = image_index.vectors() + 0.05 * rng.standard_normal(image_index.vectors().shape)
    return ImageIndex.build(vecs, image_index.ids, image_index.metadata,
                            image_index.encoder_name)


def test_the_image_channels_run_unchanged_over_elasticsearch(tmp_path, es, untied):
    image_index = untied
    s = es_workspace(tmp_path, es)
    publish_es_images(image_index.ids, image_index.metadata, image_index.vectors(),
                      image_index.encoder_name, image_es_settings(s), es_image_config(s))
    _, es_index = open_indexes(s, clip=False)  # metadata only: no CLIP model loaded
    assert isinstance(es_index, EsImageIndex) and len(es_index) == len(image_index)
    clip = HashEncoder()
    for mode, prompt in (("raw", "red cabin"), ("rewrite", "blue dog photo"),
                         ("fused", "red cabin photo")):
        for filters in (None, {"colour": "green"}):
            got, want = (search_images(ix, clip, "red cabin", outcome(prompt, task="image"), 10,
                                       filters, MODES[mode], FusionWeights(), None, {})
                         for ix in (es_index, image_index))
            assert [(r.id, r.ranks, r.fields) for r in got.results] == [
                (r.id, r.ranks, r.fields) for r in want.results]
            assert got.channels == want.channels and got.index_version == es_index.version
