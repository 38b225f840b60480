"""The builtin teacher: an offline, rule-based stand-in for a teacher LLM.

It composes CLIP-style image prompts and template-search prompts from the vocabularies in
``rewriters/assets/vocab.json``, with exactly the requested number of words and a deliberately
varied relevance to the query, and labels query intent by keyword rules.
"""

from __future__ import annotations

import random
import re
import zlib

from .queries import load_vocab
from .teachers import TeacherReply, _check_requests

__all__ = ["label_intent", "BuiltinTeacher"]

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    """Lower-case word tokens with a naive plural fold ("flyers" -> "flyer")."""
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in _WORD.findall(text.lower())]


def label_intent(query: str) -> str:
    """Intent by keyword rules: template words win, then image words, else "both"."""
    kw = load_vocab()["intent_keywords"]
    words = set(_words(query))
    if words & set(kw["template"]):
        return "template"
    if words & set(kw["image"]):
        return "image"
    return "both"


# --------------------------------------------------------------------------- builtin teacher

# focus >= _HIGH keeps the whole query; _LOW <= focus < _HIGH keeps part of it; below swaps it.
_HIGH, _LOW = 0.6, 0.3
_PHOTO_HINTS = ("photo", "shot", "polaroid", "snapshot", "still", "photograph")


