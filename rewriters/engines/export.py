"""The export lifecycle every serving engine shares: check, begin, write atomically, open.

An engine's export lives in a folder of the model directory (``onnx/``, ``ctranslate2/``) with
an ``udrl_export.json`` beside its files: the export format, the model version it was made
from, its quantization and a digest of the banned token ids (the bans are baked into the
exported output layer, so a model directory whose bans changed must refuse the export).

Each engine describes its export once, as an :class:`ExportFormat`, and reuses its steps:

* :meth:`ExportFormat.problem` says, cheaply (two JSON files), why an export cannot serve;
* :meth:`ExportFormat.export` reads the model directory, computes its bans and the description,
  keeps an existing export that is current, and otherwise has the engine write its files into
  a temporary folder that is renamed into place, so a failed export leaves no debris and the
  previous export serving;
* :meth:`ExportFormat.open` is the loaders' first step (the export checked, then the tokenizer
  read) and :meth:`ExportFormat.check_loaded` their last (model version and bans match).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..commands import END_TOKEN
from ..errors import ConfigError, ModelError
from ..model import RewriterMeta, read_model_dir
from .bans import marker_token_ids, restrict_output, token_classes

__all__ = ["EXPORT_INFO", "ExportFormat", "banned_digest", "model_bans", "read_export"]

log = logging.getLogger(__name__)

EXPORT_INFO = "udrl_export.json"  # the export's description, beside its files


def banned_digest(banned: np.ndarray) -> str:
    """A short digest of the banned token ids ((n_rows,) bool), recorded with an export."""
    ids = np.flatnonzero(banned).astype("<i4")
    return hashlib.sha256(ids.tobytes()).hexdigest()[:16]


def model_bans(meta: RewriterMeta, tokenizer, output_vocab, n_rows: int) -> np.ndarray:
    """(n_rows,) bool: the tokens the model never emits (baked into an export's output layer)."""
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    allowed = set(marker_token_ids(tokenizer, meta).values())
    always, _ = token_classes(tokenizer, meta.command_tokens, end_id, n_rows, allowed)
    return restrict_output(always, output_vocab, end_id)


def read_export(out: Path) -> dict[str, Any]:
    """The export description in ``out``; ModelError when it is missing or unreadable."""
    try:
        return json.loads((out / EXPORT_INFO).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{out / EXPORT_INFO} is missing or unreadable ({e}); "
                         "re-export with `udrl export`") from e


def _check_export(model_dir: str | Path, out: Path, files: Sequence[str], label: str,
                 export_format: int) -> str | None:
    """Why the ``label`` export in ``out`` cannot serve ``model_dir``, or None when it can.

    ``out`` must hold ``files`` and an ``udrl_export.json`` of ``export_format`` made from the
    model version in ``udrl.json``. The banned-token digest is checked on load.
    """
    p = Path(model_dir)
    if not out.is_dir():
        return f"no {label} export in {out}"
    missing = [n for n in (*files, EXPORT_INFO) if not (out / n).is_file()]
    if missing:
        return f"{label} export {out} is incomplete: {', '.join(missing)} missing"
    try:
        version = json.loads((p / "udrl.json").read_text())["version"]
        info = read_export(out)
    except (OSError, KeyError, json.JSONDecodeError, ModelError) as e:
        return f"cannot read the model or export description ({e})"
    if info.get("format") != export_format:
        return f"export format {info.get('format')} in {out} is not {export_format}"
    if info.get("model_version") != version:
        return (f"{label} export {out} is stale: made from model version "
                f"{info.get('model_version')}, the model is {version}")
    return None


def _begin_export(model_dir: str | Path, out: Path | None, default_dir: str, export_format: int,
                 quantization: str, engine: dict[str, str], force: bool,
                 problem: Callable[[Path, Path], str | None]):
    """What every export starts with: the model directory read and checked, its bans, the
    export description, and whether ``out`` already holds a current export (then kept).

    Raises ModelError when ``out`` holds anything else and ``force`` is off.
    Returns:
        (model dir, tokenizer, banned (n_rows,) bool, out, description, current)
    """
    p, meta, tokenizer, output_vocab, hf_config = read_model_dir(model_dir)
    if not (p / "model.safetensors").is_file():
        raise ModelError(f"model directory {p} is incomplete: model.safetensors is missing")
    out = out or p / default_dir
    n_rows = int(hf_config["vocab_size"])
    banned = model_bans(meta, tokenizer, output_vocab, n_rows)
    info = {
        "format": export_format,
        "model_version": meta.version,
        "quantization": quantization,
        "banned_digest": banned_digest(banned),
        "vocab_rows": n_rows,
        "n_positions": int(hf_config["n_positions"]),
        **engine,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    current = False
    if out.exists() and not force:
        if problem(p, out) is None:
            old = read_export(out)
            current = all(old.get(k) == info[k] for k in ("quantization", "banned_digest"))
        if not current:
            raise ModelError(f"{out} already exists and is not a current {quantization} export "
                             "of this model; pass force=True to replace it")
    return p, tokenizer, banned, out, info, current


def _write_export(model_dir: Path, out: Path, info: dict[str, Any],
                 write: Callable[[Path], dict[str, Any]], label: str) -> Path:
    """Run ``write(tmp)`` into a fresh temporary folder, add ``udrl_export.json`` (``info`` plus
    what ``write`` returns) and move it to ``out``; a failure leaves no debris and the previous
    export in place. Errors come out as ModelError naming ``label``."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        info = {**info, **write(tmp)}
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        _install_export(tmp, out)
    except ModelError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # converters, exporters and quantizers raise many types
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"{label} of {model_dir} failed: {type(e).__name__}: {e}") from e
    log.info("exported %s to %s (%s)", model_dir, out, info["quantization"])
    return out


def _install_export(tmp: Path, out: Path) -> None:
    """Move the finished export ``tmp`` to ``out``; a previous export is replaced only on success."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)  # keep the previous export rather than none
        raise
    shutil.rmtree(old, ignore_errors=True)



# the files an engine's export writes: (tmp folder, model dir, tokenizer, banned (n_rows,) bool,
# description) -> extra description fields
WriteFiles = Callable[[Path, Path, Any, np.ndarray, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ExportFormat:
    """One engine's export: where it lives, what it holds, what it may store."""

    label: str  # in messages: "no ONNX export in ..."
    folder: str  # the export's folder inside the model directory (what ``auto`` looks for)
    version: int  # the export format; another one must be re-exported
    files: tuple[str, ...]  # what a complete export holds besides udrl_export.json
    quantizations: tuple[str, ...]  # weight storage the engine can export
    action: str  # the export's name in failure messages ("CTranslate2 conversion")

    def problem(self, model_dir: str | Path, out: str | Path | None = None) -> str | None:
        """Why the export in ``out`` (default: the model directory's) cannot serve
        ``model_dir``, or None when it can. The banned-token digest is checked on load."""
        out = Path(out) if out else Path(model_dir) / self.folder
        return _check_export(model_dir, out, self.files, self.label, self.version)

    def export(self, model_dir: str | Path, out_dir: str | Path | None, quantization: str,
               force: bool, runtime: dict[str, str], write: WriteFiles) -> Path:
        """Export ``model_dir`` with ``write`` (see the engines' ``export_*``); returns the
        folder. ``runtime``: the exporting library's version, recorded in the description."""
        if quantization not in self.quantizations:
            raise ConfigError(f"unknown quantization {quantization!r}; allowed: "
                              f"{', '.join(self.quantizations)}")
        p, tokenizer, banned, out, info, current = _begin_export(
            model_dir, Path(out_dir) if out_dir else None, self.folder, self.version,
            quantization, runtime, force, self.problem)
        if current:
            return out
        return _write_export(p, out, info, lambda tmp: write(tmp, p, tokenizer, banned, info),
                             self.action)

    def open(self, path: str | Path, exporter: str
             ) -> tuple[Path, RewriterMeta, Any, Any, Path, dict[str, Any]]:
        """(model dir, meta, tokenizer, output_vocab, export folder, description) of a model
        directory whose export is current; ModelError naming ``udrl export`` (and ``exporter``)
        if it is not. The export is checked first: that is cheap, loading the tokenizer is not.
        """
        p = Path(path)
        problem = self.problem(p) if (p / "udrl.json").is_file() else None
        if problem:
            raise ModelError(f"{problem}; run `udrl export` ({exporter})")
        p, meta, tokenizer, output_vocab, _ = read_model_dir(p)
        out = p / self.folder
        return p, meta, tokenizer, output_vocab, out, read_export(out)

    def check_loaded(self, export: dict[str, Any], meta: RewriterMeta, banned: np.ndarray,
                     rows_match: bool = True) -> None:
        """ModelError unless the loaded export was made from ``meta``'s model version with the
        bans ``banned`` (and, where the engine can tell, as many output rows: ``rows_match``)."""
        if export.get("model_version") != meta.version:
            raise ModelError(f"{self.label} export is of model version "
                             f"{export.get('model_version')}, not {meta.version}; re-export "
                             "with `udrl export`")
        if export.get("banned_digest") != banned_digest(banned) or not rows_match:
            raise ModelError(f"the {self.label} export bans other tokens than this model "
                             "directory (tokenizer or output_vocab.json changed); re-export "
                             "with `udrl export`")
