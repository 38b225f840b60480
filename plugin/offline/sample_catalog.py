"""A generated sample catalogue for the offline demo: small drawn images and design templates.

``write_sample_catalog(out_dir)`` writes::

    out_dir/
        images/img-00000.png ...   96x96 PNGs: a gradient sky, a ground band and shapes whose
                                   form follows the subject's category and whose colours follow
                                   the colour words of its title and palette
        images.jsonl               manifest for ``indexers.catalog_images.load_catalog``
        templates.jsonl            catalogue for ``indexers.catalog_templates.read_templates``
        sample_catalog.json        what was generated (seed, sizes, counts, file names)

Titles, tags and descriptions come from the builtin vocabularies (``rewriters/assets/vocab.json``,
the ones the builtin teacher and query generator use), so demo queries find related items. The
same seed always gives byte-identical files.

The whole folder is written under a temporary name beside ``out_dir`` and renamed into place
at the end, so a stopped run never leaves a manifest pointing at missing files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


from rewriters.errors import ConfigError, DataError
from rewriters.files import share
from rewriters.queries import load_vocab

from .sample_images import _check_size, _words, draw_sample_image

__all__ = [
    "IMAGE_MANIFEST",
    "STAMP_FILE",
    "TEMPLATE_CATALOG",
    "draw_sample_image",
    "sample_image_entries",
    "sample_template_entries",
    "write_sample_catalog",
]

IMAGE_DIR = "images"
IMAGE_MANIFEST = "images.jsonl"
TEMPLATE_CATALOG = "templates.jsonl"
STAMP_FILE = "sample_catalog.json"  # also marks a folder this module may replace
_GENERATOR = "udrl-sample-catalog/1"  # bump when the output for a seed changes

_MAX_ITEMS = 100_000
_UNIQUE_TRIES = 50  # draws per item before accepting a repeated title

# Colour words found in titles and palette phrases -> RGB.
def _shares_words(*phrases: str) -> bool:
    """True when phrases repeat a word ("vintage vintage camera")."""
    seen: set[str] = set()
    for p in phrases:
        w = set(_words(p))
        if w & seen:
            return True
        seen |= w
    return False


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ITEMS:
        raise ConfigError(f"{name}={value!r} must be a whole number in 0..{_MAX_ITEMS}")
    return value


def _capitalise(phrase: str) -> str:
    """"30th birthday party" -> "30th Birthday Party" (str.title would give "30Th")."""
    return " ".join(w[:1].upper() + w[1:] for w in phrase.split())


def _a(phrase: str) -> str:
    """The indefinite article for ``phrase`` (by spelling, good enough for the vocabulary)."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _dedupe(items: list[str]) -> list[str]:
    return [t for t in dict.fromkeys(i.strip() for i in items) if t]


# --------------------------------------------------------------------------------- entries


