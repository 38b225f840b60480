"""The NumPy MiniLM query encoder against sentence-transformers on the shipped model."""

from __future__ import annotations


def test_light_query_encoder_matches_sentence_transformers():
    """Same name, dimension and vectors (short, accented, one-letter, truncated texts)."""
    from indexers.dense import MiniLMTextEncoder, load_text_encoder

    texts = ["birthday party invitation", "a cozy cabin in the snow at night, warm lights",
             "x", "Café crème — naïve résumé", "sale " * 120]
    light = load_text_encoder(light=True)
    assert type(light).__name__ == "NumpyMiniLM"
    full = MiniLMTextEncoder(None)
    assert light.name == full.name and light.dim == full.dim
    a, b = light.encode(texts), full.encode(texts)
    assert a.shape == b.shape == (5, 384)
    assert abs(a - b).max() < 1e-5  # float32 rounding: indexes built with either match
