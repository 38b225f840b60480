"""Run the benchmark sections and keep their latest results (the entry of ``make bench``).

    python -m bench.run                          # every available section, full size
    python -m bench.run --quick                  # smaller sizes (smoke run)
    python -m bench.run --only index_templates   # some sections (comma-separated)

A section is a module ``bench/<name>.py`` with ``run(quick: bool = False) -> dict``; list its
name in ``SECTIONS`` to add it. A listed section whose module does not exist yet is skipped.
A section that raises is recorded as ``{"error": "Type: message"}`` and the others still run
(the exit status is then 1).

Results are merged into ``bench/results.json``: sections not run this time keep their
previous entry; each entry records its date, quick/full mode, seconds and the machine
(CPU model, cores, RAM, torch/faiss versions, GPU). ``bench/results.md`` is rendered from the
whole file: one table per section, nested dicts flattened to dotted row names.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = [
    "SECTIONS",
    "available_sections",
    "machine_info",
    "main",
    "merge_results",
    "render_markdown",
    "run_sections",
]

# Benchmark sections in run order; each is the module bench/<name>.py. Planned ones are
# skipped until their module exists.
SECTIONS: tuple[str, ...] = ("index_images", "index_templates", "generation", "service",
                             "retrieval", "scale")
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


def _module(name: str) -> str:
    return f"{__package__ or 'bench'}.{name}"


def available_sections() -> list[str]:
    """Names in ``SECTIONS`` whose module exists (it is not imported here)."""
    return [s for s in SECTIONS if importlib.util.find_spec(_module(s)) is not None]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, logical and usable cores, RAM (GiB), Python, torch, faiss and GPU."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": None,
        "faiss": None,
        "gpu": None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info


def _run_one(name: str, quick: bool) -> tuple[dict[str, Any], bool]:
    """(entry fields, ok) for one section; exceptions become ``{"error": ...}``."""
    t0 = time.perf_counter()
    try:
        result = importlib.import_module(_module(name)).run(quick=quick)
        if not isinstance(result, dict):
            raise TypeError(f"bench.{name}.run returned {type(result).__name__}, not a dict")
        out, ok = {"result": result}, True
    except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
        traceback.print_exc(file=sys.stderr)
        out, ok = {"error": f"{type(e).__name__}: {e}"}, False
    return {"seconds": round(time.perf_counter() - t0, 1), **out}, ok


def run_sections(names: Sequence[str], quick: bool = False) -> tuple[dict[str, Any], bool]:
    """Run ``names`` in order, printing progress.

    Returns:
        ({name: {"date", "quick", "seconds", "machine", "result" | "error"}}, all succeeded).
    """
    machine = machine_info()
    entries, all_ok = {}, True
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ({'quick' if quick else 'full'}) ...", flush=True)
        fields, ok = _run_one(name, quick)
        entries[name] = {"date": _now(), "quick": quick, "machine": machine, **fields}
        status = "done" if ok else f"FAILED ({fields['error']})"
        print(f"[{i}/{len(names)}] {name} {status} in {fields['seconds']} s", flush=True)
        all_ok &= ok
    return entries, all_ok


def merge_results(previous: dict[str, Any], entries: dict[str, Any]) -> dict[str, Any]:
    """``previous`` results file with ``entries`` replacing the sections they name."""
    sections = dict(previous.get("sections", {}))
    sections.update(entries)
    return {"updated": _now(), "sections": sections}


def _cell(value: Any) -> str:
    if value is None or value == {} or value == []:
        text = "—"
    elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        text = ", ".join(_cell(v) for v in value)
    elif isinstance(value, (dict, list, bool)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    elif isinstance(value, float):  # sections round their own numbers; just keep it short
        text = f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts to (dotted name, leaf value) rows, in insertion order."""
    if isinstance(value, dict) and value:
        rows: list[tuple[str, Any]] = []
        for k, v in value.items():
            rows += _rows(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    return [(prefix or "value", value)]


def _machine_line(m: dict[str, Any]) -> str:
    parts = [f"{m.get('cpu')}", f"{m.get('cores')} cores", f"{m.get('ram_gib')} GiB RAM"]
    parts += [f"{k} {m[k]}" for k in ("gpu", "torch", "faiss") if m.get(k)]
    return ", ".join(parts)


def render_markdown(results: dict[str, Any]) -> str:
    """results.json as Markdown: per section a header line and a name | value table."""
    updated = results.get("updated", "?")
    out = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench.run` from `{RESULTS_JSON}` next to this file.",
        f"Updated {updated}; each section shows its latest run.",
    ]
    for name, entry in results.get("sections", {}).items():
        mode = "quick" if entry.get("quick") else "full"
        when = f"{entry.get('date', '?')} · {mode} · {entry.get('seconds', '?')} s"
        out += [
            "",
            f"## {name}",
            "",
            f"{when} · {_machine_line(entry.get('machine') or {})}",
            "",
            "| name | value |",
            "|---|---|",
        ]
        body = {"error": entry["error"]} if "error" in entry else entry.get("result", {})
        out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in _rows(body)]
    return "\n".join(out) + "\n"


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)  # Path and anything else


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated results file


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", default="", help="comma-separated sections, e.g. index_templates")
    ap.add_argument("--out", type=Path, default=BENCH_DIR, help="folder for results.json/.md")
    args = ap.parse_args(argv)
    available = available_sections()
    args.sections = available
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in SECTIONS]
        if unknown:
            ap.error(f"unknown section(s) {unknown}; allowed: {', '.join(SECTIONS)}")
        missing = [s for s in wanted if s not in available]
        if missing:
            ap.error(f"section(s) {missing} have no module yet; available: {', '.join(available)}")
        args.sections = wanted
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections, merge and write results; 1 when a section failed, else 0."""
    args = _parse(argv)
    skipped = [s for s in SECTIONS if s not in available_sections()]
    if skipped and not args.only:
        print(f"skipping {', '.join(skipped)}: no bench module yet", flush=True)
    entries, ok = run_sections(args.sections, args.quick)
    json_path, md_path = args.out / RESULTS_JSON, args.out / RESULTS_MD
    try:
        previous = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        previous = {}
    except ValueError as e:
        print(f"{json_path} is not valid JSON ({e}); starting a new one", file=sys.stderr)
        previous = {}
    results = merge_results(previous, entries)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(json_path, json.dumps(results, indent=2, ensure_ascii=False, default=_jsonable) + "\n")
    # render from the JSON round trip so the Markdown shows exactly what was stored
    _write(md_path, render_markdown(json.loads(json_path.read_text(encoding="utf-8"))))
    print(f"wrote {json_path} and {md_path}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
