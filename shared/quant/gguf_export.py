"""Export an HF checkpoint directory (ours) to a llama.cpp GGUF file, tokenizer included.

``export_gguf(hf_dir, out_path, dtype="f16" | "f32")`` is the one entry point for every checkpoint we
write: an MoE one (Qwen2-MoE / Ernie-4.5-MoE, ``shared.model.hf.save_moe_checkpoint``) is handed to
``shared.quant.gguf_moe``; a GPT-2 one is written here as a GGUF v3 file that llama.cpp loads as
architecture ``gpt2``:

* hyper-parameters: ``gpt2.context_length`` (n_positions), ``embedding_length``, ``block_count``,
  ``feed_forward_length`` (4 * n_embd), ``attention.head_count``, ``attention.layer_norm_epsilon``,
  ``general.file_type`` (ALL_F32 or MOSTLY_F16);
* tensors under llama.cpp's gpt2 names (``gguf.TENSOR_NAMES``): ``token_embd``, ``position_embd``,
  ``blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down}``, ``output_norm``, each
  ``.weight`` and (except the embeddings) ``.bias``. Matrices are stored as (out, in) row-major,
  which is ggml's ``ne = [in, out]``: the ``nn.Linear`` layout, i.e. HF's ``Conv1D`` (in, out)
  transposed. With ``dtype="f16"`` the matrices are F16; norms and biases always stay F32 (llama.cpp
  adds and normalizes in F32, and they are tiny). No ``output`` tensor is written: GPT-2 ties the
  head to ``token_embd`` and llama.cpp reuses ``token_embd`` when ``output`` is absent, as
  llama.cpp's own ``convert_hf_to_gguf.py`` does for GPT-2;
* the tokenizer: ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE), ``pre = "gpt-2"`` (GPT-2's split
  regex, which is ours), tokens, token types (special added tokens CONTROL, so llama.cpp parses
  ``<|user|>`` as one token when tokenizing with special=True; other added tokens USER_DEFINED;
  ids past the tokenizer up to the model's vocab UNUSED), merges, bos/eos/pad ids from the HF
  tokenizer, ``eot = <|end|>`` (end of turn: llama.cpp stops generating there), ``add_bos`` as the
  HF tokenizer does it, and the Jinja chat template as ``tokenizer.chat_template``.

What every architecture shares lives here, once, and ``gguf_moe`` uses it: ``check_dtype`` (the export
dtypes), ``gguf_writer`` (the atomic write below), ``add_tensors`` (the F16/F32 policy) and
``add_tokenizer`` (the ``tokenizer.ggml.*`` keys above).

The checkpoint is read and validated by ``shared.model.hf.load_gpt`` (GPT-2 only, tied head, shapes
match config; a ``CheckpointError`` names the fix). Tokenizer problems raise ``GGUFExportError``.
The file is written beside ``out_path`` and renamed into place, so a failed export never leaves a
half-written GGUF behind.

What this module does not do: quantize below F16 or run the file (``shared.quant.llama_cpp``), or
read GGUF vocabs back as HF tokenizers (``shared.tokenizer.gguf_vocab``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import torch
from gguf import GGUFReader, GGUFWriter, LlamaFileType, MODEL_ARCH, MODEL_TENSOR, TENSOR_NAMES, TokenType

from shared.model.gpt import GPT
from shared.model.hf import is_moe_checkpoint, load_gpt
from shared.chat_format import END
from shared.tokenizer.hf_format import load_tokenizer

ARCH = gguf.MODEL_ARCH_NAMES[MODEL_ARCH.GPT2]  # "gpt2"
TOKENIZER_MODEL = "gpt2"  # llama.cpp's name for byte-level BPE
TOKENIZER_PRE = "gpt-2"  # llama.cpp's name for GPT-2's pre-tokenizer regex (ours: shared.tokenizer.byte_level)
DTYPES: dict[str, tuple[type, LlamaFileType]] = {
    "f32": (np.float32, LlamaFileType.ALL_F32),
    "f16": (np.float16, LlamaFileType.MOSTLY_F16),
}

# nanoGPT parameter stem -> llama.cpp tensor; block stems come after ``transformer.h.N.``.
_TOP = {"transformer.wte": MODEL_TENSOR.TOKEN_EMBD, "transformer.wpe": MODEL_TENSOR.POS_EMBD,
        "transformer.ln_f": MODEL_TENSOR.OUTPUT_NORM}
_BLOCK = {"ln_1": MODEL_TENSOR.ATTN_NORM, "attn.c_attn": MODEL_TENSOR.ATTN_QKV,
          "attn.c_proj": MODEL_TENSOR.ATTN_OUT, "ln_2": MODEL_TENSOR.FFN_NORM,
          "mlp.c_fc": MODEL_TENSOR.FFN_UP, "mlp.c_proj": MODEL_TENSOR.FFN_DOWN}
_BLOCK_PARAM = re.compile(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)")


class GGUFExportError(ValueError):
    """The checkpoint's tokenizer (or the requested output) cannot be exported; the message names the fix."""


