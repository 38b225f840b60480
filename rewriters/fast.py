"""The serving engine: the rewriter converted to CTranslate2 (int8 weights), same API and commands.

A model directory may hold its conversion next to the weights::

    <model_dir>/ctranslate2/   model.bin, config.json, vocabulary.json  (CTranslate2 model)
                               udrl_export.json  model version, quantization, banned-token digest

Command handling is shared with the PyTorch ``Rewriter`` through ``RewriterBase`` (encoding,
request checks, token budget, cleanup, validation). The bans are enforced like this:

* banned tokens and the output vocabulary: baked into the converted model as an output bias of
  -inf on every banned row, so no per-call suppress list is needed (the export records a
  digest of the banned set; a model directory whose bans changed refuses the export);
* the repeated-3-gram ban: CTranslate2's ``no_repeat_ngram_size``, which looks at every token
  of its decoding loop. Inputs of one batch are forwarded up to the shortest length, so the
  loop of a longer input also holds its query tail; the rare rows where that banned a token
  PyTorch allows (the prompt copied two query tokens) are regenerated exactly from that step
  (``_first_extra_ban``), so the ban sees generated tokens only, as ``torch_logits._ban_repeated_trigrams``.
  For a model with length markers, rows that break a ban PyTorch adds (a 3-gram of the text
  repeated across a marker; the marker grammar of ``bans.Countdown``) are redrawn from
  that step with the banned ids suppressed (``_first_missed_ban``);
* ``strict_length``, beam search and seeded sampling run on the PyTorch ``Rewriter`` (the
  *fallback*). CTranslate2 4.x exposes no per-step logits processor to Python, so the
  word-count rules cannot be expressed; its beam search renormalises after the bans where
  transformers renormalises before them, so beams can rank differently; and
  ``ctranslate2.set_random_seed`` only seeds worker threads not yet started, so a seed could
  not make sampling reproducible. Rather than differ silently, those requests are routed to
  PyTorch (logged once) and so return exactly what ``Rewriter`` returns, or are refused when
  no fallback is available. Serving (unseeded sampling, greedy) stays on CTranslate2.

Greedy output equals the PyTorch engine's for a float32 export (up to float rounding on exact
near-ties); sampling draws from the same distribution (bans, then temperature, then nucleus)
with CTranslate2's own random stream. torch is never imported on this path (it alone takes
~0.5 GB resident): the CLIP window is measured by :func:`clip_token_count_light`, CLIP's text
cleaning and BPE re-run over open_clip's merge table, checked against open_clip in the tests.

Shared with the ONNX Runtime engine (``rewriters.onnx_engine``): the routing of requests to
PyTorch (:class:`TorchFallback`), the export checks and the atomic install of an export.
:func:`load_engine` picks among the three engines.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .commands import END_TOKEN, Command
from .errors import ConfigError, ModelError
from .generate import (
    NGRAM_BAN,
    Countdown,
    Rewrite,
    Rewriter,
    RewriterBase,
    load_rewriter,
    marker_token_ids,
    restrict_output,
    token_classes,
)
from .model import RewriterMeta, read_model_dir

__all__ = [
    "ENGINES",
    "QUANTIZATIONS",
    "COMPUTE_TYPES",
    "EXPORT_DIR",
    "FastRewriter",
    "clip_token_count_light",
    "export_ctranslate2",
    "export_problem",
    "load_fast_rewriter",
    "load_engine",
]

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnx", "ctranslate2", "torch")  # auto: the first with a current export
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32")  # weight storage in the export
COMPUTE_TYPES = ("default", "auto") + QUANTIZATIONS  # "default": as stored (int8 -> int8_float32)
EXPORT_DIR = "ctranslate2"  # the export's folder inside the model directory
EXPORT_INFO = "udrl_export.json"
EXPORT_FORMAT = 1
_PAD_TOKEN = "<|udrl_pad_{}|>"  # names of embedding rows beyond the tokenizer


def _banned_digest(banned: np.ndarray) -> str:
    ids = np.flatnonzero(banned).astype("<i4")
    return hashlib.sha256(ids.tobytes()).hexdigest()[:16]


_read_model_dir = read_model_dir  # (dir, meta, tokenizer, output_vocab, HF config)


def _model_bans(meta: RewriterMeta, tokenizer, output_vocab, n_rows: int) -> np.ndarray:
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    allowed = set(marker_token_ids(tokenizer, meta).values())
    always, _ = token_classes(tokenizer, meta.command_tokens, end_id, n_rows, allowed)
    return restrict_output(always, output_vocab, end_id)


class _ExportVocab:
    """What the CTranslate2 GPT-2 loader reads from a tokenizer, one name per embedding row."""

    def __init__(self, tokenizer, n_rows: int):
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        tokens += [_PAD_TOKEN.format(i) for i in range(len(tokens), n_rows)]
        if len(set(tokens)) != n_rows:
            raise ModelError("the tokenizer maps two ids to one token; cannot name every row")
        self._vocab = {t: i for i, t in enumerate(tokens)}
        self.bos_token, self.eos_token = tokenizer.bos_token, END_TOKEN
        self.unk_token = tokenizer.unk_token

    def get_vocab(self) -> dict[str, int]:
        return self._vocab


def _converter(model_dir: Path, tokenizer, banned: np.ndarray):
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):
        """Loads the project's tokenizer and bakes the bans into an output bias."""

        def load_model(self, model_class, model_name_or_path, **kwargs):
            import torch

            model = super().load_model(model_class, model_name_or_path, **kwargs)
            rows = model.lm_head.weight.shape[0]
            if rows != banned.shape[0]:
                raise ModelError(f"output layer has {rows} rows, config.json says "
                                 f"{banned.shape[0]}")
            bias = torch.zeros(rows, dtype=model.lm_head.weight.dtype)
            bias[torch.from_numpy(banned)] = float("-inf")  # never emitted, at no cost per step
            model.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _ExportVocab(tokenizer, banned.shape[0])

    return _Converter(str(model_dir))