class BuiltinTeacher:
    """Offline teacher composing CLIP-style image prompts and template-search prompts.

    Every prompt has exactly the requested number of words. Each prompt draws a ``focus`` in
    [0, 1]: high focus keeps all query words plus closely related terms, medium keeps some of
    them, low focus swaps the subject for an unrelated one, so relevance spreads widely.
    """

    name = "builtin"

    def __init__(self, seed: int = 0):
        """Args:
            seed: the same seed, query and request always give the same prompt.
        """
        self.seed = seed
        v = load_vocab()
        self._img, self._tpl = v["image"], v["template"]
        self._stop = set(v["stopwords"])
        kinds = [k for g in self._tpl["groups"].values() for k in g["kinds"]]
        self._kinds = set(v["intent_keywords"]["template"]) | set(_words(" ".join(kinds)))
        self._image_kw = set(v["intent_keywords"]["image"])
        # content words of each vocabulary group, to find the group a query belongs to
        self._img_words = {n: {w for f in ("subjects", "adjectives", "settings") for p in c[f]
                               for w in _words(p)} - self._stop
                           for n, c in self._img["categories"].items()}
        self._tpl_words = {n: {w for f in ("occasions", "kinds") for p in g[f]
                               for w in _words(p)} - self._stop
                           for n, g in self._tpl["groups"].items()}

    async def generate(
        self, query: str, intent: str | None, requests: list[tuple[str, int]]
    ) -> TeacherReply:
        """Compose one prompt per request.

        Args:
            query: the search query.
            intent: its intent, or None to label it with :func:`label_intent`.
            requests: ``(task, target_length)`` pairs; lengths in LENGTH_MIN..LENGTH_MAX.

        Returns:
            The intent and one ``(task, prompt)`` per request, in order.
        """
        reqs = _check_requests(query, intent, requests)
        prompts = [(t, self.compose(query, t, n, index=i)) for i, (t, n) in enumerate(reqs)]
        return TeacherReply(intent or label_intent(query), prompts)

    def compose(
        self, query: str, task: str, length: int, *, index: int = 0, focus: float | None = None
    ) -> str:
        """One prompt of exactly ``length`` words.

        Args:
            query: the search query.
            task: "image" or "template".
            length: words wanted, LENGTH_MIN..LENGTH_MAX.
            index: position of the request, so repeated (task, length) requests differ.
            focus: override the drawn focus (0 off-topic .. 1 on-topic); for tests and tools.

        Returns:
            The prompt text.
        """
        _check_requests(query, None, [(task, length)])
        key = f"{' '.join(query.split())}\x1f{task}\x1f{length}\x1f{index}".encode()
        rng = random.Random(self.seed * 2**32 + zlib.crc32(key))
        drawn = rng.random()
        focus = drawn if focus is None else focus
        qwords = query.split()
        if task == "image":
            core, chunks = self._image_parts(qwords, focus, rng)
            fillers = self._img["fillers"]
        else:
            core, chunks = self._template_parts(qwords, focus, rng)
            fillers = self._tpl["fillers"]
        return self._fit(core, chunks, fillers, length, rng)

    # -- subjects -------------------------------------------------------------------------------

    @staticmethod
    def _closest(group_words: dict[str, set[str]], qwords: list[str]) -> str | None:
        """Name of the vocabulary group sharing most words with the query, if any."""
        content = set(_words(" ".join(qwords)))
        best, score = None, 0
        for name, words in group_words.items():
            if (s := len(content & words)) > score:
                best, score = name, s
        return best

    def _partial(self, qwords: list[str], rng: random.Random) -> list[str]:
        """One or two of the query's words (medium focus), usually its head noun.

        "golden retriever puppy on a beach" -> "puppy" or "retriever puppy" (the words before
        the first preposition end in the head noun); sometimes a word from elsewhere.
        """
        cut = next((i for i, w in enumerate(qwords) if i and w.lower() in self._stop),
                   len(qwords))
        def content(ws: list[str]) -> list[str]:
            return [w for w in ws if w.lower() not in self._stop | self._image_kw]
        head, everywhere = content(qwords[:cut]), content(qwords)
        n = rng.choice((1, 1, 2))
        if head and rng.random() < 0.7:
            return head[-n:]
        if not everywhere:
            return list(qwords)
        start = rng.randrange(max(1, len(everywhere) - n + 1))
        return everywhere[start : start + n]

    def _unrelated(self, groups: dict[str, dict], avoid: str | None, qwords: list[str],
                   rng: random.Random, pick) -> tuple[str, list[str]]:
        """A (group, subject words) pair from another group sharing no word with the query."""
        names = [n for n in groups if n != avoid]
        banned = set(_words(" ".join(qwords)))
        for _ in range(20):
            name = rng.choice(names)
            words = pick(groups[name]).split()
            content = [w for w in _words(" ".join(words)) if w not in self._stop]
            if not banned & set(content) and len(set(content)) == len(content):
                return name, words
        return name, words

    # -- image ----------------------------------------------------------------------------------

    def _image_parts(self, qwords: list[str], focus: float, rng: random.Random):
        cats = self._img["categories"]
        home = self._closest(self._img_words, qwords)
        has_setting = any(w.lower() in self._stop for w in qwords[1:])
        related: list[tuple[str, list[str]]] = []
        if focus >= _HIGH:
            core, cat = list(qwords), home
            if cat and not has_setting and rng.random() < 0.7:
                related.append(("post", rng.choice(cats[cat]["settings"]).split()))
        elif focus >= _LOW:
            core = self._partial(qwords, rng)
            cat = rng.choice([n for n in cats if n != home])  # a setting from elsewhere
            related.append(("post", rng.choice(cats[cat]["settings"]).split()))
        else:
            cat, core = self._unrelated(
                cats, home, qwords, rng,
                lambda c: (rng.choice(c["adjectives"]) + " " if rng.random() < 0.4 else "")
                + rng.choice(c["subjects"]))
            if rng.random() < 0.5:
                related.append(("post", rng.choice(cats[cat]["settings"]).split()))
        details = rng.sample(cats[cat]["details"], 2) if cat else []
        related += [("mod", d.split()) for d in details[:1]]

        im = self._img
        use_lead = rng.random() < 0.55
        lead = rng.choice(im["leads"])
        medium = rng.choice(im["media"])
        photo = any(h in (lead if use_lead else medium) for h in _PHOTO_HINTS)
        pre = [("lead", lead.split())] if use_lead else []
        if rng.random() < 0.3:
            pre.append(("adj", [rng.choice(im["fillers"])]))  # "dreamy lighthouse ..."
        # one phrase per category, so a prompt never names two lightings or two styles
        pool = ["lighting", "colours", "moods", "composition", "styles"]
        pool += ["camera", "lens"] if photo else []
        rng.shuffle(pool)
        mods = [] if use_lead else [("mod", medium.split())]
        mods += [("mod", rng.choice(im[c]).split()) for c in pool]
        mods += [("mod", d.split()) for d in details[1:]]
        mods += [("mod", e.split()) for e in rng.sample(im["extras"], 4)]
        mods += [("mod", q.split()) for q in rng.sample(im["quality"], 3)]
        return core, related + pre + mods

    # -- template -------------------------------------------------------------------------------

    def _template_parts(self, qwords: list[str], focus: float, rng: random.Random):
        groups = self._tpl["groups"]
        home = self._closest(self._tpl_words, qwords)
        related: list[tuple[str, list[str]]] = []
        if focus >= _HIGH:
            core, grp = list(qwords), home
        elif focus >= _LOW:
            core = self._partial(qwords, rng)
            grp, occ = self._unrelated(groups, home, qwords, rng,
                                       lambda g: rng.choice(g["occasions"]))
            related.append(("adj", occ))  # "bake sale" + "invitation"
        else:
            grp, core = self._unrelated(
                groups, home, qwords, rng,
                lambda g: rng.choice(g["occasions"]) + " " + rng.choice(g["kinds"]))
        g = groups[grp] if grp else None
        if not set(_words(" ".join(core))) & self._kinds:
            kinds = g["kinds"] if g else ["poster", "flyer", "instagram post", "card", "banner"]
            related.append(("post", rng.choice(kinds).split()))
        related.append(("post", rng.choice(self._tpl["nouns"]).split()))
        details = rng.sample(g["details"], 2) if g else []
        related += [("mod", d.split()) for d in details[:1]]

        tp = self._tpl
        style = rng.choice(tp["styles"])
        pre = [("lead", style.split())] if rng.random() < 0.6 else []
        elements = rng.sample(tp["elements"], 2)
        post = [("post", ["with", *elements.pop().split()])] if rng.random() < 0.4 else []
        # one typography, palette, layout, format and mood each; elements and placeholders
        # may repeat since a template has several of them
        pool = ["typography", "palettes", "layouts", "formats", "moods"]
        rng.shuffle(pool)
        mods = [("mod", rng.choice(tp[c]).split()) for c in pool]
        extras = [*elements, *rng.sample(tp["placeholders"], 2), *details[1:],
                  *rng.sample(tp["extras"], 3)]
        if not pre:
            extras.append(style if style.endswith("style") else f"{style} style")
        for e in extras:
            mods.insert(rng.randrange(len(mods) + 1), ("mod", e.split()))
        return core, related + pre + post + mods

    # -- length fitting -------------------------------------------------------------------------

    def _fit(self, core: list[str], chunks: list[tuple[str, list[str]]], fillers: list[str],
             length: int, rng: random.Random) -> str:
        """Hit exactly ``length`` words: the core, then optional chunks by priority, then
        single descriptive words.

        ``chunks`` are ``(slot, words)`` in priority order; slots render as
        ``lead adj core post..., mod, mod`` with at most one lead and one adj.
        """
        if len(core) > length:
            core = core[:length]
            while len(core) > 1 and core[-1].lower() in self._stop:
                core.pop()  # never end on "on a"
        budget = length - len(core)
        picked: dict[str, list[list[str]]] = {"lead": [], "adj": [], "post": [], "mod": []}
        used = {w.lower() for w in core}  # content words so far: no "bold bold", no repeats
        for slot, words in chunks:
            content = {w.lower() for w in words} - self._stop
            if len(words) > budget or content & used or (slot in ("lead", "adj") and picked[slot]):
                continue
            picked[slot].append(words)
            used |= content
            budget -= len(words)
        mods = [" ".join(w) for w in picked["mod"]]
        spare = [f for f in fillers if f not in used]
        rng.shuffle(spare)
        while budget > 0:
            if budget >= 3 and len(spare) >= 2 and rng.random() < 0.5:
                mods.append(f"{spare.pop()} and {spare.pop()}")  # "soft and airy"
                budget -= 3
            else:
                mods.append(spare.pop() if spare else rng.choice(fillers))
                budget -= 1
        head = [*picked["lead"], *picked["adj"], core, *picked["post"]]
        return ", ".join([" ".join(w for chunk in head for w in chunk), *mods])


# --------------------------------------------------------------------------- OpenAI teacher
