"""Where distillation queries come from: a built-in generator or a seed file.

``builtin_queries`` composes realistic search queries from the vocabularies in
``rewriters/assets/vocab.json`` (image subjects and scenes, template occasions and kinds, and
ambiguous themes), each with a known intent. ``read_queries`` reads a hand-written seed file.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .commands import INTENTS
from .errors import ConfigError, DataError

__all__ = ["QuerySpec", "load_vocab", "builtin_capacity", "builtin_queries", "read_queries"]

log = logging.getLogger(__name__)

# Share of each intent in builtin_queries; the rest of n goes to "both".
_SHARES = {"image": 0.4, "template": 0.4}
# Image queries: chance of an adjective, a setting and a suffix ("photo", "wallpaper", ...).
_P_ADJ, _P_SETTING, _P_SUFFIX = 0.45, 0.45, 0.3
# Template queries: chance of a style word ("minimalist") and of a trailing "template".
_P_STYLE, _P_TEMPLATE_WORD = 0.35, 0.15
# Rejection sampling stops after this many draws per wanted query (collisions are rare).
_DRAWS_PER_QUERY = 50


@dataclass(frozen=True)
class QuerySpec:
    """A search query to distil, with its intent when known."""

    query: str  # the user's search text, single line, whitespace-normalised
    intent: str | None = None  # one of INTENTS, or None when the source does not know it


@lru_cache(maxsize=1)
def load_vocab() -> dict[str, Any]:
    """The shared vocabularies (``rewriters/assets/vocab.json``), parsed once.

    Returns:
        The parsed JSON object; callers must not mutate it.
    """
    try:
        text = resources.files(__package__).joinpath("assets/vocab.json").read_text("utf-8")
        vocab = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"vocabulary asset rewriters/assets/vocab.json is unusable: {e}") from e
    for key in ("image", "template", "both", "intent_keywords", "stopwords"):
        if key not in vocab:
            raise DataError(f"vocabulary asset rewriters/assets/vocab.json lacks {key!r}")
    return vocab


def _both_space(vocab: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Bare themes ("yoga") and modified ones ("cozy yoga"), the bare ones read more natural."""
    themes = list(dict.fromkeys(vocab["both"]["themes"]))
    modified = [f"{m} {t}" for m in vocab["both"]["modifiers"] for t in themes]
    return themes, [q for q in dict.fromkeys(modified) if not _shares_words(*q.split(" ", 1))]


def _image_capacity(vocab: dict[str, Any]) -> int:
    n_suffix = len(vocab["image"]["query_suffixes"])
    return sum(
        len(c["subjects"]) * (1 + len(c["adjectives"])) * (1 + len(c["settings"])) * (1 + n_suffix)
        for c in vocab["image"]["categories"].values()
    )


def _template_capacity(vocab: dict[str, Any]) -> int:
    n_style = len(vocab["template"]["query_styles"])
    return sum(
        len(g["occasions"]) * len(g["kinds"]) * (1 + n_style) * 2
        for g in vocab["template"]["groups"].values()
    )


def _quotas(n: int) -> dict[str, int]:
    q = {k: round(n * s) for k, s in _SHARES.items()}
    q["both"] = n - sum(q.values())
    return q


def builtin_capacity() -> int:
    """The largest ``n`` that :func:`builtin_queries` accepts.

    The combinatorial spaces are upper bounds for image and template queries (a few phrase
    combinations may coincide); the "both" space is enumerated exactly and is the binding limit.
    """
    vocab = load_vocab()
    caps = {
        "image": _image_capacity(vocab),
        "template": _template_capacity(vocab),
        "both": sum(map(len, _both_space(vocab))),
    }
    n = int(min(caps["image"] / _SHARES["image"], caps["template"] / _SHARES["template"],
                caps["both"] / (1 - sum(_SHARES.values()))))
    while n > 0 and any(v > caps[k] for k, v in _quotas(n).items()):
        n -= 1
    return n


def _shares_words(*phrases: str) -> bool:
    """True when two phrases repeat a word ("tiny tiny house")."""
    seen: set[str] = set()
    for p in phrases:
        words = set(p.split())
        if words & seen:
            return True
        seen |= words
    return False


