"""Image-index fixtures: a tiny random-weight CLIP and a generated image catalogue (built once).

Catalogue layout (session tmp dir, read-only for tests; tests that build take their own store)::

    imgs/set{0,1,2}/img00.png ... img39.webp   40 images: a 4x4 grid of random colours, blown
                                               up (nearest) to an awkward size 37+3i x 23+5i,
                                               formats cycling png/jpg/webp/bmp/gif
    imgs/zz_corrupt.png                        a PNG cut in half: opens, fails to decode
    manifest.jsonl                             40 good lines + 6 bad ones (see MANIFEST_BAD)

Manifest metadata, checkable by eye: ``license`` is "cc0" for even i and "cc-by" for odd i
(20 each); ``tags`` holds ``COLOURS[i % 3]`` and also "featured" when i % 5 == 0 (8 images).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexers.encoders import TINY_CLIP_NAME, ClipEncoder

N_GOOD = 40
COLOURS = ("red", "green", "blue")
FORMATS = ("png", "jpg", "webp", "bmp", "gif")

# manifest line number (1-based) -> what is wrong with it; lines 1..40 are the good images
MANIFEST_BAD = {
    41: "bad JSON",
    42: "missing file",
    43: "duplicate id",
    44: "missing id",
    45: "https url",
    46: "corrupt image",
}


def image_rel(i: int) -> str:
    return f"imgs/set{i % 3}/img{i:02d}.{FORMATS[i % len(FORMATS)]}"


def make_image(i: int) -> Image.Image:
    grid = np.random.default_rng(1000 + i).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((37 + 3 * i, 23 + 5 * i), Image.NEAREST)


@pytest.fixture(scope="session")
def tiny_encoder() -> ClipEncoder:
    """Random-weight tiny CLIP, D = 32 (same weights in every process: seeded init)."""
    return ClipEncoder(TINY_CLIP_NAME, pretrained=None)


@pytest.fixture(scope="session")
def image_catalog(tmp_path_factory) -> Path:
    """Root of the generated catalogue; ``root / "imgs"`` is the folder form."""
    root = tmp_path_factory.mktemp("image_catalog")
    lines = []
    for i in range(N_GOOD):
        p = root / image_rel(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        make_image(i).save(p)
        entry = {
            "id": f"img{i:02d}",
            "title": f"pattern {i}",
            "tags": [COLOURS[i % 3]] + (["featured"] if i % 5 == 0 else []),
            "license": "cc0" if i % 2 == 0 else "cc-by",
            "photographer": f"p{i % 4}",  # unknown key: lands under meta
        }
        # one record by file:// URL, the rest by relative path
        entry.update({"url": p.as_uri()} if i == 39 else {"path": image_rel(i)})
        lines.append(json.dumps(entry))
    buf = io.BytesIO()
    make_image(99).save(buf, format="PNG")
    (root / "imgs" / "zz_corrupt.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    lines += [
        '{"id": "broken", "path": ',  # 41 bad JSON
        json.dumps({"id": "ghost", "path": "imgs/nope.png"}),  # 42 missing file
        json.dumps({"id": "img00", "path": image_rel(1)}),  # 43 duplicate id
        json.dumps({"path": image_rel(2)}),  # 44 missing id
        json.dumps({"id": "remote", "url": "https://example.com/cat.jpg"}),  # 45 remote url
        json.dumps({"id": "corrupt", "path": "imgs/zz_corrupt.png"}),  # 46 corrupt image
    ]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def image_manifest(image_catalog) -> Path:
    """The JSONL manifest of the generated catalogue (40 good lines, 6 bad ones)."""
    return image_catalog / "manifest.jsonl"


@pytest.fixture()
def live_settings():
    """Settings for the live cluster of the ``elasticsearch`` tests (``UDRL_ES_URL`` and its
    credentials, see ``test_templates_live``) under a fresh random alias; the indices made under
    it are deleted afterwards."""
    import os
    import uuid

    from indexers.es_index import EsSettings, connect

    user, password = os.environ.get("UDRL_ES_USERNAME"), os.environ.get("UDRL_ES_PASSWORD")
    s = EsSettings(
        hosts=os.environ["UDRL_ES_URL"],
        api_key=os.environ.get("UDRL_ES_API_KEY") or None,
        basic_auth=(user, password) if user and password else None,
        ca_certs=os.environ.get("UDRL_ES_CA_CERTS") or None,
        verify_certs=os.environ.get("UDRL_ES_VERIFY_CERTS", "true").lower() not in
        ("false", "0", "no"),
        alias=f"udrl-test-{uuid.uuid4().hex[:8]}",
        bulk_chunk_size=200,
        request_timeout=30,
    )
    yield s
    es = connect(s)
    try:  # by name: wildcard deletes are refused by default (action.destructive_requires_name)
        for name in es.indices.get(
            index=f"{s.alias}-v*", allow_no_indices=True, ignore_unavailable=True
        ):
            es.indices.delete(index=name)
    finally:
        es.close()
