"""CLIP's token count without torch against open_clip's own tokenizer."""

from __future__ import annotations

import random

from rewriters.engines.clip_count import clip_token_count, clip_token_count_light


def test_clip_count_without_torch_matches_open_clip(tokenizer):
    rng = random.Random(0)
    texts = ["a cozy cabin", "<start_of_text> hi", "Caf\u00e9 &amp; cr\u00e8me br\u00fbl\u00e9e",
             "2024-12-31 at 10:45pm!!", "emoji \U0001f600\U0001f3d4 snow", "  spaced\tout\n",
             "don't they'll we're", "HTML &lt;b&gt; bold", "\u4e2d\u6587 \u0440\u0443\u0441"]
    texts += [tokenizer.decode([rng.randrange(50257) for _ in range(rng.randint(1, 40))])
              for _ in range(300)]  # what random weights emit: odd pieces, bytes, unicode
    assert [clip_token_count_light(t) for t in texts] == [clip_token_count(t) for t in texts]