def _read_export(ct2_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((ct2_dir / EXPORT_INFO).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{ct2_dir / EXPORT_INFO} is missing or unreadable ({e}); "
                         "re-export with `udrl export`") from e


def export_problem(model_dir: str | Path, ct2_dir: str | Path | None = None) -> str | None:
    """Why the CTranslate2 export of ``model_dir`` cannot serve it, or None when it can.

    Cheap (reads two JSON files): the export must exist, be complete and have been made from
    the model version in ``udrl.json``. The banned-token digest is checked on load.
    """
    out = Path(ct2_dir) if ct2_dir else Path(model_dir) / EXPORT_DIR
    return _check_export(model_dir, out, ("model.bin", "config.json", "vocabulary.json"),
                        "CTranslate2", EXPORT_FORMAT)


def _check_export(model_dir: str | Path, out: Path, files: Sequence[str], label: str,
                 export_format: int) -> str | None:
    """Why the ``label`` export in ``out`` cannot serve ``model_dir``, or None when it can.

    Shared by the engines' ``*_export_problem``: ``out`` holds ``files`` and an
    ``udrl_export.json`` of ``export_format`` made from the model version in ``udrl.json``.
    """
    p = Path(model_dir)
    if not out.is_dir():
        return f"no {label} export in {out}"
    missing = [n for n in (*files, EXPORT_INFO) if not (out / n).is_file()]
    if missing:
        return f"{label} export {out} is incomplete: {', '.join(missing)} missing"
    try:
        version = json.loads((p / "udrl.json").read_text())["version"]
        info = _read_export(out)
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
    p, meta, tokenizer, output_vocab, hf_config = _read_model_dir(model_dir)
    if not (p / "model.safetensors").is_file():
        raise ModelError(f"model directory {p} is incomplete: model.safetensors is missing")
    out = out or p / default_dir
    n_rows = int(hf_config["vocab_size"])
    banned = _model_bans(meta, tokenizer, output_vocab, n_rows)
    info = {
        "format": export_format,
        "model_version": meta.version,
        "quantization": quantization,
        "banned_digest": _banned_digest(banned),
        "vocab_rows": n_rows,
        "n_positions": int(hf_config["n_positions"]),
        **engine,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    current = False
    if out.exists() and not force:
        if problem(p, out) is None:
            old = _read_export(out)
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


def export_ctranslate2(model_dir: str | Path, out_dir: str | Path | None = None,
                       quantization: str = "int8", force: bool = False) -> Path:
    """Convert a rewriter model directory to CTranslate2 for serving.

    The conversion is written to a temporary folder and renamed into place, so a failed run
    never leaves a half export. Needs torch and transformers (it reads the weights).

    Args:
        model_dir: a directory written by ``save_model_dir``.
        out_dir: where to write; default ``<model_dir>/ctranslate2`` (what ``auto`` looks for).
        quantization: weight storage, one of ``QUANTIZATIONS`` ("int8": ~4x smaller, fastest on
            CPU; "float32": bit-for-bit the PyTorch weights).
        force: replace an existing export. Without it an export that is already current (same
            model version, quantization and bans) is kept and returned; any other raises.
    Returns:
        The export folder.
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantization!r}; allowed: "
                          f"{', '.join(QUANTIZATIONS)}")
    p, tokenizer, banned, out, info, current = _begin_export(
        model_dir, Path(out_dir) if out_dir else None, EXPORT_DIR, EXPORT_FORMAT, quantization,
        {"ctranslate2": _ct2_version()}, force, export_problem)
    if current:
        return out

    def write(tmp: Path) -> dict[str, Any]:
        _converter(p, tokenizer, banned).convert(str(tmp), quantization=quantization, force=True)
        return {}

    return _write_export(p, out, info, write, "CTranslate2 conversion")


def _ct2_version() -> str:
    import ctranslate2

    return ctranslate2.__version__


def _open_export(path: str | Path, problem_of: Callable[[Path], str | None], export_dir: str,
                 exporter: str) -> tuple[Path, RewriterMeta, Any, Any, Path]:
    """(model dir, meta, tokenizer, output_vocab, export folder) of a model dir whose export
    ``problem_of`` finds current; ModelError naming ``udrl export`` (and ``exporter``) if not.

    The export is checked first: that is cheap, loading the tokenizer is not.
    """
    p = Path(path)
    problem = problem_of(p) if (p / "udrl.json").is_file() else None
    if problem:
        raise ModelError(f"{problem}; run `udrl export` ({exporter})")
    p, meta, tokenizer, output_vocab, _ = _read_model_dir(p)
    return p, meta, tokenizer, output_vocab, p / export_dir


def _first_missed_ban(seq: Sequence[int], skip: np.ndarray, countdown: Countdown | None,
                      end_id: int, budget: int, emittable: frozenset[int], length: int,
                      opens: np.ndarray | None = None) -> tuple[int, list[int] | None] | None:
    """First step of ``seq`` whose token ``Rewriter`` bans and CTranslate2 did not, with the ids
    ``Rewriter`` bans there that CTranslate2's own 3-gram ban does not (None: it bans every
    emittable token, so ``Rewriter`` ends the prompt there).

    Two bans of a model with length markers are beyond CTranslate2: the 3-gram ban on the text
    with the markers left out (its ban counts them, so "drop <|r=9|> shadows" after "drop
    shadows" passes), and the marker grammar (``bans.Countdown``); with ``opens`` (models that
    never repeat a word) also a word opened twice (``bans.repeated_word_bans``). One pass over
    ``seq``.
    """
    opened: set[int] = set()  # word-opening tokens written so far
    follows: dict[tuple[int, int], set[int]] = {}  # text pair -> what followed it
    raw_follows: dict[tuple[int, int], set[int]] = {}  # the same over every token
    text: list[int] = []
    last, one_at, may_end = 0, False, False  # last marker (0: none); <|r=1|> written; its word
    for t, tok in enumerate(seq):
        banned: set[int] = set(opened)
        if len(text) >= 2:
            banned |= follows.get((text[-2], text[-1]), set())
        if countdown is not None:
            if not may_end and t + 1 < budget:
                banned.add(end_id)
            banned.update(int(i) for i in countdown.ids[~countdown.allowed_markers(last, length)])
            raw = raw_follows.get(tuple(seq[t - 2:t]), set()) if t >= 2 else set()
            if emittable <= banned | raw:
                return (t, None) if tok != end_id else None
        if tok in banned:
            return t, sorted(banned)
        if opens is not None and opens[tok]:
            opened.add(tok)
        if countdown is not None and countdown.value[tok]:
            last = int(countdown.value[tok])
            one_at = one_at or last == 1
        elif tok != end_id:
            may_end = may_end or one_at
        if not skip[tok]:
            if len(text) >= 2:
                follows.setdefault((text[-2], text[-1]), set()).add(tok)
            text.append(tok)
        if t >= 2:
            raw_follows.setdefault((seq[t - 2], seq[t - 1]), set()).add(tok)
    return None


def _first_extra_ban(tail: Sequence[int], seq: Sequence[int], banned: np.ndarray) -> int | None:
    """First step of ``seq`` where CTranslate2's 3-gram ban forbade a token PyTorch allows.

    ``tail`` is what the loop saw before the generated ``seq``: the input past the batch's
    shortest one, ending with <|prompt|>. At step t (choosing ``seq[t]``) the loop bans every
    token that followed the last two tokens anywhere before; only pairs inside the query tail
    differ from PyTorch's rule, and only when what followed is a query token that may be emitted.
    """
    follows = {(tail[j], tail[j + 1]) for j in range(len(tail) - 3) if not banned[tail[j + 2]]}
    if follows:
        for t in range(2, len(seq)):
            if (seq[t - 2], seq[t - 1]) in follows:
                return t
    return None


class TorchFallback:
    """Routes the requests a serving engine cannot answer identically to the PyTorch ``Rewriter``.

    Mixed in before ``RewriterBase`` by the engines that serve without torch: subclasses say
    which requests leave them (``fallback_reason``); those run on the PyTorch engine of the same
    model directory, built by ``fallback`` on first need (logged once), or are refused with a
    ConfigError when there is none. Everything else runs on the engine's ``_generate``.
    """

    _loader = "load_fast_rewriter"  # named in the error when no fallback is configured

    def _init_fallback(self, fallback: Callable[[], Rewriter] | None) -> None:
        self._make_fallback = fallback
        self._fallback: Rewriter | None = None
        self._fallback_lock = threading.Lock()

    @staticmethod
    def fallback_reason(strict_length: bool, decoding: str, seed: int | None = None) -> str | None:
        """Why a request runs on the PyTorch engine, or None when this engine serves it."""
        raise NotImplementedError

    def torch_engine(self) -> Rewriter:
        """The PyTorch ``Rewriter`` of the same model directory, loaded on first use."""
        with self._fallback_lock:  # one load even when requests arrive together
            if self._fallback is None:
                if self._make_fallback is None:
                    raise ConfigError("this request needs the PyTorch engine and none is "
                                      "configured; load with engine='torch' or "
                                      f"{self._loader}(fallback=True)")
                engine = self._make_fallback()
                if engine.version != self.version:
                    raise ModelError(f"fallback model version {engine.version} is not "
                                     f"{self.version}")
                self._fallback = engine
            self._fallback.context = getattr(self, "context", None)  # the same input
        return self._fallback

    def rewrite_batch(
        self,
        items: Sequence[tuple[str, Command]],
        n: int = 1,
        strict_length: bool = False,
        decoding: str = "sample",
        temperature: float = 0.8,
        top_p: float = 0.95,
        num_beams: int = 4,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[list[Rewrite]]:
        """As :meth:`Rewriter.rewrite_batch`; ``fallback_reason`` says what runs on PyTorch."""
        self._check_request(items, n, decoding)
        kw = dict(n=n, strict_length=strict_length, decoding=decoding, temperature=temperature,
                  top_p=top_p, num_beams=num_beams, seed=seed, progress=progress)
        reason = self.fallback_reason(strict_length, decoding, seed)
        if reason is not None:
            if self._fallback is None:
                log.info("running on the PyTorch engine (%s)", reason)
            return self.torch_engine().rewrite_batch(items, **kw)
        if decoding == "sample" and not (temperature > 0 and 0 < top_p <= 1):
            raise ConfigError(f"temperature {temperature} must be > 0 and top_p {top_p} "
                              "in (0, 1]")
        return super().rewrite_batch(items, **kw)

    def _clip_tokens(self, text: str) -> int:
        return clip_token_count_light(text)  # open_clip's tokenizer would import torch


class FastRewriter(TorchFallback, RewriterBase):
    """Generates prompts on CTranslate2 with the same API, commands and cleanup as ``Rewriter``.

    Args:
        generator: a ``ctranslate2.Generator`` over an export made by ``export_ctranslate2``.
        tokenizer, meta, output_vocab: the model directory's (see ``load_model_dir``).
        export: the export's ``udrl_export.json``; its model version and banned-token digest
            must match ``meta`` and the bans computed here.
        batch_size: inputs per ``rewrite_batch`` batch.
        fallback: builds the PyTorch ``Rewriter`` for requests CTranslate2 cannot serve
            identically (``strict_length``, beam search, seeded sampling); None refuses them
            with a ConfigError.
    """

    budget_rule = "equal"  # generate_batch takes one max_length

    def __init__(self, generator, tokenizer, meta: RewriterMeta,
                 output_vocab: Sequence[int] | None = None, *, export: dict[str, Any],
                 batch_size: int = 32, fallback: Callable[[], Rewriter] | None = None):
        super().__init__(tokenizer, meta, n_rows=int(export["vocab_rows"]),
                         n_positions=int(export["n_positions"]), batch_size=batch_size)
        self.generator = generator
        self.export = export
        self.banned = restrict_output(self._always_banned, output_vocab, self.end_id)
        allowed = int((~self.banned).sum())
        # Sampling: the banned rows have probability 0, so taking the top `allowed` first draws
        # from the same distribution and spares a sort of the whole vocabulary every step.
        self._sample_topk = allowed if allowed <= len(self.banned) // 4 else 0
        if export.get("model_version") != meta.version:
            raise ModelError(f"CTranslate2 export is of model version {export.get('model_version')}"
                             f", not {meta.version}; re-export with `udrl export`")
        if export.get("banned_digest") != _banned_digest(self.banned):
            raise ModelError("the CTranslate2 export bans other tokens than this model "
                             "directory (tokenizer or output_vocab.json changed); re-export "
                             "with `udrl export`")
        self.countdown = self._countdown(self.banned)  # the marker grammar
        self._emittable = frozenset(np.flatnonzero(~self.banned).tolist())
        self._markers = None  # (V,) bool: length markers, left out of the 3-gram ban
        if self.marker_ids:
            self._markers = np.zeros(len(self.banned), dtype=bool)
            self._markers[list(self.marker_ids.values())] = True
        self._init_fallback(fallback)

    @staticmethod
    def fallback_reason(strict_length: bool, decoding: str, seed: int | None = None) -> str | None:
        """Why a request runs on the PyTorch engine, or None when CTranslate2 serves it."""
        if strict_length:
            return "strict_length needs per-step word counting (no Python logits processors)"
        if decoding == "beam":
            return "beam scores are normalised differently by CTranslate2 and transformers"
        if decoding == "sample" and seed is not None:
            return "CTranslate2 cannot reseed a running generator: seeded sampling"
        return None

    def _seed(self, seed: int) -> None:
        pass  # greedy is deterministic; seeded sampling is routed to PyTorch

    def _generate(self, plan, n, strict, decoding, temperature, top_p, num_beams):
        assert not strict and decoding != "beam"  # routed to the fallback in rewrite_batch
        chunk, encoded, budget = plan.chunk, plan.encoded, plan.budget  # budget_rule "equal"
        prompts = [encoded[i] for i in range(len(chunk)) for _ in range(n)]  # n draws per item
        opts: dict[str, Any] = {
            "end_token": END_TOKEN, "return_end_token": True, "beam_size": 1,
            "include_prompt_in_result": False, "no_repeat_ngram_size": NGRAM_BAN,
        }
        if decoding == "sample":
            opts.update(sampling_topk=self._sample_topk, sampling_topp=top_p,
                        sampling_temperature=temperature)
        else:
            opts.update(sampling_topk=1)
        seqs = self._run(prompts, budget, opts)
        self._redo_extra_bans(prompts, seqs, budget, opts)
        self._redo_missed_bans(prompts, seqs, budget, opts,
                               [c.length for _, c in chunk for _ in range(n)])
        return [[self._finish(seqs[i * n + j], c) for j in range(n)]
                for i, (_, c) in enumerate(chunk)]

    def _run(self, starts: list[list[int]], max_length: int, opts: dict[str, Any],
             stop_row: int | None = None) -> list[list[int]]:
        """New token ids after each start sequence; ``stop_row`` is stopped after one token."""
        extra = {}
        if stop_row is not None:
            extra["callback"] = lambda step: step.batch_id == stop_row
        results = self.generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(s) for s in starts], max_length=max_length,
            **opts, **extra)
        return [r.sequences_ids[0] for r in results]

    def _redo_extra_bans(self, prompts: list[list[int]], seqs: list[list[int]], budget: int,
                         opts: dict[str, Any]) -> None:
        """Regenerate, from the step it happened, every row CTranslate2 banned differently.

        Inputs of different lengths share one batch: CTranslate2 forwards the shortest length
        and feeds the rest of each longer input through its decoding loop, where the 3-gram
        ban also sees that query tail. Where the ban thereby forbade a token PyTorch allows
        (the prompt copied two query tokens), the row resumes from the tokens before that step
        in a batch whose inputs all have its length (plus a bare input, stopped at once, that
        fixes the forwarded length), so the loop holds generated tokens only, as in PyTorch.
        """
        shortest = min(len(p) for p in prompts)
        redo: dict[tuple[int, int], list[int]] = {}
        for r, (prompt, seq) in enumerate(zip(prompts, seqs)):
            step = _first_extra_ban(prompt[shortest:], seq, self.banned)
            if step is not None:
                redo.setdefault((len(prompt), step), []).append(r)
        for (_, step), rows in redo.items():
            starts = [prompts[r] + seqs[r][:step] for r in rows] + [prompts[rows[0]]]
            news = self._run(starts, budget - step, opts, stop_row=len(rows))
            for r, new in zip(rows, news):
                seqs[r] = seqs[r][:step] + new

    def _redo_missed_bans(self, prompts: list[list[int]], seqs: list[list[int]], budget: int,
                          opts: dict[str, Any], lengths: list[int]) -> None:
        """Regenerate, from the step it happened, every row that breaks a ban only PyTorch has.

        Only models with length markers: CTranslate2's ban counts a marker as a token, so a
        marker inside a repeated phrase hides a repeat that ``Rewriter`` bans, and it knows
        nothing of the marker grammar (``Countdown``). Such a step is redrawn with the ids
        ``Rewriter`` bans there suppressed (CTranslate2's own ban still applies), and the row
        goes on from there (with a bare input of its own length, stopped at once, so the loop
        holds its generated tokens). Each pass moves the first broken ban later, so a row needs
        at most ``budget`` passes.
        """
        opens = self._word_start if getattr(self.meta, "unique_words", False) else None
        if self._markers is None and opens is None:
            return
        skip = self._markers if self._markers is not None else np.zeros_like(self._word_start)
        for r, prompt in enumerate(prompts):
            for _ in range(budget):
                missed = _first_missed_ban(seqs[r], skip, self.countdown, self.end_id, budget,
                                           self._emittable, lengths[r], opens)
                if missed is None:
                    break
                step, bans = missed
                head = seqs[r][:step]
                if bans is None:  # every token banned: Rewriter ends the prompt here
                    seqs[r] = head + [self.end_id]
                    break
                suppress = [self.tokenizer.convert_ids_to_tokens([b]) for b in bans]
                head += self._run([prompt + head, prompt], 1,
                                  {**opts, "suppress_sequences": suppress}, stop_row=1)[0]
                tail: list[int] = []
                if head[-1:] != [self.end_id] and len(head) < budget:
                    tail = self._run([prompt + head, prompt], budget - len(head), opts,
                                     stop_row=1)[0]
                seqs[r] = head + tail


def _device_index(device: str) -> tuple[str, int]:
    name, _, index = device.partition(":")
    if name not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ConfigError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:<index>")
    return name, int(index or 0)


def load_fast_rewriter(path: str | Path, compute_type: str = "default", intra_threads: int = 0,
                       inter_threads: int = 1, device: str = "cpu", batch_size: int = 32,
                       fallback: bool = True) -> FastRewriter:
    """Load the CTranslate2 export of a rewriter directory.

    Args:
        path: the model directory (its export lives in ``<path>/ctranslate2``).
        compute_type: one of ``COMPUTE_TYPES``; "default" computes as stored (int8 weights run
            int8 x float32 on CPU), "float32" dequantises.
        intra_threads: threads per batch (0: CTranslate2's default).
        inter_threads: batches run in parallel (``rewrite_batch`` called from several threads).
        device: "cpu", "cuda" or "cuda:<index>".
        batch_size: inputs per batch.
        fallback: load the PyTorch engine on first need (strict_length, beam, seeded sampling).
    """
    import ctranslate2

    if compute_type not in COMPUTE_TYPES:
        raise ConfigError(f"unknown compute_type {compute_type!r}; allowed: "
                          f"{', '.join(COMPUTE_TYPES)}")
    if intra_threads < 0 or inter_threads < 1:
        raise ConfigError(f"intra_threads {intra_threads} must be >= 0 and inter_threads "
                          f"{inter_threads} >= 1")
    kind, index = _device_index(device)
    p, meta, tokenizer, output_vocab, out = _open_export(
        path, export_problem, EXPORT_DIR, "rewriters.fast.export_ctranslate2")
    try:
        generator = ctranslate2.Generator(str(out), device=kind, device_index=index,
                                          compute_type=compute_type,
                                          intra_threads=intra_threads,
                                          inter_threads=inter_threads)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"cannot load the CTranslate2 model in {out}: {e}") from e
    make = (lambda: load_rewriter(p, device=device, batch_size=batch_size)) if fallback else None
    return FastRewriter(generator, tokenizer, meta, output_vocab, export=_read_export(out),
                        batch_size=batch_size, fallback=make)


def load_engine(path: str | Path, engine: str = "auto", *, device: str = "cpu",
                batch_size: int = 32, compute_type: str = "default", intra_threads: int = 0,
                inter_threads: int = 1) -> RewriterBase:
    """Load a rewriter on the chosen engine; all have the same ``rewrite_batch`` API.

    Args:
        engine: "onnx" or "ctranslate2" (each needs a current export), "torch", or "auto":
            the first of onnx (``<path>/onnx``, CPU only), ctranslate2 (``<path>/ctranslate2``)
            whose export is current for this model version and loads, else torch; the log
            says why an engine was passed over.
        intra_threads: threads per batch for ONNX Runtime and CTranslate2 (0: their default).
        compute_type, inter_threads: CTranslate2 settings (see :func:`load_fast_rewriter`).
        device: torch and CTranslate2 device; the ONNX engine runs on "cpu" only.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
    from .onnx_engine import load_onnx_rewriter, onnx_export_problem

    fast = dict(compute_type=compute_type, intra_threads=intra_threads,
                inter_threads=inter_threads, device=device, batch_size=batch_size)
    loaders: dict[str, tuple[Callable[[], RewriterBase], Callable[[str | Path], str | None]]] = {
        "onnx": (lambda: load_onnx_rewriter(path, intra_threads=intra_threads,
                                            batch_size=batch_size), onnx_export_problem),
        "ctranslate2": (lambda: load_fast_rewriter(path, **fast), export_problem),
    }
    if engine == "onnx" and device != "cpu":
        raise ConfigError(f"the onnx engine runs on cpu only, not {device!r}; use "
                          "engine='ctranslate2' or 'torch' there")
    if engine in loaders:
        return loaders[engine][0]()
    if engine == "torch":
        return load_rewriter(path, device=device, batch_size=batch_size)
    passed: list[str] = []
    has_model = Path(path, "udrl.json").is_file()
    for name, (load, problem_of) in loaders.items():
        if name == "onnx" and device != "cpu":
            passed.append(f"onnx: runs on cpu only, not {device}")
            continue
        problem = problem_of(path) if has_model else "no model"
        if problem is None:
            try:
                rw = load()
            except ModelError as e:
                problem = str(e)
            else:
                if passed:
                    log.info("rewriter engine: %s (%s)", name, "; ".join(passed))
                return rw
        passed.append(f"{name}: {problem}")
    log.info("rewriter engine: torch (%s)", "; ".join(passed))
    return load_rewriter(path, device=device, batch_size=batch_size)


# --- CLIP's window without torch ------------------------------------------------------------
# open_clip's tokenizer module imports torch (~0.5 GB resident); serving only needs the token
# count, so this re-runs CLIP's text cleaning and BPE over open_clip's own merge table.

_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[tuple[str, str], int], dict[int, str], Any]:
    import regex

    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("open_clip is not installed; it ships CLIP's BPE merge table")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as fh:  # CLIP keeps the first 49152 - 256 - 2 merges
        lines = fh.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    ranks = {tuple(line.split()): i for i, line in enumerate(lines)}
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))  # GPT-2/CLIP byte-to-unicode table
    byte_chars = {b: chr(b if b in printable else next(extra)) for b in range(256)}
    pattern = regex.compile("|".join(_CLIP_SPECIALS)
                            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                            regex.IGNORECASE)
    return ranks, byte_chars, pattern


@lru_cache(maxsize=65536)
def _clip_pieces(word: str) -> int:
    """BPE pieces of one pre-tokenised word: merge the best-ranked adjacent pair until none."""
    ranks = _clip_bpe()[0]
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pair = min(zip(parts, parts[1:]), key=lambda q: ranks.get(q, len(ranks)))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return len(parts)


def clip_token_count_light(text: str) -> int:
    """``generate.clip_token_count`` without importing torch: tokens in CLIP's window."""
    import ftfy

    _, byte_chars, pattern = _clip_bpe()
    clean = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
    count = 2  # start and end tokens
    for token in pattern.findall(clean):
        if token in _CLIP_SPECIALS:
            count += 1
        else:
            count += _clip_pieces("".join(byte_chars[b] for b in token.encode("utf-8")))
    return count
