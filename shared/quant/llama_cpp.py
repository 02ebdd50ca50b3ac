"""Run and quantize GGUF files with llama.cpp, through llama-cpp-python.

* ``gguf_file(path)``: the model file of a GGUF artifact directory (``*.gguf`` in it), or ``path``
  itself when it is a ``.gguf`` file; None when there is none.
* ``load_llama(path, n_ctx, n_threads, logits_all, kv_cache)``: a ``llama_cpp.Llama`` on CPU, quiet.
  ``n_ctx`` defaults to the model's trained context and may not exceed it (GPT-2 has learned positions:
  a position past them has no embedding; RoPE models were never trained past it). Any architecture
  llama.cpp knows loads: GPT-2 and, from ``shared.quant.gguf_moe``, qwen2moe / ernie4_5-moe / qwen2.
  ``kv_cache`` is the K/V cache type: ``"f16"`` (llama.cpp's default, what serving uses) or ``"f32"``,
  which makes an F32 file's logits match transformers' to ~1e-6 instead of ~1e-3 (F16 rounding of K
  and V), for exactness checks.
* ``llama_logits(model_or_path, token_ids, kv_cache=...)``: float32 logits (len(ids), n_vocab) for every
  position.
* ``llama_tokenize(llama, text, special=True)``: llama.cpp's own tokenizer; ``special=True`` parses
  control tokens (``<|user|>``) as single ids, as our HF tokenizer does.
* ``llama_generate(model_or_path, prompt, max_new_tokens, temperature=0.0)``: ``LlamaGeneration``
  with the text (stop token included, special tokens rendered, like ``shared.eval.generate``), the
  ids, why it stopped, and timings: prefill and decode tokens/s as llama.cpp measures its own
  compute (``llama_perf_context``), plus wall-clock tokens/s including the Python loop.
* ``quantize_gguf(src, dst, qtype)``: llama.cpp's quantizer (``llama_model_quantize``) with its
  default tensor-type policy: ``f16``, ``q8_0``, ``q4_0``, ``q4_k`` (= Q4_K_M, as llama-quantize's
  alias), ``q4_k_s``. K-quants work on blocks of 256 along a row; a tensor whose rows are shorter
  (n_embd 128 in our tiny models) falls back to another type (Q4_K -> Q5_0); the tied
  ``token_embd`` gets the output-matrix type (Q6_K, or Q8_0 when rows are not a multiple of 256).
  ``shared.quant.gguf_export.gguf_tensor_types`` shows what was chosen.

Every file is checked before llama.cpp sees it (exists, GGUF magic and version, readable metadata,
an architecture), so bad user input raises ``GGUFError`` instead of reaching C code; what llama.cpp
still refuses raises ``LlamaCppError`` carrying llama.cpp's own log lines. Without llama-cpp-python,
every call raises ``LlamaCppUnavailable`` (an ImportError) naming ``scripts/install_llama_cpp.sh``.

What this module does not do: write GGUF from a checkpoint (``shared.quant.gguf_export``), choose
which runtime opens an artifact or serve it (``shared.serving``), or sample with anything but temperature.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.tokenizer.gguf_vocab import GGUFError, read_gguf_metadata

log = logging.getLogger(__name__)

INSTALL_HINT = ("install it with scripts/install_llama_cpp.sh (a portable build: the default native build "
                "segfaults on Q8_0/Q4_0 files on AVX-512 machines)")
#: qtype -> name of llama.cpp's ``llama_ftype`` constant (names, so this table exists without llama_cpp).
QUANT_TYPES = {"f32": "LLAMA_FTYPE_ALL_F32", "f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
               "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
               "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S"}
#: K/V cache type -> name of the ggml type constant.
KV_CACHE_TYPES = {"f16": "GGML_TYPE_F16", "f32": "GGML_TYPE_F32"}
_LOG_WARN, _LOG_ERROR, _LOG_CONT = 3, 4, 5  # ggml.h ggml_log_level (llama_cpp._logger's table is older)


class LlamaCppUnavailable(ImportError):
    """llama-cpp-python is not installed (or its native library does not load)."""


class LlamaCppError(RuntimeError):
    """llama.cpp refused a file or an operation; the message quotes its log and names the fix."""


@dataclass(frozen=True)
class LlamaGeneration:
    """One generation: output and timings (ms; tokens/s are 0.0 when a phase did not run)."""

    text: str                    # generated text, stop token included, special tokens rendered
    token_ids: list[int]         # generated ids, stop token included
    prompt_tokens: int
    stop_reason: str             # "eog" (end-of-generation token), "length" (max_new_tokens), "context" (n_ctx full)
    prefill_ms: float            # llama.cpp's prompt-processing time
    decode_ms: float             # llama.cpp's time for single-token decodes
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    wall_s: float                # whole call, Python sampling loop included
    wall_tokens_per_s: float     # generated tokens / wall_s


def llama_cpp_module():
    """The ``llama_cpp`` module, or ``LlamaCppUnavailable`` saying how to install it."""
    try:
        import llama_cpp
    except (ImportError, OSError) as err:  # OSError: the package is there but its shared library is not loadable
        raise LlamaCppUnavailable(f"llama-cpp-python is not usable ({err}); {INSTALL_HINT}") from err
    return llama_cpp


def gguf_file(path: str | Path) -> Path | None:
    """The model file of a GGUF artifact directory (its first ``*.gguf``), or ``path`` itself when it is a
    .gguf file; None when there is none."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    files = sorted(path.glob("*.gguf")) if path.is_dir() else []
    return files[0] if files else None


