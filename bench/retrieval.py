"""Retrieval on a real catalogue: the documented ``udrl`` commands on the tabler benchmark.

    python -m bench.run --only retrieval     # as a section of `make bench`
    python -m bench.retrieval [--quick]      # alone; prints the JSON

Data: ``bench.datasets`` builds the tabler benchmark (5,491 icons, 300 ``mismatch`` and 300
``match`` tag queries, a click log of every other tag) into ``<cache>/bench/tabler/data``, with
``<cache>`` = ``$UDRL_DATA_CACHE`` or ``~/.cache/udrl-search``.

Workspace ``<cache>/bench/tabler/ws``, built with the shipped defaults and reused while
``bench_stamp.json`` names the same data (sha256 of each file) and a trained model is there; the
git commit at build time is recorded but a new commit does not rebuild (``UDRL_BENCH_RETRAIN=1``
does)::

    udrl -w WS index templates DATA/catalog.jsonl --log DATA/log.tsv
    udrl -w WS distill --teacher catalog --queries DATA/log.tsv
    udrl -w WS train                     (its last step fits the rewrite channel's weights;
                                          a cached model without them runs `udrl fit-rewrite`)

Every ``udrl`` call writes its output to ``WS/bench.log``; stderr gets one line per step. Then,
per test slice, ``udrl eval`` in modes raw, dense, hybrid, rewrite and fused; in-process, the
catalog teacher's prompts through BM25 (the ceiling the student is distilled towards) and the
MiniLM cosine of the student's prompts to their queries; ``udrl eval-rewriter`` for length
control; and the UDRL rounds from ``WS/rewriter/metrics.json``. ``targets`` says which goals hold.

``quick``: never trains (skipped without a cached model); the first 50 queries of each slice and
50 eval-rewriter commands, written under ``WS/quick`` so the full reports stay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.retrieval_report import (
    MODES,
    compute_targets,
    paired,
    rounds_summary,
    slice_summary,
)

__all__ = [
    "DATA_FILES", "MODES", "SLICES", "compute_targets", "ensure_data", "file_digests",
    "model_ready", "paired", "reuse_decision", "rounds_summary", "run", "slice_summary",
    "trim_queries",
]

REPO = Path(__file__).resolve().parents[1]
SLICES = ("mismatch", "match")
DATA_FILES = ("catalog.jsonl", "log.tsv", *(f"{s}/{f}" for s in SLICES
                                            for f in ("queries.tsv", "qrels.txt")))
STAMP = "bench_stamp.json"
LOG = "bench.log"
QUICK_QUERIES = 50  # queries per slice in a quick run
REWRITER_COMMANDS = {False: 200, True: 50}  # eval-rewriter commands, by quick
SKIPPED = {"skipped": "no cached model; run `python -m bench.run --only retrieval` once "
                      "(about 20-40 min)"}


# -- the cached data and workspace ------------------------------------------------------------

def ensure_data(data: Path, icons_cache: Path) -> bool:
    """Build the tabler benchmark into ``data`` unless every file of ``DATA_FILES`` is there.

    Args:
        icons_cache: folder of the icons file (fetched with npm when it is not there yet).

    Returns:
        True when it was built now.
    """
    if all((data / f).is_file() for f in DATA_FILES):
        return False
    from bench import datasets as ds

    dataset = ds.DATASETS["tabler"]
    bench = ds.build_benchmark(ds.load_icons(ds.fetch_icons(icons_cache, dataset)))
    tmp = data.with_name(f".{data.name}.tmp")
    for stale in (tmp, data):
        if stale.exists():
            shutil.rmtree(stale)
    ds.write_benchmark(bench, tmp, dataset, "bench.retrieval (seed 13, 300 queries per set)")
    os.replace(tmp, data)  # an interrupted build never leaves a half-written data folder
    return True


def file_digests(data: Path) -> dict[str, str]:
    """sha256 of each of ``DATA_FILES`` under ``data`` (relative path → hex digest)."""
    out = {}
    for name in DATA_FILES:
        h = hashlib.sha256()
        with (data / name).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def model_ready(ws: Path) -> bool:
    """True when ``ws`` holds a trained rewriter (``udrl train`` writes metrics.json last)."""
    return (ws / "rewriter" / "metrics.json").is_file()


def reuse_decision(stamp: Mapping[str, Any] | None, digests: Mapping[str, str], has_model: bool,
                   retrain: bool) -> tuple[bool, str]:
    """Whether the cached workspace can be reused (pure).

    Only the data and an explicit retrain invalidate it; the recorded commit does not.

    Returns:
        (reuse, why) — ``why`` is a short reason for the log.
    """
    if retrain:
        return False, "UDRL_BENCH_RETRAIN=1"
    if not has_model:
        return False, "no trained model in the workspace"
    if stamp is None:
        return False, f"no {STAMP} in the workspace"
    if dict(stamp.get("data") or {}) != dict(digests):
        changed = sorted(k for k in set(digests) | set(stamp.get("data") or {})
                         if (stamp.get("data") or {}).get(k) != digests.get(k))
        return False, f"data changed since the build: {', '.join(changed)}"
    return True, f"model built {stamp.get('built', '?')} at commit {stamp.get('commit')}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out + ("+dirty" if dirty.strip() else "") if out else None


def _model_version(ws: Path) -> str | None:
    return (_read_json(ws / "rewriter" / "udrl.json") or {}).get("version")


def _udrl(ws: Path, args: Sequence[str], label: str) -> float:
    """Run ``udrl -w WS ARGS`` with its output appended to ``WS/bench.log``; wall seconds."""
    exe = Path(sys.executable).parent / "udrl"
    ws.mkdir(parents=True, exist_ok=True)
    log_path = ws / LOG
    cmd = [str(exe), "-w", str(ws), *map(str, args)]
    print(f"retrieval: {label} ...", file=sys.stderr, flush=True)
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            check=False).returncode
        seconds = time.perf_counter() - t0
        fh.write(f"[exit {rc} after {seconds:.1f} s]\n")
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        raise RuntimeError(f"`udrl {' '.join(map(str, args[:2]))}` exited with {rc} after "
                           f"{seconds:.0f} s; see {log_path}: {' | '.join(tail)}")
    print(f"retrieval: {label} done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds


def build_workspace(data: Path, ws: Path, digests: Mapping[str, str]) -> dict[str, Any]:
    """Index, distil and train from scratch in ``ws`` (emptied first); writes and returns the
    stamp: data digests, commit, date and each step's wall seconds."""
    if ws.exists():
        shutil.rmtree(ws)  # distill resumes an existing file: start clean
    steps = {
        "index": _udrl(ws, ["index", "templates", data / "catalog.jsonl", "--log",
                            data / "log.tsv"], "index templates"),
        "distill": _udrl(ws, ["distill", "--teacher", "catalog", "--queries", data / "log.tsv"],
                         "distill"),
        "train": _udrl(ws, ["train"], "train"),
    }
    stamp = {"data": dict(digests), "commit": _git_commit(),
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "steps_s": {k: round(v, 1) for k, v in steps.items()}}
    (ws / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return stamp


def trim_queries(src: Path, dst: Path, n: int) -> int:
    """Write the first ``n`` non-blank lines of the query file ``src`` to ``dst``; how many."""
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()][:n]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
    return len(lines)


