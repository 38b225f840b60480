"""The serving engines: one ``Engine`` protocol and one registry of the engines that implement it.

Three engines run a trained rewriter with the same API, commands and cleanup (``base``):

====================  =========================================  ================================
name                  runs on                                    export (``udrl export``)
====================  =========================================  ================================
``onnx``              ONNX Runtime, CPU, numpy decoding loop      ``<model>/onnx``: int8/int4/f32
``ctranslate2``       CTranslate2, CPU or CUDA                   ``<model>/ctranslate2``: int8...
``torch``             PyTorch/transformers, any device           none (the weights themselves)
====================  =========================================  ================================

:func:`load_engine` loads one by name, or with ``"auto"`` the first exporting engine (in
registry order) whose export is current and loads, else ``torch``; :func:`export_engine`
writes an engine's export. Callers (the pipeline, the hook, jobs, the CLI, the benchmarks) look
engines up here rather than importing an implementation. Shared pieces live beside them:
``export`` (the export lifecycle), ``fallback`` (routing to PyTorch), ``bans``/``step_bans``,
``budget``, ``clip_count``. Implementations are imported on first use, so importing this
package never loads torch, ONNX Runtime or CTranslate2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..commands import Command
from ..errors import ConfigError, ModelError
from .base import Decoding, Rewrite, RewriterBase
from .export import EXPORT_INFO

__all__ = [
    "Engine", "EngineSpec", "EngineOptions", "ENGINES", "ENGINE_CHOICES", "EXPORT_INFO",
    "Decoding", "Rewrite", "RewriterBase", "load_engine", "export_engine", "export_problem",
    "exporting_engines",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Engine(Protocol):
    """What the pipeline, the micro-batcher and the hook need of a rewriter engine."""

    @property
    def version(self) -> str:
        """The model version (``udrl.json``) the engine serves; it keys the rewrite cache."""
        ...

    def rewrite_batch(self, items: Sequence[tuple[str, Command]], n: int = 1,
                      strict_length: bool = False, decoding: str = "sample",
                      temperature: float = 0.8, top_p: float = 0.95, num_beams: int = 4,
                      seed: int | None = None, progress: bool = False
                      ) -> list[list[Rewrite]]:
        """``n`` cleaned and validated prompts per (query, command), in input order."""
        ...

    def check_query(self, query: str, command: Command) -> None:
        """Raise QueryTooLongError when ``query`` leaves the prompt too little of the window."""
        ...

    def close(self) -> None:
        """Release the model; later calls raise ModelError."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """How to load an engine; each engine reads the fields that apply to it."""

    device: str = "cpu"  # "cpu", "cuda" or "cuda:<index>" (torch, ctranslate2; onnx: cpu only)
    batch_size: int = 32  # inputs per generation batch
    compute_type: str = "default"  # ctranslate2: one of its COMPUTE_TYPES
    intra_threads: int = 0  # threads per batch, onnx and ctranslate2 (0: the runtime's default)
    inter_threads: int = 1  # ctranslate2: batches run in parallel


@dataclass(frozen=True)
class EngineSpec:
    """One engine in the registry."""

    label: str  # the name people read ("ONNX Runtime")
    load: Callable[[Path, EngineOptions], RewriterBase]  # loads a model directory
    cpu_only: bool = False  # refuses any other device
    export_dir: str | None = None  # its export's folder in the model directory; None: no export
    quantizations: tuple[str, ...] = ()  # what its export can store
    export: Callable[..., Path] | None = None  # (model_dir, quantization=, force=) -> folder
    problem: Callable[[str | Path], str | None] | None = None  # why the export cannot serve


def _load_onnx(path: Path, o: EngineOptions) -> RewriterBase:
    from .onnx_engine import load_onnx_rewriter

    return load_onnx_rewriter(path, intra_threads=o.intra_threads, batch_size=o.batch_size)


def _load_ctranslate2(path: Path, o: EngineOptions) -> RewriterBase:
    from .ctranslate2_engine import load_ctranslate2_rewriter

    return load_ctranslate2_rewriter(path, compute_type=o.compute_type,
                                     intra_threads=o.intra_threads,
                                     inter_threads=o.inter_threads, device=o.device,
                                     batch_size=o.batch_size)


def _load_torch(path: Path, o: EngineOptions) -> RewriterBase:
    from .torch_engine import load_rewriter

    return load_rewriter(path, device=o.device, batch_size=o.batch_size)


def _export_onnx(model_dir, **kw) -> Path:
    from .onnx_engine import export_onnx

    return export_onnx(model_dir, **kw)


def _onnx_problem(model_dir) -> str | None:
    from .onnx_engine import onnx_export_problem

    return onnx_export_problem(model_dir)


def _export_ctranslate2(model_dir, **kw) -> Path:
    from .ctranslate2_engine import export_ctranslate2

    return export_ctranslate2(model_dir, **kw)


def _ctranslate2_problem(model_dir) -> str | None:
    from .ctranslate2_engine import ctranslate2_export_problem

    return ctranslate2_export_problem(model_dir)


# Registry order is the order ``auto`` tries the exporting engines in. The quantizations and
# folders are repeated here (not imported) so that listing them loads no engine module; a test
# checks them against each engine module's own constants.
ENGINES: dict[str, EngineSpec] = {
    "onnx": EngineSpec("ONNX Runtime", _load_onnx, cpu_only=True, export_dir="onnx",
                       quantizations=("int8", "int4", "float32"), export=_export_onnx,
                       problem=_onnx_problem),
    "ctranslate2": EngineSpec(
        "CTranslate2", _load_ctranslate2, export_dir="ctranslate2",
        quantizations=("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                       "float16", "bfloat16", "float32"),
        export=_export_ctranslate2, problem=_ctranslate2_problem),
    "torch": EngineSpec("PyTorch", _load_torch),
}
ENGINE_CHOICES = ("auto", *ENGINES)  # auto: the first exporting engine that is current


def exporting_engines() -> tuple[str, ...]:
    """Names of the engines that serve from an export, in ``auto``'s order."""
    return tuple(name for name, spec in ENGINES.items() if spec.export is not None)