def gguf_tensor_name(name: str) -> str:
    """The llama.cpp gpt2 tensor name of nanoGPT parameter ``name`` (``transformer.h.0.ln_1.bias`` -> ``blk.0.attn_norm.bias``)."""
    if match := _BLOCK_PARAM.fullmatch(name):
        bid, stem, kind = match.groups()
        if stem in _BLOCK:
            return f"{TENSOR_NAMES[_BLOCK[stem]].format(bid=int(bid))}.{kind}"
    else:
        stem, _, kind = name.rpartition(".")
        if stem in _TOP:
            return f"{TENSOR_NAMES[_TOP[stem]]}.{kind}"
    raise GGUFExportError(f"parameter {name!r} has no llama.cpp gpt2 tensor; only GPT-2 models can be exported")


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """Every tensor of ``model`` under its GGUF name, fp32, in llama.cpp's layout (tied head omitted)."""
    tensors = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight":  # tied to wte: llama.cpp reuses token_embd as the output matrix
            continue
        # nn.Linear is (out, in) row-major = ggml ne [in, out]: exactly what llama.cpp expects, no transpose.
        tensors[gguf_tensor_name(name)] = value.detach().to(torch.float32).cpu().numpy()
    return tensors


def export_gguf(hf_dir: str | Path, out_path: str | Path, dtype: Literal["f16", "f32"] = "f16",
                name: str | None = None) -> Path:
    """Write the checkpoint in ``hf_dir`` (weights + tokenizer) to GGUF ``out_path``; return the path.

    ``dtype`` is the type of the matrices (norms and biases stay F32); ``name`` is ``general.name``
    (default: the directory name). A GPT-2 checkpoint is written here; an MoE one (Qwen2-MoE or
    Ernie-4.5-MoE, ``shared.model.hf.save_moe_checkpoint``) by ``shared.quant.gguf_moe``.
    """
    np_dtype, file_type = check_dtype(dtype)
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if is_moe_checkpoint(hf_dir):
        from shared.quant.gguf_moe import export_moe_gguf  # it imports this module's helpers
        return export_moe_gguf(hf_dir, out_path, dtype=dtype, name=name)
    model = load_gpt(hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    cfg = model.config
    with gguf_writer(out_path, ARCH) as writer:
        writer.add_name(name or hf_dir.resolve().name)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
        writer.add_file_type(int(file_type))
        add_tokenizer(writer, tokenizer, cfg.vocab_size, hf_dir)
        add_tensors(writer, gguf_tensors(model), np_dtype)
    return out_path


# ----------------------------------------------------------------------------- shared by every architecture
# (``shared.quant.gguf_moe`` writes its files with these: one place for the dtype policy, the atomic write
# and the tokenizer.)

def check_dtype(dtype: str) -> tuple[type, LlamaFileType]:
    """The numpy type of the matrices and the ``general.file_type`` of an export ``dtype``, or why not."""
    if dtype not in DTYPES:
        raise GGUFExportError(f"dtype {dtype!r} is not exportable; choose one of {', '.join(DTYPES)} "
                              "(quantize further with shared.quant.llama_cpp.quantize_gguf)")
    return DTYPES[dtype]


@contextlib.contextmanager
def gguf_writer(out_path: Path, arch: str) -> Iterator[GGUFWriter]:
    """A ``GGUFWriter`` for architecture ``arch``: the block adds metadata and tensors; on leaving it the file
    is written beside ``out_path`` and renamed into place, and on an error nothing is left behind."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    writer = GGUFWriter(partial, arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, out_path)


def add_tensors(writer: GGUFWriter, tensors: dict[str, np.ndarray], np_dtype: type,
                keep_f32: Iterable[str] = ()) -> None:
    """Add ``tensors`` (GGUF name -> fp32 array in llama.cpp's layout): matrices as ``np_dtype``, 1-D tensors and
    the names in ``keep_f32`` as F32."""
    keep = set(keep_f32)
    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, _cast(tensor_name, array, np.float32 if tensor_name in keep else np_dtype))


def _cast(name: str, array: np.ndarray, np_dtype: type) -> np.ndarray:
    """Matrices to ``np_dtype``; 1-D tensors (norms, biases) stay F32. F16 overflow is an error, not inf."""
    if array.ndim < 2 or np_dtype is np.float32:
        return np.ascontiguousarray(array, dtype=np.float32)
    cast = array.astype(np_dtype)
    if not np.isfinite(cast).all() and np.isfinite(array).all():
        raise GGUFExportError(f"{name} has values beyond F16's range (max |w| = {np.abs(array).max():.3g} > 65504); "
                              "export with dtype='f32'")
    return np.ascontiguousarray(cast)


def _merges(tokenizer, hf_dir: Path) -> list[str]:
    """The BPE merges as ``"left right"`` strings, after checking the tokenizer is GPT-2 style byte-level BPE."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    if model.get("type") != "BPE" or not byte_level or spec.get("normalizer") or model.get("ignore_merges"):
        raise GGUFExportError(
            f"the tokenizer in {hf_dir} is not GPT-2 style byte-level BPE (model {model.get('type')}, pre-tokenizer "
            f"{pre.get('type')}, normalizer {(spec.get('normalizer') or {}).get('type')}); llama.cpp's 'gpt-2' "
            "pre-tokenizer would split text differently: export a checkpoint trained with shared.tokenizer")
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def add_tokenizer(writer: GGUFWriter, tokenizer, vocab_size: int, hf_dir: Path) -> None:
    """Write the ``tokenizer.ggml.*`` keys (see the module docstring) for a model with ``vocab_size`` rows."""
    n = len(tokenizer)
    if n > vocab_size:
        raise GGUFExportError(f"the tokenizer in {hf_dir} has {n} tokens but the model only {vocab_size} embedding "
                              "rows; pair the checkpoint with the tokenizer it was trained with")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    if any(t is None for t in tokens):
        raise GGUFExportError(f"the tokenizer in {hf_dir} has gaps in its ids; re-save it with shared.tokenizer")
    types = [int(TokenType.NORMAL)] * n
    for token_id, added in tokenizer.added_tokens_decoder.items():
        types[token_id] = int(TokenType.CONTROL if added.special else TokenType.USER_DEFINED)
    # Rows the model has but the tokenizer never emits (a padded vocab): named, and marked unused.
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [int(TokenType.UNUSED)] * (vocab_size - n)

    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer, hf_dir))
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id),
                          (writer.add_eot_token_id, tokenizer.convert_tokens_to_ids(END) if END in tokens else None)):
        if token_id is not None:
            add(token_id)
    # llama.cpp adds BOS on tokenize(add_special=True) only if told to; mirror what the HF tokenizer does.
    bare, with_specials = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a")
    writer.add_add_bos_token(len(with_specials) > len(bare) and with_specials[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(with_specials) > len(bare) and with_specials[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def gguf_tensor_types(path: str | Path) -> dict[str, str]:
    """Tensor name -> ggml type name (``"F16"``, ``"Q4_0"``, ...) of a GGUF file: what a quantizer chose."""
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
