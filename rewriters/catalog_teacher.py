"""The catalogue teacher: a deterministic offline teacher that writes in the catalogue's words.

For each query it asks a :class:`~rewriters.grounding.Grounder` for the catalogue items that
ground it (once per task), ranks the words those items share and that set them apart, and
composes prompts of exactly the requested length: the query's own words first, then the
grounded words best first, then generic task words as a last resort. No word repeats within a
prompt, so no 3-gram does either.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .commands import IMAGE_LEAD, check_task, query_words
from .errors import ConfigError
from .grounding import Grounder, GroundItem, ground_query
from .teachers import TeacherReply, _check_requests

__all__ = ["CatalogTeacherConfig", "CatalogTeacher", "STOP_WORDS", "FILLERS", "IMAGE_LEAD",
           "catalog_words", "document_frequencies"]

_ALNUM = re.compile(r"[^\W_]+")  # runs of letters and digits, any script

STOP_WORDS: frozenset[str] = frozenset("""
a about above after against all also an and any are as at be been before being below between
both but by can could did do does for from had has have her here his how i if in into is it its
just me more most my new no nor not of off on once only or other our out over own same she so
some such than that the their them then there these they this those through to too under until
up very was we were what when where which while who why will with without you your
""".split())

# Generic words per task, used in this order once the grounded words run out. Each list holds
# at least LENGTH_MAX distinct non-stop words, so a prompt never has to repeat a word.
FILLERS: dict[str, tuple[str, ...]] = {
    "template": (
        "template", "design", "layout", "editable", "modern", "clean", "professional",
        "creative", "printable", "customizable", "simple", "elegant", "minimal", "stylish",
        "bold", "colorful", "typography", "graphic", "digital", "theme", "style", "format",
        "premium", "trendy", "vibrant", "versatile", "fresh", "polished", "balanced", "sleek",
        "classic", "contemporary", "structured", "readable", "cohesive", "aesthetic", "tidy",
        "inviting", "memorable", "cheerful", "playful", "tasteful", "organized", "charming",
    ),
    "image": (
        "photo", "detailed", "high", "quality", "sharp", "focus", "natural", "light",
        "realistic", "vivid", "colors", "clear", "composition", "professional", "photography",
        "soft", "lighting", "texture", "depth", "crisp", "balanced", "bright", "warm",
        "cinematic", "atmospheric", "rich", "striking", "elegant", "serene", "lush", "gentle",
        "refined", "radiant", "tranquil", "evocative", "immersive", "luminous", "textured",
        "dramatic", "glowing", "delicate", "timeless", "polished", "harmonious",
    ),
}

_LEAD_MIN_CONTENT = 3  # content words the lead must leave room for


@dataclass(frozen=True)
class CatalogTeacherConfig:
    """How the catalogue teacher weighs its grounding."""

    k: int = 20  # items asked of the grounder per query and task, 1..1000
    title_weight: float = 3.0  # weight of a word found in an item's title, >= 0
    tags_weight: float = 2.0  # weight of a word found in an item's tags, >= 0
    category_weight: float = 1.5  # weight of a word found in an item's category, >= 0
    description_weight: float = 1.0  # weight of a word in an item's description/caption, >= 0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= 1000:
            raise ConfigError(f"k {self.k!r} is out of range 1-1000 items")
        weights = {f: getattr(self, f) for f in
                   ("title_weight", "tags_weight", "category_weight", "description_weight")}
        for f, w in weights.items():
            if not (isinstance(w, (int, float)) and 0 <= w < math.inf):
                raise ConfigError(f"{f} {w!r} must be a finite number >= 0")
        if not any(weights.values()):
            raise ConfigError("every field weight is 0; give at least one field a weight > 0")


def catalog_words(text: str) -> list[str]:
    """Candidate words of catalogue text: alphanumeric runs, casefolded, in order, without stop
    words, 1-character words and pure numbers (compute ``vocabulary_df`` with this too)."""
    return [w for w in _ALNUM.findall(text.casefold())
            if len(w) > 1 and not w.isdigit() and w not in STOP_WORDS]


def _fields(item: GroundItem) -> tuple[str, str, str, str]:
    return item.title, " ".join(item.tags), item.category, item.description


def document_frequencies(items: Iterable[GroundItem]) -> tuple[dict[str, int], int]:
    """Catalogue-wide document frequencies for :class:`CatalogTeacher`'s ``vocabulary_df``.

    Args:
        items: every catalogue item (an item is one document: all its fields together).

    Returns:
        (word → number of items containing it, number of items)
    """
    df: Counter[str] = Counter()
    n = 0
    for item in items:
        n += 1
        df.update({w for f in _fields(item) for w in catalog_words(f)})
    return dict(df), n




class CatalogTeacher:
    """Offline teacher composing prompts from the words of a query's catalogue neighbours.

    Deterministic: the same query, requests, grounding and background frequencies give the same
    prompts, on any instance. Repeated ``(task, length)`` requests get the same prompt.
    """

    name = "catalog"

    def __init__(self, grounder: Grounder, config: CatalogTeacherConfig | None = None,
                 vocabulary_df: Mapping[str, int] | None = None, n_docs: int | None = None):
        """Args:
            grounder: finds the catalogue items grounding a query.
            config: field weights and how many items to ask for.
            vocabulary_df: catalogue-wide document frequency of each word (keys as
                :func:`catalog_words` makes them, see :func:`document_frequencies`); None
                uses each query's grounding set as its own background.
            n_docs: number of documents ``vocabulary_df`` was counted over; with it only.
        """
        if not callable(getattr(grounder, "ground", None)):
            raise ConfigError(f"grounder {grounder!r} has no ground(query, task, k) method; "
                              "pass a Grounder such as StaticGrounder({}) for no grounding")
        if (vocabulary_df is None) != (n_docs is None):
            raise ConfigError("give vocabulary_df and n_docs together (n_docs = the number of "
                              f"documents the frequencies count over); got n_docs={n_docs!r}")
        if n_docs is not None and (isinstance(n_docs, bool) or not isinstance(n_docs, int)
                                   or n_docs < 1):
            raise ConfigError(f"n_docs {n_docs!r} must be a whole number >= 1")
        self.grounder = grounder
        self.config = config or CatalogTeacherConfig()
        self.vocabulary_df, self.n_docs = vocabulary_df, n_docs

    async def generate(
        self, query: str, intent: str | None, requests: list[tuple[str, int]]
    ) -> TeacherReply:
        """Compose one prompt per request, grounding the query once per task.

        Args:
            query: the search query.
            intent: its intent, or None (answered as "both": grounding does not label intent).
            requests: ``(task, target_length)`` pairs; lengths in LENGTH_MIN..LENGTH_MAX.

        Returns:
            The intent and one ``(task, prompt)`` per request, in request order; every prompt
            has exactly the requested number of words.

        Raises:
            ConfigError: a bad request. TeacherError: the grounder failed.
        """
        reqs = _check_requests(query, intent, requests)
        ranked = {task: self._rank(query, ground_query(self.grounder, query, task, self.config.k))
                  for task in dict.fromkeys(t for t, _ in reqs)}
        prompts = [(t, self._compose(query, t, n, ranked[t])) for t, n in reqs]
        return TeacherReply(intent or "both", prompts)

    def grounding_words(self, query: str, task: str, items: Sequence[GroundItem],
                        limit: int | None = None) -> list[tuple[str, float]]:
        """The grounded words a prompt may add to ``query``, best first, with their scores.

        A word's score is Σ over items of (item weight × field weight × [word in that field]),
        times ``log((1 + N) / (1 + df)) + 1`` where df counts the documents of the background
        holding the word (the catalogue when ``vocabulary_df`` is set, else ``items``) and N
        is their number. Equal scores order by the word itself.

        Args:
            query: the search query; its own words are never returned.
            task: "image" or "template" (checked; both score alike).
            items: the grounding items.
            limit: at most this many words; None for all.

        Returns:
            ``(word, score)`` pairs, highest score first.
        """
        check_task(task)
        ranked = self._rank(query, items)
        return ranked if limit is None else ranked[: max(0, limit)]

    def compose(self, query: str, task: str, length: int, items: Sequence[GroundItem]) -> str:
        """One prompt of exactly ``length`` whitespace words grounded in ``items`` (pure).

        Words, each at most once: the query's words (its first ``length`` if it is longer);
        then the grounded words best first (:meth:`grounding_words`); then the task's generic
        :data:`FILLERS`. Template prompts are those words as a plain search phrase. Image
        prompts start with "a photo of" when none of those three words is in the query and at
        least max(3, number of query words) words fit after it, so the lead never cuts the query.

        Args:
            query: the search query.
            task: "image" or "template".
            length: words wanted, LENGTH_MIN..LENGTH_MAX.
            items: the grounding items; [] gives the query plus fillers.

        Returns:
            The prompt text.
        """
        _check_requests(query, None, [(task, length)])
        return self._compose(query, task, length, self._rank(query, items))

    # -- internals ------------------------------------------------------------------------------

    def _rank(self, query: str, items: Sequence[GroundItem]) -> list[tuple[str, float]]:
        cfg = self.config
        field_weights = (cfg.title_weight, cfg.tags_weight, cfg.category_weight,
                         cfg.description_weight)
        own = set(query_words(query))
        score: dict[str, float] = {}
        local_df: Counter[str] = Counter()
        for item in items:
            in_item: set[str] = set()
            for text, fw in zip(_fields(item), field_weights):
                words = set(catalog_words(text))
                in_item |= words
                for w in words - own:
                    score[w] = score.get(w, 0.0) + item.weight * fw
            local_df.update(in_item)
        if self.vocabulary_df is not None:
            n, df = self.n_docs, self.vocabulary_df
        else:
            n, df = len(items), local_df
        out = []
        for w, s in score.items():
            if s <= 0:  # only in zero-weight fields
                continue
            d = min(int(df.get(w, 0)), n)  # type: ignore[arg-type]
            out.append((w, s * (math.log((1 + n) / (1 + d)) + 1.0)))
        # rounding keeps float noise from reordering words that score alike
        out.sort(key=lambda ws: (-round(ws[1], 9), ws[0]))
        return out

    def _compose(self, query: str, task: str, length: int,
                 ranked: Sequence[tuple[str, float]]) -> str:
        qwords = query_words(query)
        lead = list(IMAGE_LEAD) if (
            task == "image" and not set(IMAGE_LEAD) & set(qwords)
            and length - len(IMAGE_LEAD) >= max(_LEAD_MIN_CONTENT, len(qwords))) else []
        words = lead + qwords[: length - len(lead)]
        used = set(words)
        for w in [w for w, _ in ranked] + list(FILLERS[task]):
            if len(words) == length:
                break
            if w not in used:
                words.append(w)
                used.add(w)
        # FILLERS holds LENGTH_MAX distinct words, so distinct words never run out
        assert len(words) == length, (query, task, length)
        return " ".join(words)