def _draw_image(rng: random.Random, vocab: dict[str, Any]) -> str | None:
    cats = list(vocab["image"]["categories"].values())
    cat = rng.choices(cats, weights=[len(c["subjects"]) for c in cats])[0]
    parts = [rng.choice(cat["subjects"])]
    if rng.random() < _P_ADJ:
        parts.insert(0, rng.choice(cat["adjectives"]))
    if rng.random() < _P_SETTING:
        parts.append(rng.choice(cat["settings"]))
    if rng.random() < _P_SUFFIX:
        parts.append(rng.choice(vocab["image"]["query_suffixes"]))
    return None if _shares_words(*parts) else " ".join(parts)


def _draw_template(rng: random.Random, vocab: dict[str, Any]) -> str | None:
    groups = list(vocab["template"]["groups"].values())
    grp = rng.choices(groups, weights=[len(g["occasions"]) for g in groups])[0]
    parts = [rng.choice(grp["occasions"]), rng.choice(grp["kinds"])]
    if rng.random() < _P_STYLE:
        parts.insert(0, rng.choice(vocab["template"]["query_styles"]))
    if rng.random() < _P_TEMPLATE_WORD:
        parts.append("template")
    return None if _shares_words(*parts) else " ".join(parts)


def builtin_queries(n: int, seed: int = 0) -> list[QuerySpec]:
    """Generate ``n`` distinct, realistic search queries with known intent.

    About 40% image queries ("snowy mountain cabin at night"), 40% template queries
    ("minimalist wedding menu card") and 20% ambiguous "both" queries ("coffee shop").

    Args:
        n: how many queries, 1..builtin_capacity() (several thousand).
        seed: the same seed always gives the same list.

    Returns:
        ``n`` QuerySpecs, distinct case-insensitively, in a seeded random order.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r} queries must be a whole number of at least 1")
    cap = builtin_capacity()
    if n > cap:
        raise ConfigError(
            f"n={n} is more than builtin_queries can produce ({cap}); "
            "ask for fewer or supply a seed file with read_queries"
        )
    vocab = load_vocab()
    rng = random.Random(seed)
    quotas = _quotas(n)
    seen: set[str] = set()
    out: list[QuerySpec] = []

    bare, modified = _both_space(vocab)
    both = rng.sample(bare, len(bare)) + rng.sample(modified, len(modified))  # bare themes first
    for q in both[: quotas["both"]]:
        seen.add(q.lower())
        out.append(QuerySpec(q, "both"))
    for intent, draw in (("image", _draw_image), ("template", _draw_template)):
        want, draws = quotas[intent], 0
        while want:
            draws += 1
            if draws > _DRAWS_PER_QUERY * quotas[intent]:
                raise ConfigError(
                    f"could not draw {quotas[intent]} distinct {intent} queries; ask for fewer"
                )
            q = draw(rng, vocab)
            if q is None or q.lower() in seen:
                continue
            seen.add(q.lower())
            out.append(QuerySpec(q, intent))
            want -= 1
    rng.shuffle(out)
    return out


def read_queries(path: str | os.PathLike[str]) -> list[QuerySpec]:
    """Read a seed file: one query per line, optionally ``query<TAB>intent``.

    Blank lines and lines starting with ``#`` are skipped; repeated queries (case-insensitive)
    are dropped with a warning, keeping the first.

    Args:
        path: a UTF-8 text file.

    Returns:
        The queries in file order; ``intent`` is None where the line gives none.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise DataError(f"query file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"query file {path} cannot be read: {e}") from e

    out: list[QuerySpec] = []
    first_line: dict[str, int] = {}
    for n, raw in enumerate(lines, start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = raw.split("\t")
        if len(fields) > 2:
            raise DataError(
                f"{path}:{n}: expected 'query' or 'query<TAB>intent', got {len(fields)} fields"
            )
        query = " ".join(fields[0].split())
        label = fields[1].strip().lower() if len(fields) == 2 else ""
        if not query:
            raise DataError(f"{path}:{n}: the query before the tab is empty")
        if label and label not in INTENTS:
            raise DataError(
                f"{path}:{n}: unknown intent {label!r}; allowed: {', '.join(INTENTS)} "
                "(or leave it out)"
            )
        key = query.lower()
        if key in first_line:
            log.warning("%s:%d: duplicate query %r (first on line %d) dropped",
                        path, n, query, first_line[key])
            continue
        first_line[key] = n
        out.append(QuerySpec(query, label or None))
    if not out:
        raise DataError(f"query file {path} holds no queries (only blank or '#' lines)")
    return out
