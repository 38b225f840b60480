"""Reading the retrieval bench's reports (pure): paired tests, slice summaries, UDRL rounds and
the targets the section checks. Used by ``bench.retrieval``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["METRIC", "MODES", "compute_targets", "paired", "rounds_summary", "slice_summary"]

METRIC = "ndcg@10"
MODES = ("raw", "dense", "hybrid", "rewrite", "fused")  # the udrl eval modes the bench runs


def paired(report: Mapping[str, Any], a: str, b: str, metric: str = METRIC) -> dict[str, Any]:
    """``a`` − ``b`` on ``metric`` with the report's paired test, seen from ``a``.

    Returns:
        ``{"delta", "p_value", "significant", "wins", "ties", "losses"}`` — wins count the
        queries where ``a`` scores higher; the test entry may list the pair either way round.
    """
    res = report["results"]
    out: dict[str, Any] = {"delta": res[a]["metrics"][metric] - res[b]["metrics"][metric]}
    for s in report.get("significance", []):
        if s["metric"] == metric and {s["a"], s["b"]} == {a, b}:
            wins, losses = (s["wins"], s["losses"]) if s["a"] == a else (s["losses"], s["wins"])
            out.update(p_value=s["p_value"], significant=s["significant"], wins=wins,
                       ties=s["ties"], losses=losses)
            break
    return out


def slice_summary(report: Mapping[str, Any], teacher_ndcg: float | None) -> dict[str, Any]:
    """One slice's numbers from a ``udrl eval`` report.json and the teacher's nDCG@10."""
    ndcg = {m: report["results"][m]["metrics"][METRIC] for m in MODES}
    ndcg["teacher"] = teacher_ndcg
    q = report.get("rewrite_quality", {}).get("rewrite", {})
    return {
        "queries": report["counts"]["evaluated"],
        METRIC: ndcg,
        "fused_minus_best_single": ndcg["fused"] - max(ndcg["raw"], ndcg["dense"]),
        "rewrite_contribution": paired(report, "fused", "hybrid"),
        "fused_vs_raw": paired(report, "fused", "raw"),
        "fused_vs_dense": paired(report, "fused", "dense"),
        "rewrite_over_teacher": (ndcg["rewrite"] / teacher_ndcg if teacher_ndcg else None),
        "rewrite_quality": {
            **{k: q.get(k) for k in ("count", "length_mse", "within_2", "fallback_rate",
                                     "distinct_2")},
            "relevance_by_bucket": {k: v for k, v in (q.get("relevance_by_bucket") or {}).items()
                                    if v is not None},
        },
    }


def rounds_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Round 0 and the final UDRL round from a rewriter's metrics.json (pure).

    ``final_above_round0`` compares the mean relevance at the top requested bucket; None when
    training ran no UDRL round (``train.rounds = 0``) or a bucket has no value.
    """
    rounds = list(metrics.get("rounds") or [])
    if not rounds:
        return {"count": 0, "final_above_round0": None}

    def pick(r: Mapping[str, Any]) -> dict[str, Any]:
        keep = ("round", "examples", "length_mse", "within_2", "relevance_by_bucket",
                "explore_mean_relevance", "explore_bucket_hit")
        return {k: r[k] for k in keep if k in r}

    first, last = rounds[0], rounds[-1]
    top = max((first.get("relevance_by_bucket") or {"4": None}), key=int)
    a = (first.get("relevance_by_bucket") or {}).get(top)
    b = (last.get("relevance_by_bucket") or {}).get(top)
    better = None if len(rounds) < 2 or a is None or b is None else b > a
    return {"count": len(rounds), "top_bucket": int(top), "round0": pick(first),
            "final": pick(last), "final_above_round0": better}


def _target(value: float | None, goal: str, ok: bool | None) -> dict[str, Any]:
    return {"value": value, "goal": goal, "pass": ok}


def compute_targets(slices: Mapping[str, Mapping[str, Any]], similarity: float | None,
                    length: Mapping[str, Any] | None, rounds: Mapping[str, Any],
                    train_s: float | None) -> dict[str, dict[str, Any]]:
    """Each goal with its value and pass/fail (pure); ``pass`` is None when it cannot be told.

    Args:
        slices: slice → :func:`slice_summary` output.
        similarity: mean MiniLM cosine of the student's prompts to their queries.
        length: eval-rewriter's free-greedy mode (``length_mse``, ``within_2``), or None.
        rounds: :func:`rounds_summary` output.
        train_s: wall seconds of ``udrl train`` when known.
    """
    def at_least(v: float | None, bound: float) -> bool | None:
        return None if v is None else v >= bound

    out: dict[str, dict[str, Any]] = {}
    mm, m = slices.get("mismatch"), slices.get("match")
    if mm is not None:
        n = mm[METRIC]
        out["mismatch.fused_ge_best_single"] = _target(
            mm["fused_minus_best_single"], "fused - max(raw, dense) >= 0",
            mm["fused_minus_best_single"] >= 0)
        out["mismatch.fused_ge_0.45"] = _target(n["fused"], ">= 0.45", n["fused"] >= 0.45)
        d = mm["rewrite_contribution"]["delta"]
        out["mismatch.rewrite_adds_0.02"] = _target(d, "fused - hybrid >= 0.02", d >= 0.02)
    if m is not None:
        d = m["fused_vs_raw"]["delta"]
        out["match.fused_ge_raw_minus_0.005"] = _target(d, "fused - raw >= -0.005", d >= -0.005)
    for name, s in slices.items():
        r = s["rewrite_over_teacher"]
        out[f"{name}.rewrite_ge_0.94_teacher"] = _target(r, "rewrite / teacher >= 0.94",
                                                         at_least(r, 0.94))
    out["similarity_ge_0.5"] = _target(similarity, ">= 0.5", at_least(similarity, 0.5))
    mse = None if length is None else length.get("length_mse")
    w2 = None if length is None else length.get("within_2")
    out["length_mse_le_1"] = _target(mse, "free-greedy <= 1", None if mse is None else mse <= 1)
    out["within_2_ge_95pct"] = _target(w2, "free-greedy >= 0.95", at_least(w2, 0.95))
    out["final_round_above_round0"] = _target(  # no UDRL round at all is a fail, not unknown
        rounds.get("count"), "rounds >= 2 and final top-bucket relevance > round 0's",
        False if (rounds.get("count") or 0) < 2 else rounds.get("final_above_round0"))
    out["train_le_45_min"] = _target(train_s, "<= 2700 s",
                                     None if train_s is None else train_s <= 2700)
    return out


