"""Screenshots of the search page and the eval report for the docs, from a trained workspace.

    make demo                                   # builds demo-workspace/ (about 10 minutes)
    .venv/bin/python docs/screenshots.py        # writes docs/img/search-page.png, eval-report.png

It needs Debian's ``chromium`` and ``chromium-driver`` and the dev extras (Selenium), like the
browser test. Steps:

1. an evaluation set drawn from the workspace's sample template catalogue: each query is a tag
   that 2-6 templates carry, and those templates are its relevant items (grade 2 where the tag
   is in the title, else 1); seeded, written to ``<workspace>/screenshots/``;
2. ``udrl eval`` over it (template index, every mode), which writes ``report.html``;
3. ``udrl serve`` on the workspace, the page at ``/?q=<query>`` and the report sorted by the
   change of the fused mode against raw, each saved as a PNG.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository root holds tests/
    sys.path.insert(0, str(ROOT))

from tests.plugin.browser import served, start_browser, udrl_command, wait_for


def tag_queries(templates: Path, out: Path, n: int = 40, seed: int = 7) -> tuple[Path, Path]:
    """Write ``queries.tsv`` and ``qrels.txt`` (TREC) of ``n`` tag queries; return both paths."""
    rows = [json.loads(line) for line in templates.read_text().splitlines() if line.strip()]
    carriers: dict[str, list[dict]] = {}
    for r in rows:
        for tag in dict.fromkeys(t.casefold() for t in r.get("tags", [])):
            carriers.setdefault(tag, []).append(r)
    tags = sorted(t for t, rs in carriers.items() if 2 <= len(rs) <= 6)
    picked = random.Random(seed).sample(tags, min(n, len(tags)))
    out.mkdir(parents=True, exist_ok=True)
    queries, qrels = out / "queries.tsv", out / "qrels.txt"
    queries.write_text("".join(f"t{i:03d}\t{t}\n" for i, t in enumerate(picked)))
    qrels.write_text("".join(
        f"t{i:03d} 0 {r['id']} {2 if t in r['title'].casefold() else 1}\n"
        for i, t in enumerate(picked) for r in carriers[t]))
    return queries, qrels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, default=ROOT / "demo-workspace")
    ap.add_argument("--config", type=Path, default=ROOT / "plugin" / "presets" / "demo.toml")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--query", default="birthday party invitation")
    args = ap.parse_args(argv)
    ws = args.workspace.resolve()
    if not (ws / "rewriter").is_dir():
        ap.error(f"{ws} has no trained rewriter; run `make demo` first")
    args.out.mkdir(parents=True, exist_ok=True)

    queries, qrels = tag_queries(ws / "catalog" / "templates.jsonl", ws / "screenshots")
    report_dir = ws / "reports" / "eval-screenshots"
    subprocess.run(udrl_command() + ["--config", str(args.config), "--workspace", str(ws),
                                     "eval", str(queries), str(qrels), "--task", "template",
                                     "--out", str(report_dir), "--no-relevance"],
                   check=True, stdout=subprocess.DEVNULL)

    driver = start_browser(1440, 1500)
    try:
        with served(ws, args.config) as url:
            driver.get(f"{url}/?{urlencode({'q': args.query})}")
            wait_for(driver, "return document.querySelectorAll('li.hit').length > 0",
                     timeout_s=120, what="the results")
            wait_for(driver, "const t = Array.from(document.querySelectorAll('img.thumb')); "
                             "return t.length === 0 || t.every(i => i.complete && "
                             "(i.naturalWidth > 0 || i.classList.contains('missing')))",
                     what="the thumbnails")
            driver.save_screenshot(str(args.out / "search-page.png"))
        driver.set_window_size(1440, 1700)
        driver.get((report_dir / "report.html").as_uri())
        driver.find_element("xpath", "//th/button[normalize-space()='Δ fused']").click()
        driver.execute_script(  # the per-query table, sorted, under the sticky buttons
            "const h = Array.from(document.querySelectorAll('h2'))"
            ".find(e => e.textContent === 'Per query'); window.scrollTo(0, h.offsetTop - 60)")
        driver.save_screenshot(str(args.out / "eval-report.png"))
    finally:
        driver.quit()
    print(f"wrote {args.out / 'search-page.png'} and {args.out / 'eval-report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
