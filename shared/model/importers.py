"""Bring your own checkpoint: convert a GPT-2 pretrained elsewhere into a journey HF checkpoint.

``import_checkpoint(src, out_dir)`` reads one of

- ``nanogpt``: nanoGPT's ``ckpt.pt`` (``{'model': state_dict, 'model_args': {...}, 'iter_num', ...}``),
  also from ``torch.compile``'d runs (``_orig_mod.`` keys), old versions (causal-mask buffers) and
  ``bias=False`` models (their biases load as zeros, which is the same function);
- ``build-nanogpt``: build-nanogpt's ``model_NNNNN.pt`` (``{'model', 'config': GPTConfig(...), 'step',
  'val_loss'}``), whose config class lives in the user's training script and is not importable here;
- ``llmc``: llm.c's model file (``gpt2_124M.bin``, ``model_NNNNN.bin``), fp32 (version 3) or bf16 (version 5);
- ``hf``: a Hugging Face GPT-2 directory (validated and re-saved);

and writes it with ``shared.model.hf.save_hf_checkpoint``, so the result has identical logits to
the source and loads with ``AutoModelForCausalLM.from_pretrained``. ``format="auto"`` detects the
format from the file's magic bytes and contents.

Security: a ``torch.save`` file is a pickle, and unpickling can run code. We never unpickle with
``weights_only=False``: the file's globals are listed without running anything, and each one that
torch does not already allow (such as build-nanogpt's ``__main__.GPTConfig``) is replaced by an
inert stand-in that only records the state pickled for it. A file that asks for ``os`` or ``sys``
is refused. Still, import only checkpoints you trust: a stand-in keeps the file's data, not its meaning.

What this module does not do: other architectures (Llama, ...), training or optimizer state, GGUF.
"""
from __future__ import annotations

import contextlib
import hashlib
import pickle
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import (TOKENIZER_FILES, CheckpointError, checked_config, gpt_from_state_dict, gpt_shapes,
                             load_gpt, normalize_state_dict, save_hf_checkpoint, weight_files)

FORMATS = ("nanogpt", "build-nanogpt", "llmc", "hf")
_FIX = ("pass a nanoGPT ckpt.pt, a build-nanogpt model_NNNNN.pt, an llm.c model .bin (gpt2_124M.bin) "
        "or a Hugging Face GPT-2 directory")
# llm.c writes several kinds of files; only the model file holds the weights.
LLMC_MODEL_MAGIC = 20240326
_LLMC_OTHER_MAGICS = {20240327: "debug-state", 20240328: "tokenizer", 20240527: "training-state"}
_LLMC_DTYPES = {3: (np.float32, torch.float32), 5: (np.int16, torch.bfloat16)}  # bf16 is read as raw 16-bit words
_LLMC_HEADER_INTS = 256


