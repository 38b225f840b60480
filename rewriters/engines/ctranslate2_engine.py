"""The CTranslate2 engine: the rewriter converted to CTranslate2 (int8 weights), same API and commands.

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
  (``bans.first_extra_ban``), so the ban sees generated tokens only, as ``torch_logits._ban_repeated_trigrams``.
  For a model with length markers, rows that break a ban PyTorch adds (a 3-gram of the text
  repeated across a marker; the marker grammar of ``bans.Countdown``) are redrawn from
  that step with the banned ids suppressed (``bans.first_missed_ban``);
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
~0.5 GB resident): the CLIP window is measured by ``clip_count.clip_token_count_light``.

Shared with the ONNX Runtime engine: the routing of requests to
PyTorch (``fallback.TorchFallback``) and the export lifecycle (``export``); the registry in
``engines`` picks among the three engines.
"""


from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..commands import END_TOKEN
from ..errors import ConfigError, ModelError
from ..model import RewriterMeta
from .bans import NGRAM_BAN, first_extra_ban, first_missed_ban, restrict_output
from .base import Decoding, RewriterBase
from .export import ExportFormat
from .fallback import TorchFallback, torch_fallback

__all__ = [
    "CT2_QUANTIZATIONS",
    "COMPUTE_TYPES",
    "CT2_DIR",
    "CTranslate2Rewriter",
    "ctranslate2_export_problem",
    "export_ctranslate2",
    "load_ctranslate2_rewriter",
]

CT2_QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                     "bfloat16", "float32")  # weight storage in the export
COMPUTE_TYPES = ("default", "auto") + CT2_QUANTIZATIONS  # "default": as stored
CT2_DIR = "ctranslate2"  # the export's folder inside the model directory
CT2_EXPORT = ExportFormat("CTranslate2", CT2_DIR, 1, ("model.bin", "config.json", "vocabulary.json"),
                          CT2_QUANTIZATIONS, "CTranslate2 conversion")
_PAD_TOKEN = "<|udrl_pad_{}|>"  # names of embedding rows beyond the tokenizer


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


def ctranslate2_export_problem(model_dir: str | Path, ct2_dir: str | Path | None = None) -> str | None:
    """Why the CTranslate2 export of ``model_dir`` cannot serve it, or None when it can.

    Cheap (reads two JSON files): the export must exist, be complete and have been made from
    the model version in ``udrl.json``. The banned-token digest is checked on load.
    """
    return CT2_EXPORT.problem(model_dir, ct2_dir)



def export_ctranslate2(model_dir: str | Path, out_dir: str | Path | None = None,
                       quantization: str = "int8", force: bool = False) -> Path:
    """Convert a rewriter model directory to CTranslate2 for serving.

    The conversion is written to a temporary folder and renamed into place, so a failed run
    never leaves a half export. Needs torch and transformers (it reads the weights).

    Args:
        model_dir: a directory written by ``save_model_dir``.
        out_dir: where to write; default ``<model_dir>/ctranslate2`` (what ``auto`` looks for).
        quantization: weight storage, one of ``CT2_QUANTIZATIONS`` ("int8": ~4x smaller, fastest on
            CPU; "float32": bit-for-bit the PyTorch weights).
        force: replace an existing export. Without it an export that is already current (same
            model version, quantization and bans) is kept and returned; any other raises.
    Returns:
        The export folder.
    """
    def write(tmp: Path, p: Path, tokenizer, banned: np.ndarray, info) -> dict[str, Any]:
        _converter(p, tokenizer, banned).convert(str(tmp), quantization=quantization, force=True)
        return {}

    return CT2_EXPORT.export(model_dir, out_dir, quantization, force,
                             {"ctranslate2": _ct2_version()}, write)


def _ct2_version() -> str:
    import ctranslate2

    return ctranslate2.__version__


