"""Rewriters: intent detection and the UDRL GPT-2 query rewriter (data, training, generation).

Public names are imported lazily so that ``import rewriters`` stays cheap (torch loads on use).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Command": "commands", "TASKS": "commands", "INTENTS": "commands",
    "Example": "data", "read_examples": "data", "write_examples": "data",
    "UdrlError": "errors", "ConfigError": "errors", "DataError": "errors",
    "ModelError": "errors", "TeacherError": "errors",
    "Scorer": "rewards", "load_scorer": "rewards", "relabel": "rewards",
    "Teacher": "teachers", "BuiltinTeacher": "builtin_teacher", "OpenAITeacher": "teachers",
    "CatalogTeacher": "catalog_teacher", "CatalogTeacherConfig": "catalog_teacher",
    "GroundItem": "grounding", "Grounder": "grounding", "StaticGrounder": "grounding",
    "RetrievalScorer": "retrieval_return", "ndcg_at_k": "retrieval_return",
    "describe_returns": "retrieval_return",
    "run_distill": "distill", "DistillConfig": "distill",
    "TrainConfig": "train", "train_rewriter": "train",
    "Rewriter": "engines.torch_engine", "load_rewriter": "engines.torch_engine",
    "Rewrite": "engines", "RewriterBase": "engines", "Engine": "engines",
    "load_engine": "engines", "export_engine": "engines",
    "IntentDetector": "intent", "load_intent_detector": "intent", "train_intent": "intent",
    "evaluate_rewriter": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