def check_gguf(path: str | Path) -> dict[str, Any]:
    """The metadata of GGUF model file ``path``, or ``GGUFError``/``FileNotFoundError`` naming the problem."""
    meta = read_gguf_metadata(path)  # checks existence, magic, version, and that the metadata parses
    if "general.architecture" not in meta:
        raise GGUFError(f"{path} has no general.architecture: it is a vocab-only or damaged GGUF, not a model; "
                        "export one with shared.quant.gguf_export.export_gguf")
    return meta


@contextlib.contextmanager
def _llama_log(lc) -> Iterator[list[tuple[int, str]]]:
    """Collect llama.cpp's log lines (level, text) instead of printing them, for error messages."""
    lines: list[tuple[int, str]] = []

    @lc.llama_log_callback
    def collect(level, text, _user_data):
        lines.append((int(level), text.decode("utf-8", "replace")))

    lc.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger  # restore llama-cpp-python's own callback (it honours verbose=)
        lc.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _problems(lines: list[tuple[int, str]], limit: int = 6) -> str:
    """The warning/error lines of a captured log (continuations kept with their line), last ``limit``."""
    picked, keep = [], False
    for level, text in lines:
        keep = level in (_LOG_WARN, _LOG_ERROR) or (level == _LOG_CONT and keep)
        if keep and text.strip():
            picked.append(text.strip())
    return " | ".join(picked[-limit:]) or "(no warnings logged)"


def load_llama(path: str | Path, n_ctx: int | None = None, n_threads: int | None = None,
               logits_all: bool = False, seed: int = 0, kv_cache: str = "f16"):
    """A CPU ``llama_cpp.Llama`` for GGUF ``path`` (see the module docstring); ``n_threads=None``: library default."""
    if kv_cache not in KV_CACHE_TYPES:
        raise ValueError(f"kv_cache={kv_cache!r} is not a K/V cache type; choose one of {', '.join(KV_CACHE_TYPES)}")
    meta = check_gguf(path)  # before importing llama_cpp: a bad file is reported the same either way
    lc = llama_cpp_module()
    kv_type = getattr(lc, KV_CACHE_TYPES[kv_cache])
    trained = meta.get(f"{meta['general.architecture']}.context_length")
    if n_ctx is None:
        n_ctx = int(trained or 512)
    elif n_ctx < 1 or (trained and n_ctx > trained):
        raise ValueError(f"n_ctx={n_ctx} is not usable for {path}: it must be in [1, {trained}], the context the "
                         "model was trained with (positions past it have no embedding)")
    with _llama_log(lc) as lines:
        try:
            # n_batch = n_ctx: a whole prompt is one llama_decode call, so prefill timings are one batch.
            return lc.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                            n_threads=n_threads, n_threads_batch=n_threads, logits_all=logits_all,
                            seed=seed, n_gpu_layers=0, type_k=kv_type, type_v=kv_type, verbose=False)
        except ValueError as err:
            raise LlamaCppError(f"llama.cpp could not load {path} ({err}); llama.cpp says: {_problems(lines)}. "
                                "Re-export the file with shared.quant.gguf_export or upgrade llama-cpp-python "
                                "if it was written by a newer llama.cpp") from err


@contextlib.contextmanager
def _opened(model, **load_kwargs):
    """``model`` itself if it is a loaded Llama; else load the path for the block and free it afterwards."""
    if isinstance(model, (str, os.PathLike)):
        llama = load_llama(model, **load_kwargs)
        try:
            yield llama
        finally:
            llama.close()
    else:
        yield model


def context_limit(llama) -> int:
    """Usable positions: the context (llama.cpp may pad it) but never past the trained one."""
    lc = llama_cpp_module()
    return min(llama.n_ctx(), lc.llama_model_n_ctx_train(llama.model))


def _checked_ids(llama, token_ids: Sequence[int]) -> list[int]:
    """``token_ids`` as ints after checking range and length (llama.cpp would fail or read out of bounds)."""
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError("token_ids is empty; pass at least one token id")
    n_vocab, limit = llama.n_vocab(), context_limit(llama)
    bad = [t for t in ids if not 0 <= t < n_vocab]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the model's vocabulary [0, {n_vocab}); tokenize with "
                         "the model's own tokenizer")
    if len(ids) > limit:
        raise ValueError(f"{len(ids)} tokens exceed the context of {limit}; shorten the input")
    return ids