class CTranslate2Rewriter(TorchFallback, RewriterBase):
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

    _loader = "load_ctranslate2_rewriter"
    budget_rule = "equal"  # generate_batch takes one max_length

    def __init__(self, generator, tokenizer, meta: RewriterMeta,
                 output_vocab: Sequence[int] | None = None, *, export: dict[str, Any],
                 batch_size: int = 32, fallback: Callable[[], RewriterBase] | None = None):
        super().__init__(tokenizer, meta, n_rows=int(export["vocab_rows"]),
                         n_positions=int(export["n_positions"]), batch_size=batch_size)
        self.generator = generator
        self.export = export
        self.banned = restrict_output(self._always_banned, output_vocab, self.end_id)
        allowed = int((~self.banned).sum())
        # Sampling: the banned rows have probability 0, so taking the top `allowed` first draws
        # from the same distribution and spares a sort of the whole vocabulary every step.
        self._sample_topk = allowed if allowed <= len(self.banned) // 4 else 0
        CT2_EXPORT.check_loaded(export, meta, self.banned)
        self.countdown = self._countdown(self.banned)  # the marker grammar
        self._emittable = frozenset(np.flatnonzero(~self.banned).tolist())
        self._markers = None  # (V,) bool: length markers, left out of the 3-gram ban
        if self.marker_ids:
            self._markers = np.zeros(len(self.banned), dtype=bool)
            self._markers[list(self.marker_ids.values())] = True
        self._init_fallback(fallback)

    @staticmethod
    def fallback_reason(opts: Decoding) -> str | None:
        """Why a request runs on the PyTorch engine, or None when CTranslate2 serves it."""
        if opts.strict_length:
            return "strict_length needs per-step word counting (no Python logits processors)"
        if opts.decoding == "beam":
            return "beam scores are normalised differently by CTranslate2 and transformers"
        if opts.decoding == "sample" and opts.seed is not None:
            return "CTranslate2 cannot reseed a running generator: seeded sampling"
        return None

    def _seed(self, seed: int) -> None:
        pass  # greedy is deterministic; seeded sampling is routed to PyTorch

    def _release(self) -> None:
        self.generator.unload_model()
        self._release_fallback()

    def _generate(self, plan, opts: Decoding):
        assert not opts.strict_length and opts.decoding != "beam"  # routed to the fallback
        n = opts.n
        chunk, encoded, budget = plan.chunk, plan.encoded, plan.budget  # budget_rule "equal"
        prompts = [encoded[i] for i in range(len(chunk)) for _ in range(n)]  # n draws per item
        run: dict[str, Any] = {  # generate_batch's options
            "end_token": END_TOKEN, "return_end_token": True, "beam_size": 1,
            "include_prompt_in_result": False, "no_repeat_ngram_size": NGRAM_BAN,
        }
        if opts.decoding == "sample":
            run.update(sampling_topk=self._sample_topk, sampling_topp=opts.top_p,
                       sampling_temperature=opts.temperature)
        else:
            run.update(sampling_topk=1)
        seqs = self._run(prompts, budget, run)
        self._redo_extra_bans(prompts, seqs, budget, run)
        self._redo_missed_bans(prompts, seqs, budget, run,
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
            step = first_extra_ban(prompt[shortest:], seq, self.banned)
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
                missed = first_missed_ban(seqs[r], skip, self.countdown, self.end_id, budget,
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


def load_ctranslate2_rewriter(path: str | Path, compute_type: str = "default",
                              intra_threads: int = 0, inter_threads: int = 1,
                              device: str = "cpu", batch_size: int = 32,
                              fallback: bool = True) -> CTranslate2Rewriter:
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
    p, meta, tokenizer, output_vocab, out, export = CT2_EXPORT.open(
        path, "rewriters.engines.ctranslate2_engine.export_ctranslate2")
    try:
        generator = ctranslate2.Generator(str(out), device=kind, device_index=index,
                                          compute_type=compute_type,
                                          intra_threads=intra_threads,
                                          inter_threads=inter_threads)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"cannot load the CTranslate2 model in {out}: {e}") from e
    return CTranslate2Rewriter(generator, tokenizer, meta, output_vocab, export=export,
                               batch_size=batch_size,
                               fallback=torch_fallback(p, fallback, device, batch_size))
