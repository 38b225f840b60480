"""The end of `make demo`: run a handful of queries through the pipeline and print a table."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from ..pipeline import Pipeline, SearchResult

__all__ = ["DEMO_QUERIES", "run_demo_queries", "format_results", "prompt_similarity",
           "NEXT_STEPS"]

DEMO_QUERIES = (
    "cozy cabin in the snow",
    "golden retriever puppy on the beach",
    "birthday party invitation",
    "summer sale poster",
    "neon city street at night",
    "wedding menu card",
)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_results(results: Sequence[SearchResult], top: int = 3) -> str:
    """A readable table: query, intent, prompt per task, path, top results, latency."""
    lines = [f"{'query':<36} {'intent':<9} {'task':<9} {'path':<8} {'ms':>7}  prompt → top results",
             "-" * 118]
    for res in results:
        rw = res.rewrite
        first = True
        for m in res.modalities:
            head = (f"{_cut(res.query, 36):<36} {rw.intent:<9}" if first else " " * 46)
            ms = f"{res.timings_ms['total']:7.1f}" if first else " " * 7
            lines.append(f"{head} {m.task:<9} {m.path:<8} {ms}  "
                         + _cut(f'"{m.prompt}"', 60))
            if m.error:
                found = f"({m.error})"
            else:
                found = ", ".join(
                    f"{r.id} {_cut(str(r.fields.get('title') or ''), 28)}".strip()
                    for r in m.results[:top]) or "(no results)"
            for i, chunk in enumerate(textwrap.wrap(found, 70) or [""]):
                lines.append(" " * 73 + ("→ " if i == 0 else "  ") + chunk)
            first = False
    return "\n".join(lines)


def run_demo_queries(pipeline: Pipeline, queries: Sequence[str] = DEMO_QUERIES,
                     k: int = 5) -> list[SearchResult]:
    """Search every query (generous deadline: the demo shows what the model writes)."""
    return [pipeline.search(q, k=k, deadline_ms=60_000) for q in queries]


def prompt_similarity(results: Sequence[SearchResult], encoder) -> dict[str, float | int]:
    """Mean embedding cosine of each model-written prompt to its query (does it keep the
    query's meaning?) over the prompts that did not fall back to the raw query."""
    import numpy as np

    pairs = [(r.query, p.prompt) for r in results for p in r.rewrite.prompts if p.path != "raw"]
    if not pairs or encoder is None:
        return {"prompts": len(pairs), "mean": float("nan")}
    q = encoder.encode([a for a, _ in pairs])
    p = encoder.encode([b for _, b in pairs])
    return {"prompts": len(pairs), "mean": float(np.mean((q * p).sum(axis=1)))}


NEXT_STEPS = """\
Next steps
  start the service:   .venv/bin/udrl --config {config} --workspace {ws} serve --port 8080
                       curl -s localhost:8080/v1/search -H 'content-type: application/json' \\
                            -d '{{"query": "cozy cabin in the snow"}}'
  a real teacher LLM:  set [teacher] kind = "openai" and base_url = <OpenAI-compatible URL>
                       (vLLM, llama.cpp server, Ollama) in the TOML, then `udrl distill`
  pretrained GPT-2:    [train] base_model = "gpt2" (or a local GPT-2 directory), `udrl train`
  real CLIP weights:   [index] clip_pretrained = "laion2b_s34b_b79k" (or a checkpoint path),
                       then `udrl index images <catalogue>`
  The demo runs offline: its CLIP has random weights, so image results are not meaningful."""