def sample_image_entries(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Manifest rows (without ``path``) for ``n`` sample images.

    Each row: ``id`` (``img-00000``...), ``title`` ("fluffy corgi in the snow"), ``tags``,
    ``license`` and the keys ``category``, ``subject``, ``palette`` and ``setting`` (the
    manifest loader keeps them under ``meta``; the drawing reads them).

    Args:
        n: how many, 0..100000.
        seed: the same seed always gives the same rows.
    """
    _check_count("n_images", n)
    vocab = load_vocab()
    img = vocab["image"]
    stop = set(vocab["stopwords"])
    cats = list(img["categories"].items())
    weights = [len(c["subjects"]) for _, c in cats]
    rng = random.Random(f"udrl-sample-images:{seed}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(n):
        for _ in range(_UNIQUE_TRIES):
            name, cat = rng.choices(cats, weights=weights)[0]
            subject = rng.choice(cat["subjects"])
            adjective = rng.choice(cat["adjectives"]) if rng.random() < 0.5 else ""
            setting = rng.choice(cat["settings"]) if rng.random() < 0.6 else ""
            if _shares_words(adjective, subject, setting):
                continue
            title = " ".join(p for p in (adjective, subject, setting) if p)
            if title not in seen:
                break
        seen.add(title)
        palette = rng.choice(img["colours"])
        mood = rng.choice(img["moods"]) if rng.random() < 0.3 else ""
        style = rng.choice(img["styles"]) if rng.random() < 0.3 else ""
        place = " ".join(w for w in _words(setting) if w not in stop)
        rows.append({
            "id": f"img-{i:05d}",
            "title": title,
            "tags": _dedupe([name, subject, adjective, place, palette, mood, style]),
            "license": "cc0",
            "category": name,
            "subject": subject,
            "setting": setting,
            "palette": palette,
        })
    return rows


def sample_template_entries(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Catalogue rows for ``n`` sample design templates.

    Each row: ``id`` (``tpl-00000``...), ``title`` ("Minimalist Birthday Party Invitation"),
    ``description`` (style, typography, palette, layout, elements, a group detail, mood and
    format from the vocabulary), ``tags`` (occasion, kind, style, vocabulary group) and
    ``category`` (the kind: "invitation", "resume", "menu", "instagram post"...).

    Args:
        n: how many, 0..100000.
        seed: the same seed always gives the same rows.
    """
    _check_count("n_templates", n)
    tpl = load_vocab()["template"]
    groups = list(tpl["groups"].items())
    weights = [len(g["occasions"]) for _, g in groups]
    rng = random.Random(f"udrl-sample-templates:{seed}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(n):
        for _ in range(_UNIQUE_TRIES):
            name, grp = rng.choices(groups, weights=weights)[0]
            occasion, kind = rng.choice(grp["occasions"]), rng.choice(grp["kinds"])
            style = rng.choice(tpl["styles"]) if rng.random() < 0.8 else ""
            if _shares_words(style, occasion, kind):
                continue
            title = _capitalise(" ".join(p for p in (style, occasion, kind) if p))
            if title not in seen:
                break
        seen.add(title)
        element, extra = rng.sample(tpl["elements"], 2)
        detail = rng.choice(grp["details"])
        typography, palette = rng.choice(tpl["typography"]), rng.choice(tpl["palettes"])
        layout, fmt, mood = (rng.choice(tpl[k]) for k in ("layouts", "formats", "moods"))
        what = f"{style} {kind}" if style else kind
        if palette.split()[-1] in ("palette", "gradient"):
            palette = f"{_a(palette)} {palette}"
        sentences = [
            f"{_a(what).title()} {what} for {occasion}, {layout} with {typography} in {palette}.",
            f"Features {element}, {extra} and {_a(detail)} {detail}.",
            f"{mood[:1].upper()}{mood[1:]}, {fmt}.",
        ]
        if rng.random() < 0.5:
            sentences[1], sentences[2] = sentences[2], sentences[1]
        rows.append({
            "id": f"tpl-{i:05d}",
            "title": title,
            "description": " ".join(sentences),
            "tags": _dedupe([occasion, kind, style, name.replace("_", " & ")]),
            "category": kind,
        })
    return rows


# --------------------------------------------------------------------------------- drawing


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _check_replaceable(out: Path) -> None:
    """Only a folder this module wrote (it holds the stamp file) or an empty one is replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"sample catalogue target {out} is a file; give a folder path")
    if not (out / STAMP_FILE).is_file() and any(out.iterdir()):
        raise DataError(
            f"{out} exists and is not a sample catalogue (no {STAMP_FILE}); it would be "
            "replaced whole, so give a new or empty folder"
        )


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an older sample there."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def write_sample_catalog(
    out_dir: str | os.PathLike[str],
    n_images: int = 300,
    n_templates: int = 500,
    seed: int = 0,
    image_size: int = 96,
) -> dict[str, Any]:
    """Write a sample image catalogue and template catalogue into ``out_dir``.

    ``out_dir`` is replaced as a whole: it must be new, empty, or a sample catalogue written
    here before. Files are built in a hidden sibling folder and renamed into place at the end;
    a run that is stopped leaves either the previous catalogue or none, never a partial one.

    Args:
        out_dir: the folder to (re)create.
        n_images: PNG images and manifest rows, 0..100000 (300 take about a second).
        n_templates: template rows, 0..100000.
        seed: the same seed always gives byte-identical files.
        image_size: image side in pixels, 16..1024.

    Returns:
        Summary: ``dir``, ``image_manifest``, ``template_catalog`` (absolute paths), ``images``,
        ``templates``, ``seed``, ``image_size``, ``generator`` and ``seconds``.

    Raises:
        ConfigError: a count or size out of range.
        DataError: ``out_dir`` is a file, or a non-empty folder this module did not write.
    """
    t0 = time.perf_counter()
    images = sample_image_entries(n_images, seed)
    templates = sample_template_entries(n_templates, seed)
    _check_size(image_size)
    out = Path(out_dir).expanduser().resolve()
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*-*"):  # left by a run that was killed
        if stale.is_dir() and (".tmp-" in stale.name or ".old-" in stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        share(tmp)  # mkdtemp's 0700 would survive the rename
        (tmp / IMAGE_DIR).mkdir()
        manifest = []
        for row in images:
            rel = f"{IMAGE_DIR}/{row['id']}.png"
            draw_sample_image(row, image_size, seed).save(tmp / rel, compress_level=1)
            manifest.append({"id": row["id"], "path": rel, **{k: v for k, v in row.items()
                                                              if k != "id"}})
        _write_jsonl(tmp / IMAGE_MANIFEST, manifest)
        _write_jsonl(tmp / TEMPLATE_CATALOG, templates)
        stamp = {"generator": _GENERATOR, "seed": seed, "image_size": image_size,
                 "images": len(images), "templates": len(templates),
                 "image_manifest": IMAGE_MANIFEST, "template_catalog": TEMPLATE_CATALOG}
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "dir": str(out),
        "image_manifest": str(out / IMAGE_MANIFEST),
        "template_catalog": str(out / TEMPLATE_CATALOG),
        **{k: stamp[k] for k in ("images", "templates", "seed", "image_size", "generator")},
        "seconds": round(time.perf_counter() - t0, 3),
    }