def _spec(name: str, choices: Sequence[str]) -> EngineSpec:
    if name not in choices:
        raise ConfigError(f"unknown engine {name!r}; allowed: {', '.join(choices)}")
    return ENGINES[name]


def export_problem(name: str, model_dir: str | Path) -> str | None:
    """Why engine ``name``'s export of ``model_dir`` cannot serve it, or None when it can."""
    spec = _spec(name, exporting_engines())
    return spec.problem(model_dir)


def export_engine(name: str, model_dir: str | Path, quantization: str = "int8",
                  force: bool = False) -> Path:
    """Write engine ``name``'s export of ``model_dir`` (see the engine's ``export_*``).

    Raises:
        ConfigError: unknown engine, an engine without an export, or a quantization it lacks.
    """
    spec = _spec(name, exporting_engines())
    if quantization not in spec.quantizations:
        raise ConfigError(f"{spec.label} has no quantization {quantization!r}; allowed: "
                          f"{', '.join(spec.quantizations)}")
    return spec.export(model_dir, quantization=quantization, force=force)


def load_engine(path: str | Path, engine: str = "auto", *, device: str = "cpu",
                batch_size: int = 32, compute_type: str = "default", intra_threads: int = 0,
                inter_threads: int = 1) -> RewriterBase:
    """Load a rewriter on the chosen engine; all have the same ``rewrite_batch`` API.

    Args:
        engine: a name in ``ENGINES`` (an exporting engine needs a current export), or
            "auto": the first exporting engine whose export is current for this model
            version and loads, else torch; the log says why an engine was passed over.
        device, batch_size, compute_type, intra_threads, inter_threads: see
            :class:`EngineOptions`.
    Raises:
        ConfigError: unknown engine or a device the engine cannot use.
        ModelError: the model directory or the named engine's export cannot be loaded.
    """
    spec = _spec(engine, ENGINE_CHOICES) if engine != "auto" else None
    opts = EngineOptions(device, batch_size, compute_type, intra_threads, inter_threads)
    path = Path(path)
    if spec is not None:
        if spec.cpu_only and device != "cpu":
            others = " or ".join(repr(n) for n, e in ENGINES.items() if not e.cpu_only)
            raise ConfigError(f"the {engine} engine runs on cpu only, not {device!r}; use "
                              f"engine={others} there")
        return spec.load(path, opts)
    passed: list[str] = []
    has_model = (path / "udrl.json").is_file()
    for name in exporting_engines():
        candidate = ENGINES[name]
        if candidate.cpu_only and device != "cpu":
            passed.append(f"{name}: runs on cpu only, not {device}")
            continue
        problem = candidate.problem(path) if has_model else "no model"
        if problem is None:
            try:
                rewriter = candidate.load(path, opts)
            except ModelError as e:
                problem = str(e)
            else:
                if passed:
                    log.info("rewriter engine: %s (%s)", name, "; ".join(passed))
                return rewriter
        passed.append(f"{name}: {problem}")
    log.info("rewriter engine: torch (%s)", "; ".join(passed))
    return ENGINES["torch"].load(path, opts)