# -- the in-process measurements ------------------------------------------------------------------

def _read_queries(path: Path) -> list[tuple[str, str]]:
    rows = [ln.split("\t", 1) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [(qid.strip(), text.strip()) for qid, text in rows]


def _read_qrels(path: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for ln in path.read_text(encoding="utf-8").splitlines():
        if ln.strip():
            qid, _, doc, grade = ln.split()
            out.setdefault(qid, {})[doc] = float(grade)
    return out


def teacher_ndcg(settings, queries: Sequence[tuple[str, str]],
                 qrels: Mapping[str, Mapping[str, float]]) -> float | None:
    """Mean nDCG@10 of the catalog teacher's template prompt for each query, searched with the
    template index (BM25), over the queries that have a relevant judgement (None: none has)."""
    from plugin.hook import open_indexes
    from plugin.jobs import make_teacher
    from rewriters.retrieval_return import ndcg_at_k

    judged = [(qid, text) for qid, text in queries if any(g > 0 for g in qrels.get(qid, {}).values())]
    teacher = make_teacher(settings)
    length = settings.generation.template_length

    async def ask() -> list[str]:
        return [(await teacher.generate(text, None, [("template", length)])).prompts[0][1]
                for _, text in judged]

    prompts = asyncio.run(ask())
    index = open_indexes(settings, clip=False)[0]
    try:
        hits = index.search_batch(prompts, 10)
    finally:
        index.close()
    scores = [ndcg_at_k([h.id for h in hs], qrels[qid], 10) for (qid, _), hs in zip(judged, hits)]
    return sum(scores) / len(scores) if scores else None


def _eval_prompts(eval_dir: Path) -> dict[str, str] | None:
    """qid → rewrite-mode prompt from the eval's per_query.jsonl, when it records prompts."""
    rows = [json.loads(ln) for ln in (eval_dir / "per_query.jsonl").read_text().splitlines()
            if ln.strip()] if (eval_dir / "per_query.jsonl").is_file() else []
    got = {r["qid"]: (r.get("modes", {}).get("rewrite") or {}).get("prompt") for r in rows}
    return got if got and all(isinstance(p, str) for p in got.values()) else None


def prompt_similarity(settings, queries: Mapping[str, Sequence[tuple[str, str]]],
                      recorded: Mapping[str, Mapping[str, str] | None]) -> dict[str, Any]:
    """Mean MiniLM cosine of each student template prompt to its query, overall and per slice.

    Args:
        queries: slice → (qid, query) pairs.
        recorded: slice → qid → prompt from the eval, or None: the prompts are generated again
            through the pipeline (greedy, as ``udrl eval`` does), one pipeline for all slices;
            those that fell back to the raw query are left out. The pipeline's retries sample
            without a seed, so a query whose greedy prompt was refused may get another prompt.
    """
    from indexers.dense import load_text_encoder

    pairs: dict[str, list[tuple[str, str]]] = {}
    fallbacks = 0
    pipe = None
    try:
        for name, qs in queries.items():
            rec = recorded.get(name)
            if rec is not None:
                pairs[name] = [(text, rec[qid]) for qid, text in qs if qid in rec]
                continue
            if pipe is None:
                from plugin.hook import load_pipeline

                pipe = load_pipeline(settings)
            pairs[name] = []
            for _, text in qs:
                p = pipe.rewrite(text, "template", deadline_ms=60_000).prompts[0]
                if p.path == "raw":
                    fallbacks += 1
                else:
                    pairs[name].append((text, p.prompt))
    finally:
        if pipe is not None:
            pipe.close()
    enc = load_text_encoder(settings.index.text_model, settings.device)
    cos = {}
    for name, rows in pairs.items():
        q = enc.encode([a for a, _ in rows])  # (N, 384), unit rows
        p = enc.encode([b for _, b in rows])
        cos[name] = (q * p).sum(axis=1).tolist()
    every = [c for cs in cos.values() for c in cs]
    return {"mean": sum(every) / len(every) if every else None, "prompts": len(every),
            "fallbacks": fallbacks,
            "by_slice": {k: sum(v) / len(v) if v else None for k, v in cos.items()},
            "source": "pipeline.rewrite" if pipe is not None else "eval per_query.jsonl"}


# -- the section -------------------------------------------------------------------------------------

def _r(x: Any, key: str = "") -> Any:
    """Floats to 4 decimals (p-values to 3 significant digits), through nested dicts."""
    if isinstance(x, float):
        return float(f"{x:.3g}") if key == "p_value" else round(x, 4)
    if isinstance(x, dict):
        return {k: _r(v, k) for k, v in x.items()}
    return x


def _settings_sources() -> dict[str, Any]:
    """What besides the shipped defaults feeds the settings (the same for the subprocesses)."""
    own = {"UDRL_DATA_CACHE", "UDRL_BENCH_RETRAIN"}
    config = os.environ.get("UDRL_CONFIG") or (
        "udrl.toml" if Path("udrl.toml").is_file() else None)
    return {"config_file": config,
            "env": sorted(k for k in os.environ if k.startswith("UDRL_") and k not in own)}


def run(quick: bool = False, cache: Path | None = None) -> dict:
    """Build or reuse the workspace, evaluate both slices and check the targets.

    Args:
        quick: no training; 50 queries per slice; skipped when no model is cached.
        cache: cache root (default ``$UDRL_DATA_CACHE`` or ``~/.cache/udrl-search``).

    Returns:
        ``{"slices": {slice: slice_summary}, "similarity", "length_control", "rounds",
        "workspace", "steps_s", "targets", ...}`` (see the module docstring).
    """
    from plugin.config import load_settings

    root = Path(cache or os.environ.get("UDRL_DATA_CACHE")
                or Path.home() / ".cache" / "udrl-search").expanduser().resolve()
    data, ws = root / "bench" / "tabler" / "data", root / "bench" / "tabler" / "ws"
    if quick and not model_ready(ws):
        return dict(SKIPPED)
    ensure_data(data, root / "datasets")
    digests = file_digests(data)
    stamp = _read_json(ws / STAMP)
    if quick:
        reused, why = True, "quick run: the cached model, never retrained"
    else:
        reused, why = reuse_decision(stamp, digests, model_ready(ws),
                                     os.environ.get("UDRL_BENCH_RETRAIN") == "1")
    print(f"retrieval: {'reusing' if reused else 'building'} {ws} ({why})", file=sys.stderr)
    if not reused:  # a quick run never builds
        stamp = build_workspace(data, ws, digests)
    stale = stamp is not None and stamp.get("data") != digests
    settings = load_settings(None, workspace=ws)
    fit_path = ws / "rewriter" / "fusion.json"
    if not quick and (_read_json(fit_path) or {}).get("model_version") != _model_version(ws):
        # a model trained before `udrl train` fitted the rewrite channel: the same step alone
        steps_fit = round(_udrl(ws, ["fit-rewrite"], "fit-rewrite"), 1)
    else:
        steps_fit = None
    slices, eval_queries, recorded = {}, {}, {}
    steps = dict((stamp or {}).get("steps_s") or {})
    if steps_fit is not None:
        steps["fit_rewrite"] = steps_fit
    for name in SLICES:
        queries, qrels = data / name / "queries.tsv", data / name / "qrels.txt"
        out = ws / f"eval-{name}"
        if quick:
            queries = ws / "quick" / name / "queries.tsv"
            trim_queries(data / name / "queries.tsv", queries, QUICK_QUERIES)
            out = ws / "quick" / f"eval-{name}"
        steps[f"eval_{name}"] = round(_udrl(ws, [
            "eval", queries, qrels, "--task", "template", "--modes", ",".join(MODES),
            "--out", out], f"eval {name}"), 1)
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        # `udrl eval` writes the rewrite-quality part beside report.json, not inside it
        report.setdefault("rewrite_quality", _read_json(out / "rewrite_quality.json") or {})
        qs = _read_queries(queries)
        t0 = time.perf_counter()
        t_ndcg = teacher_ndcg(settings, qs, _read_qrels(qrels))
        steps[f"teacher_{name}"] = round(time.perf_counter() - t0, 1)
        slices[name] = slice_summary(report, t_ndcg)
        eval_queries[name], recorded[name] = qs, _eval_prompts(out)
    t0 = time.perf_counter()
    similarity = prompt_similarity(settings, eval_queries, recorded)
    steps["similarity"] = round(time.perf_counter() - t0, 1)
    commands = REWRITER_COMMANDS[quick]
    rw_out = ws / "quick" / "reports" if quick else settings.reports_dir
    steps["eval_rewriter"] = round(_udrl(ws, ["eval-rewriter", "--commands", commands, "--out",
                                              rw_out], "eval-rewriter"), 1)
    rw = json.loads((rw_out / "eval_rewriter.json").read_text(encoding="utf-8"))
    length = {mode: {k: m.get(k) for k in ("length_mse", "within_2", "exact_length")}
              for mode, m in rw["modes"].items()}
    length["commands"] = rw.get("commands")
    rounds = rounds_summary(_read_json(ws / "rewriter" / "metrics.json") or {})
    train_s = steps.get("train")
    return _r({
        "slices": slices,
        "similarity": similarity,
        "length_control": length,
        "rounds": rounds,
        "rewrite_fit": _read_json(fit_path),
        "targets": compute_targets(slices, similarity["mean"], length.get("free-greedy"),
                                   rounds, train_s),
        "steps_s": steps,
        "workspace": {"path": str(ws), "reused": reused, "why": why, "stale_data": stale,
                      "commit": (stamp or {}).get("commit"), "built": (stamp or {}).get("built"),
                      "model_version": rw.get("version"), "engine": rw.get("engine"),
                      "settings": _settings_sources()},
        "quick": quick,
    })


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.retrieval",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="cached model only, 50 queries per slice")
    ap.add_argument("--cache", type=Path, help="cache root (default $UDRL_DATA_CACHE or "
                                               "~/.cache/udrl-search)")
    args = ap.parse_args(argv)
    print(json.dumps(run(quick=args.quick, cache=args.cache), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
