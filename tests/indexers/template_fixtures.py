"""Seeded synthetic template catalogues and brute-force references for the template index tests.

``make_templates(n, seed)`` draws titles/descriptions from a small design vocabulary in which
no two words share an English stem (so a plain lowercase token match over the records is the
same relation BM25 matching uses), and gives every 10th template a made-up title word
("xq00010") that appears nowhere else: the template a search for that word must put first.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from indexers.catalog_templates import TemplateRecord

__all__ = ["CATEGORIES", "TAGS", "VOCAB", "SyntheticCatalog", "brute_force", "make_templates"]

VOCAB = [
    "modern",
    "minimal",
    "bold",
    "elegant",
    "vintage",
    "retro",
    "clean",
    "bright",
    "dark",
    "pastel",
    "colorful",
    "simple",
    "geometric",
    "floral",
    "abstract",
    "playful",
    "formal",
    "rustic",
    "neon",
    "golden",
    "ocean",
    "forest",
    "city",
    "night",
    "morning",
    "coffee",
    "garden",
    "party",
    "music",
    "sport",
    "fitness",
    "travel",
    "photo",
    "gallery",
    "event",
    "festival",
    "concert",
    "market",
    "school",
    "office",
    "studio",
    "cafe",
    "bakery",
    "fashion",
    "beauty",
    "wellness",
    "yoga",
]
CATEGORIES = ("Poster", "Flyer", "Banner", "Card", "Presentation", "Resume", "Invitation")
TAGS = (
    "sale",
    "summer",
    "winter",
    "business",
    "wedding",
    "birthday",
    "kids",
    "food",
    "Black Friday",
)
_TOKEN = re.compile(r"[^\W_]+")


@dataclass
class SyntheticCatalog:
    """Records plus the distinctive title word of every 10th one."""

    records: list[TemplateRecord]
    distinctive: dict[str, str]  # word -> id of the only template with it in its title


def make_templates(n: int = 300, seed: int = 0) -> SyntheticCatalog:
    """``n`` templates, deterministic for a seed; ids ``t00000``…, categories capitalized."""
    rng = random.Random(seed)
    records, distinctive = [], {}
    for i in range(n):
        title = rng.sample(VOCAB, rng.randint(2, 4))
        if i % 10 == 0:
            word = f"xq{i:05d}"
            title.insert(rng.randint(0, len(title)), word)
            distinctive[word] = f"t{i:05d}"
        records.append(
            TemplateRecord(
                id=f"t{i:05d}",
                title=" ".join(title).capitalize(),
                description=" ".join(rng.choices(VOCAB, k=rng.randint(8, 20))),
                tags=rng.sample(TAGS, rng.randint(0, 3)),
                category=rng.choice(CATEGORIES),
            )
        )
    return SyntheticCatalog(records, distinctive)


def brute_force(
    records: Sequence[TemplateRecord],
    query: str,
    category: str | None = None,
    tags: Sequence[str] = (),
) -> set[str]:
    """Ids of records sharing a word with ``query`` in any text field and passing the filters."""
    words = set(_TOKEN.findall(query.lower()))
    want_tags = {t.casefold() for t in tags}
    out = set()
    for r in records:
        text = " ".join([r.title, r.description, r.category, *r.tags]).lower()
        if not words & set(_TOKEN.findall(text)):
            continue
        if category is not None and r.category.casefold() != category.casefold():
            continue
        if not want_tags <= {t.casefold() for t in r.tags}:
            continue
        out.add(r.id)
    return out