def llama_tokenize(llama, text: str, special: bool = True, add_special: bool = False) -> list[int]:
    """Token ids of ``text`` by llama.cpp's tokenizer (``add_special``: BOS/EOS if the vocab asks for them)."""
    return llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=special)


def llama_logits(model, token_ids: Sequence[int], n_threads: int | None = None, kv_cache: str = "f16") -> np.ndarray:
    """Float32 logits (len(token_ids), n_vocab) of a Llama loaded with ``logits_all=True``, or of a GGUF path
    (loaded with ``kv_cache``)."""
    with _opened(model, logits_all=True, n_threads=n_threads, kv_cache=kv_cache) as llama:
        if not getattr(llama, "_logits_all", False):  # without it llama.cpp keeps only the last row
            raise ValueError("this Llama keeps logits for the last position only; load it with "
                             "load_llama(path, logits_all=True) or pass the GGUF path")
        ids = _checked_ids(llama, token_ids)
        llama.reset()
        llama.eval(ids)
        return np.array(llama.scores[:len(ids)], dtype=np.float32)


def llama_generate(model, prompt: str | Sequence[int], max_new_tokens: int = 64, temperature: float = 0.0,
                   seed: int = 0, n_threads: int | None = None, ignore_eog: bool = False) -> LlamaGeneration:
    """Generate from ``prompt`` (text, special tokens parsed, or ids) greedily (``temperature=0``) or sampled.

    Stops at an end-of-generation token (``<|end|>``, ``<|endoftext|>``), after ``max_new_tokens``, or
    when the context is full. ``ignore_eog`` generates through end-of-generation tokens: fixed-length
    runs for throughput measurements.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    lc = llama_cpp_module()
    with _opened(model, n_threads=n_threads, seed=seed) as llama:
        ids = llama_tokenize(llama, prompt) if isinstance(prompt, str) else list(prompt)
        ids = _checked_ids(llama, ids)
        budget = min(max_new_tokens, context_limit(llama) - len(ids) + 1)  # the last token needs no slot
        vocab = lc.llama_model_get_vocab(llama.model)
        llama.set_seed(seed)
        llama.reset()
        lc.llama_perf_context_reset(llama.ctx)
        out: list[int] = []
        stop = "length" if budget == max_new_tokens else "context"
        start = time.perf_counter()
        # top_k=0, top_p=1, min_p=0, no penalties: plain temperature sampling (greedy at 0), as our engine does.
        for token in llama.generate(ids, temp=temperature, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            out.append(int(token))
            if not ignore_eog and lc.llama_vocab_is_eog(vocab, token):
                stop = "eog"
                break
            if len(out) >= budget:
                break
        wall = time.perf_counter() - start
        perf = lc.llama_perf_context(llama.ctx)
        text = llama.detokenize(out, special=True).decode("utf-8", errors="replace")
    return LlamaGeneration(
        text=text, token_ids=out, prompt_tokens=len(ids), stop_reason=stop,
        prefill_ms=perf.t_p_eval_ms, decode_ms=perf.t_eval_ms,
        prefill_tokens_per_s=_rate(perf.n_p_eval, perf.t_p_eval_ms),
        decode_tokens_per_s=_rate(perf.n_eval, perf.t_eval_ms),
        wall_s=wall, wall_tokens_per_s=len(out) / wall if wall > 0 else 0.0)


def _rate(n: int, ms: float) -> float:
    return 1000.0 * n / ms if n > 0 and ms > 0 else 0.0


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str = "q8_0", n_threads: int | None = None) -> Path:
    """Quantize GGUF ``src`` (F32/F16) to ``dst`` as ``qtype`` (see ``QUANT_TYPES``); return ``dst``."""
    if qtype not in QUANT_TYPES:
        raise ValueError(f"unknown qtype {qtype!r}; choose one of {', '.join(QUANT_TYPES)}")
    src, dst = Path(src), Path(dst)
    check_gguf(src)
    lc = llama_cpp_module()
    if dst.resolve() == src.resolve():
        raise ValueError(f"quantize_gguf would overwrite its input {src}; pass another dst path")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")  # renamed into place only once llama.cpp succeeded
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, QUANT_TYPES[qtype])
    params.nthread = n_threads or 0  # 0: llama.cpp uses every hardware thread
    with _llama_log(lc) as lines:
        rc = lc.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0:
        partial.unlink(missing_ok=True)
        raise LlamaCppError(f"llama.cpp could not quantize {src} to {qtype} (code {rc}); llama.cpp says: "
                            f"{_problems(lines)}. Quantize from an F32/F16 export (shared.quant.gguf_export)")
    os.replace(partial, dst)
    fallbacks = sum("falling back" in text for _, text in lines)
    if fallbacks:
        log.info("%s: %d tensor(s) had rows too short for %s and fell back to another type (see gguf_tensor_types)",
                 dst, fallbacks, qtype)
    return dst