def import_checkpoint(src, out_dir, format: str = "auto", tokenizer=None) -> dict[str, Any]:
    """Convert the GPT-2 checkpoint at ``src`` into an HF checkpoint directory ``out_dir``; return what was found.

    ``format``: one of ``FORMATS`` or ``"auto"``. ``tokenizer``: the tokenizer to save with the model,
    as an HF tokenizer directory, a ``.gguf`` vocabulary file or a hub name (``gpt2``; needs the
    network); ``None`` leaves it to the caller (an ``hf`` source keeps its own tokenizer files).
    The returned dict holds ``format``, ``source``, ``sha256`` (of the source file; for a
    directory, of its weight files), ``out_dir``, ``config``
    (``GPTConfig`` fields), ``n_params``, ``zero_biases``, ``tokenizer``, ``meta`` (training step and
    loss when the checkpoint records them) and ``notes``.
    """
    src, out = Path(src), Path(out_dir)
    if not src.exists():
        raise CheckpointError(f"checkpoint {src} not found; {_FIX}")
    if out.resolve() == src.resolve():
        raise CheckpointError(f"out_dir {out} is the source checkpoint itself; write the import to a new directory")
    if format not in ("auto", *FORMATS):
        raise CheckpointError(f"unknown checkpoint format {format!r}; choose 'auto' or one of {list(FORMATS)}")
    found = detect_format(src) if format == "auto" else format
    info: dict[str, Any] = {"format": found, "source": str(src), "zero_biases": False, "meta": {}, "notes": []}
    if found == "llmc":
        model = read_llmc(src, info)
    elif found == "hf":
        model = load_gpt(src)
    else:
        model = read_torch_checkpoint(src, info, expected=found)
    if tokenizer is None and found == "hf" and any((src / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = src
    with _tokenizer_dir(tokenizer) as tokenizer_dir:
        save_hf_checkpoint(model, out, tokenizer_dir=tokenizer_dir)
    info.update(sha256=_sha256(src), out_dir=str(out), config=asdict(model.config),
                n_params=model.num_params(), tokenizer=None if tokenizer is None else str(tokenizer))
    return info


def detect_format(src) -> str:
    """Which of ``FORMATS`` ``src`` is, from magic bytes and (for torch files) contents; an error if none."""
    src = Path(src)
    if src.is_dir():
        if (src / "config.json").is_file():
            return "hf"
        raise CheckpointError(f"{src} is a directory without config.json, so not an HF checkpoint; {_FIX}")
    with open(src, "rb") as f:
        head = f.read(8)
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (LLMC_MODEL_MAGIC, *_LLMC_OTHER_MAGICS):
        return "llmc"
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch.save zip archive, or a legacy pickle
        return _classify_torch(src, load_torch_untrusted(src))[0]
    if head.startswith(b"GGUF"):
        raise CheckpointError(f"{src} is a GGUF file (an export format); import the checkpoint it was made from")
    if src.suffix == ".bin":  # most likely a damaged llm.c file: let its reader say what is wrong
        return "llmc"
    raise CheckpointError(f"cannot tell what {src} is (it starts with {head!r}); {_FIX}")


# ----------------------------------------------------------------------------- torch.save files

class _Inert:
    """Stand-in for a class or function a checkpoint names but we will not import: records, never runs."""

    pickled_name = "?"

    def __init__(self, *args, **kwargs):  # a pickled call (REDUCE) of the stood-in function lands here
        self.pickled_args = args

    def __setstate__(self, state):  # the object's pickled __dict__ (or slots) lands here
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.pickled_state = state

    def __repr__(self) -> str:
        return f"<{self.pickled_name} {self.__dict__}>"


def _inert_class(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_Inert,), {"pickled_name": name})


def load_torch_untrusted(path) -> Any:
    """``torch.load`` of ``path`` that never runs code from it (see the module docstring)."""
    path = Path(path)
    is_zip = zipfile.is_zipfile(path)
    # Old-style (pre-zip) files cannot be scanned; they load only if they need no custom classes.
    unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if is_zip else []
    try:
        with torch.serialization.safe_globals([(_inert_class(name), name) for name in unknown]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False, exactly what must not be done here: keep only the reason.
        reason = next((line for line in str(e).splitlines() if "GLOBAL" in line), str(e).splitlines()[0])
        raise CheckpointError(f"refusing to read {path}: {reason}; no training checkpoint needs that, so the file "
                              "is damaged or malicious: get it again from a source you trust") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); the file is damaged or truncated: copy it again") from e


def read_torch_checkpoint(src, info: dict, expected: str | None = None) -> GPT:
    """The model in a nanoGPT or build-nanogpt ``torch.save`` file; sets ``info['format']``, ``meta``, ``notes``.

    ``expected``: the format the caller was told; a file of the other one is refused before conversion.
    """
    ckpt = load_torch_untrusted(src)
    fmt, declared, meta_keys = _classify_torch(src, ckpt)
    if expected is not None and fmt != expected:
        raise CheckpointError(f"{src} is a {fmt} checkpoint, not {expected}; pass format='auto' or format={fmt!r}")
    sd = normalize_state_dict(ckpt["model"], source=str(src))
    cfg = _config_from(sd, declared, src)
    info["format"] = fmt
    info["meta"] = {k: _plain(ckpt[k]) for k in meta_keys if k in ckpt}
    if declared.get("bias") is False:
        _fill_zero_biases(sd, cfg)
        info["zero_biases"] = True
        info["notes"].append("trained with bias=False: biases (linear and LayerNorm) were set to zero, "
                             "which computes exactly the same function")
    return gpt_from_state_dict(cfg, sd, source=str(src))


def _classify_torch(src, ckpt) -> tuple[str, dict, tuple[str, ...]]:
    """(format, declared config fields, metadata keys) of a loaded torch checkpoint."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        if "model_args" in ckpt:  # nanoGPT also saves 'config' (its training globals): model_args decides
            return "nanogpt", dict(ckpt["model_args"]), ("iter_num", "best_val_loss")
        if "config" in ckpt:
            return "build-nanogpt", _fields_of(ckpt["config"]), ("step", "val_loss")
    _explain_unknown_torch_file(src, ckpt)


def _explain_unknown_torch_file(src, ckpt) -> NoReturn:
    """Raise the most useful error for a torch file that is neither nanoGPT nor build-nanogpt."""
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        normalize_state_dict(ckpt, source=str(src))  # raises if it is another architecture
        raise CheckpointError(
            f"{src} is a bare GPT-2 state dict without its config, and n_head cannot be read from weight shapes; "
            "save it as nanoGPT does: torch.save({'model': state_dict, 'model_args': dict(n_layer=..., n_head=..., "
            "n_embd=..., block_size=..., vocab_size=..., bias=...)}, path)")
    keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f"{src} is a torch file but not a nanoGPT or build-nanogpt checkpoint (it holds {keys}; "
                          f"expected 'model' with 'model_args' or 'config'); {_FIX}")


def _fields_of(config) -> dict:
    if isinstance(config, dict):
        return dict(config)
    return {k: v for k, v in vars(config).items() if not k.startswith("pickled_")}


def _config_from(sd: dict[str, torch.Tensor], declared: dict, src) -> GPTConfig:
    """The checkpoint's ``GPTConfig``: declared fields first, the rest read from weight shapes."""
    vocab_size, n_embd = sd["transformer.wte.weight"].shape
    inferred = dict(vocab_size=vocab_size, n_embd=n_embd, block_size=sd["transformer.wpe.weight"].shape[0],
                    n_layer=1 + max((int(k.split(".")[2]) for k in sd if k.startswith("transformer.h.")), default=-1))
    if "n_head" not in declared:
        raise CheckpointError(f"{src} does not record n_head (its config has {sorted(declared)}) and weight shapes "
                              "cannot tell it; add n_head to the checkpoint's config/model_args and re-save it")
    fields = {k: declared.get(k, v) for k, v in inferred.items()}
    return checked_config(str(src), **fields, n_head=declared["n_head"], dropout=float(declared.get("dropout", 0.0)))


def _fill_zero_biases(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> None:
    for name, shape in gpt_shapes(cfg).items():
        if name.endswith(".bias") and name not in sd:
            sd[name] = torch.zeros(shape)


def _plain(value):
    """A JSON-friendly version of a checkpoint's metadata value (tensor losses, numpy scalars, ...)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


# ----------------------------------------------------------------------------- llm.c

def read_llmc(src, info: dict) -> GPT:
    """The model in an llm.c model file: a 256-int32 header, then all parameters concatenated."""
    src = Path(src)
    version, max_t, vocab, n_layer, n_head, n_embd, padded_vocab = _llmc_header(src)
    layout = _llmc_layout(max_t, padded_vocab, n_layer, n_embd)
    np_dtype, torch_dtype = _LLMC_DTYPES[version]
    n_values = sum(int(np.prod(shape)) for _, shape in layout)
    expected = 4 * _LLMC_HEADER_INTS + n_values * np.dtype(np_dtype).itemsize
    if src.stat().st_size != expected:
        raise CheckpointError(
            f"{src} is {src.stat().st_size} bytes but its header (version {version}, maxT={max_t}, Vp={padded_vocab}, "
            f"L={n_layer}, C={n_embd}) needs exactly {expected}; the file is truncated or damaged: re-download or "
            "re-export it")
    flat = torch.from_numpy(np.fromfile(src, dtype=np_dtype, offset=4 * _LLMC_HEADER_INTS)).view(torch_dtype)
    sd, offset = {}, 0
    for name, shape in layout:
        tensor = flat[offset:offset + int(np.prod(shape))].view(shape).float()
        offset += tensor.numel()
        if name.startswith("transformer."):
            sd[name] = tensor
        else:  # stacked over layers
            sd.update({f"transformer.h.{i}.{name}": tensor[i] for i in range(n_layer)})
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][:vocab]  # drop llm.c's vocab padding rows
    info["meta"] = {"llmc_version": version, "padded_vocab_size": padded_vocab}
    if version == 5:
        info["notes"].append("bf16 parameters were widened to fp32 exactly")
    cfg = checked_config(str(src), vocab_size=vocab, block_size=max_t, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    return gpt_from_state_dict(cfg, sd, source=str(src))


def _llmc_header(src: Path) -> tuple[int, ...]:
    """(version, maxT, V, L, NH, C, Vp) from an llm.c model file's header, checked."""
    header = np.fromfile(src, dtype="<i4", count=_LLMC_HEADER_INTS)
    if header.size < _LLMC_HEADER_INTS:
        raise CheckpointError(f"{src} is {src.stat().st_size} bytes, shorter than llm.c's 1024-byte header; "
                              "it is truncated or not an llm.c model file: re-export it")
    magic, version, max_t, vocab, n_layer, n_head, n_embd, padded_vocab = (int(x) for x in header[:8])
    if magic != LLMC_MODEL_MAGIC:
        kind = _LLMC_OTHER_MAGICS.get(magic)
        what = (f"an llm.c {kind} file" if kind
                else f"not an llm.c model file (magic {magic}, expected {LLMC_MODEL_MAGIC})")
        raise CheckpointError(f"{src} is {what}; pass the model file (gpt2_124M.bin or model_NNNNN.bin)")
    if version not in _LLMC_DTYPES:
        raise CheckpointError(f"{src} has llm.c version {version}; supported are 3 (fp32) and 5 (bf16): "
                              "re-export it with llm.c's train_gpt2.py")
    if min(max_t, vocab, n_layer, n_head, n_embd) <= 0 or padded_vocab < vocab:
        raise CheckpointError(f"{src} has an invalid llm.c header (maxT={max_t}, V={vocab}, Vp={padded_vocab}, "
                              f"L={n_layer}, NH={n_head}, C={n_embd}); the file is damaged: re-export it")
    return version, max_t, vocab, n_layer, n_head, n_embd, padded_vocab


def _llmc_layout(max_t: int, padded_vocab: int, n_layer: int, c: int) -> list[tuple[str, tuple[int, ...]]]:
    """llm.c's parameter order; matrices are (out, in) like nn.Linear. Unprefixed names are per layer."""
    return [
        ("transformer.wte.weight", (padded_vocab, c)), ("transformer.wpe.weight", (max_t, c)),
        ("ln_1.weight", (n_layer, c)), ("ln_1.bias", (n_layer, c)),
        ("attn.c_attn.weight", (n_layer, 3 * c, c)), ("attn.c_attn.bias", (n_layer, 3 * c)),
        ("attn.c_proj.weight", (n_layer, c, c)), ("attn.c_proj.bias", (n_layer, c)),
        ("ln_2.weight", (n_layer, c)), ("ln_2.bias", (n_layer, c)),
        ("mlp.c_fc.weight", (n_layer, 4 * c, c)), ("mlp.c_fc.bias", (n_layer, 4 * c)),
        ("mlp.c_proj.weight", (n_layer, c, 4 * c)), ("mlp.c_proj.bias", (n_layer, c)),
        ("transformer.ln_f.weight", (c,)), ("transformer.ln_f.bias", (c,)),
    ]


# ----------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _tokenizer_dir(tokenizer):
    """Yield a tokenizer directory for ``tokenizer``: a directory, a .gguf vocabulary, a hub name, or None."""
    if tokenizer is None:
        yield None
        return
    path = Path(tokenizer)
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        _tokenizer_from(path).save_pretrained(tmp)
        yield Path(tmp)


def _tokenizer_from(path: Path):
    """A tokenizer object from a .gguf vocabulary file or, for a name that is no local path, the HF hub."""
    if path.suffix == ".gguf" and path.is_file():
        try:
            # Imported here: shared.tokenizer pulls in transformers and gguf (~0.9 s CPU) for this one rare
            # input, and this module is otherwise torch-only (``journey import --help`` loads it for ImportConfig).
            from shared.tokenizer.gguf_vocab import hf_tokenizer_from_gguf
        except ImportError as e:
            raise CheckpointError(f"reading the GGUF vocabulary {path} needs shared.tokenizer.gguf_vocab, which "
                                  f"failed to import ({e}); pass an HF tokenizer directory instead") from e
        return hf_tokenizer_from_gguf(str(path))
    if path.exists():
        raise CheckpointError(f"tokenizer {path} is neither a tokenizer directory nor a .gguf vocabulary file; "
                              "pass one of those, a hub name such as 'gpt2', or None and add a tokenizer later")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:  # what transformers raises offline or for an unknown name
        raise CheckpointError(
            f"tokenizer {str(path)!r} is no local file or directory and could not be loaded from the Hugging Face "
            f"hub ({type(e).__name__}); offline, pass an HF tokenizer directory or a .gguf vocabulary "
            "(e.g. ggml-vocab-gpt-2.gguf for GPT-2)") from e


def _sha256(src: Path) -> str:
    files = weight_files(src) if src.is_dir() else [src]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
