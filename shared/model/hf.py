"""Convert between our ``GPT`` and Hugging Face ``GPT2LMHeadModel``; save and load HF checkpoints.

The HF checkpoint directory (``config.json`` + ``model.safetensors`` + tokenizer files) is the
interchange format of the journey: every stage writes one, and TRL, PEFT, lm-eval and the GGUF
writer read it. Our class is the same math as HF GPT-2 (see ``shared.model.gpt``); the only
difference on disk is the layout of the four projection matrices: we use ``nn.Linear`` (out, in),
HF's ``Conv1D`` stores (in, out), so they are transposed on the way through.

Contract:
- ``gpt_to_hf`` / ``hf_to_gpt`` give identical logits (fp32) in both directions.
- ``save_hf_checkpoint`` writes a directory that ``AutoModelForCausalLM.from_pretrained`` and, when a
  tokenizer is given, ``AutoTokenizer.from_pretrained`` load as is. Weights are saved in fp32.
- ``load_gpt`` reads such a directory (ours or any HF GPT-2, e.g. ``openai-community/gpt2``) into
  our class without building the HF model first.
- ``gpt_from_state_dict`` is the one place that checks a nanoGPT-layout state dict against a
  config (architecture, missing/unexpected keys, shapes, tying); the importers use it too.

Every problem raises ``CheckpointError`` with a message naming the fix.
What this module does not do: other checkpoint formats (``shared.model.importers``), tokenizer
training or conversion (``shared.tokenizer``), GGUF, quantization.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from shared.model.gpt import GPT, GPTConfig


class CheckpointError(ValueError):
    """A checkpoint could not be read or converted. The message names the problem and the fix."""


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # sharded checkpoints
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"  # what transformers wrote before safetensors
#: Tokenizer files copied by ``save_hf_checkpoint`` (whichever exist): what ``save_pretrained`` writes
#: for fast and slow tokenizers, plus the chat template it may keep beside them.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
# HF Conv1D modules store (in, out); nn.Linear stores (out, in).
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers kept in old nanoGPT and HF GPT-2 checkpoints: derived, not learned.
_MASK_BUFFER = re.compile(r"\.attn\.(bias|masked_bias)$")
# Prefixes added by torch.compile (``_orig_mod.``) and DDP (``module.``) when a wrapped model is saved.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# config.json fields that the architecture derives from the model; extra_config may not change them.
_ARCH_KEYS = {"model_type", "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner",
              "activation_function", "layer_norm_epsilon", "tie_word_embeddings", "architectures"}


# ----------------------------------------------------------------------------- configs

def hf_config(cfg: GPTConfig, **extra):
    """The ``GPT2Config`` for ``cfg``; ``extra`` adds fields such as ``eos_token_id``."""
    from transformers import GPT2Config

    fields = dict(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_ctx=cfg.block_size,
        n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=None,
        activation_function="gelu_new",  # tanh-approximated GELU, as in our MLP
        layer_norm_epsilon=cfg.layer_norm_eps,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        tie_word_embeddings=True,
        # GPT2Config defaults these to 50256, which is out of range for our small vocabularies.
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    fields.update(extra)
    return GPT2Config(**fields)


def gpt_config_from_hf(config, source: str = "checkpoint") -> GPTConfig:
    """Our ``GPTConfig`` from an HF config (object or ``config.json`` dict).

    Refuses anything our class would compute differently, so a loaded model never silently
    disagrees with the checkpoint.
    """
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    model_type = get("model_type")
    if model_type != "gpt2":
        raise CheckpointError(
            f"checkpoint at {source} is a {model_type or 'unknown-type'} model, not GPT-2; this stage needs a "
            "GPT-2 checkpoint (import it with `journey import` or pick a GPT-2 artifact)")
    n_embd = get("n_embd")
    unsupported = {
        "activation_function": (get("activation_function", "gelu_new"), {"gelu_new", "gelu_pytorch_tanh"}),
        "n_inner": (get("n_inner"), {None, 4 * n_embd}),
        "tie_word_embeddings": (get("tie_word_embeddings", True), {True}),
        "scale_attn_weights": (get("scale_attn_weights", True), {True}),
        "scale_attn_by_inverse_layer_idx": (get("scale_attn_by_inverse_layer_idx", False), {False}),
        "add_cross_attention": (get("add_cross_attention", False), {False}),
    }
    for key, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise CheckpointError(
                f"config.json of {source} sets {key}={value!r}, which our GPT class does not implement "
                f"(it supports {sorted(map(repr, allowed))}); convert with HF's GPT2LMHeadModel instead")
    return checked_config(source, vocab_size=get("vocab_size"), block_size=get("n_positions"),
                          n_layer=get("n_layer"), n_head=get("n_head"), n_embd=n_embd,
                          dropout=float(get("resid_pdrop", 0.0) or 0.0),
                          layer_norm_eps=get("layer_norm_epsilon", 1e-5))


def checked_config(source: str, **fields) -> GPTConfig:
    """``GPTConfig(**fields)`` as read from the checkpoint at ``source``, or a ``CheckpointError`` saying why not."""
    try:
        cfg = GPTConfig(**{k: v if v is None or k in ("dropout", "layer_norm_eps") else int(v)
                           for k, v in fields.items()})
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source} records an invalid model config {fields} ({e}); the checkpoint is damaged "
                              "or was edited: re-export it with its training code") from e
    return cfg


# ----------------------------------------------------------------------------- state dicts

def _transpose_conv1d(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The transpose is its own inverse, so one helper serves both directions.
    return {k: v.t().contiguous() if k.endswith(_CONV1D_WEIGHTS) else v for k, v in state_dict.items()}


def hf_state_to_gpt(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF GPT-2 state dict in nanoGPT layout (names and ``nn.Linear`` orientation)."""
    # Checkpoints saved from GPT2Model (e.g. openai-community/gpt2) lack the ``transformer.`` prefix.
    named = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v
             for k, v in state_dict.items()}
    return _transpose_conv1d(named)


def gpt_shapes(cfg: GPTConfig) -> dict[str, torch.Size]:
    """Name -> shape of every weight of a ``GPT(cfg)`` except the tied ``lm_head.weight`` (allocates nothing)."""
    with torch.device("meta"):  # shapes only: no memory, no init cost even for large configs
        model = GPT(cfg)
    return {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}


def normalize_state_dict(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A nanoGPT-layout state dict without training leftovers, or an error if it is not GPT-2 at all.

    Strips ``_orig_mod.`` / ``module.`` prefixes (torch.compile, DDP) and drops causal-mask buffers;
    keeps ``lm_head.weight`` if present.
    """
    sd = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if not _MASK_BUFFER.search(key):
            sd[key] = value
    if "transformer.wte.weight" not in sd:
        raise CheckpointError(
            f"{source} does not hold GPT-2 weights (no transformer.wte.weight; its first keys are "
            f"{list(sd)[:4]}); this needs a GPT-2 checkpoint from nanoGPT, build-nanogpt, llm.c or a Hugging Face "
            "GPT-2 directory: other architectures cannot be loaded into GPT-2")
    return sd


def gpt_from_state_dict(cfg: GPTConfig, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> GPT:
    """Our ``GPT`` holding ``state_dict`` (nanoGPT names, ``nn.Linear`` layout), after checking it fits ``cfg``.

    Accepts what training wrappers leave behind (see ``normalize_state_dict``) and a tied
    ``lm_head.weight`` or none at all; refuses other architectures, missing or extra weights, shape
    mismatches and an untied head, all before allocating the model. The model is fp32 on CPU, in eval mode.
    """
    sd = normalize_state_dict(state_dict, source)
    head = sd.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, sd["transformer.wte.weight"]):
        raise CheckpointError(
            f"{source} has an lm_head.weight that differs from transformer.wte.weight, but GPT-2 ties them; "
            "our class cannot hold an untied head: re-train with tied embeddings or keep the model in HF format")
    expected = gpt_shapes(cfg)
    missing = sorted(expected.keys() - sd.keys())
    unexpected = sorted(sd.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match a GPT-2 with {_describe(cfg)}: missing {_some(missing)}, unexpected "
            f"{_some(unexpected)}; check that it is the model file (not optimizer or training state) and complete")
    wrong = [f"{k} {tuple(sd[k].shape)} (needs {tuple(shape)})" for k, shape in expected.items()
             if sd[k].shape != shape]
    if wrong:
        raise CheckpointError(
            f"{source}: weight shapes do not match its config ({_describe(cfg)}): {', '.join(wrong[:5])}; "
            "the config and the weights disagree: re-export the checkpoint together with its config")
    model = _skeleton(lambda: GPT(cfg))
    # Copies, so the model owns its memory (sources may be memory-mapped files or views of one buffer).
    model.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in sd.items()}, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign replaced wte's Parameter: re-tie
    return model.eval()


def _skeleton(build):
    """``build()`` without its random init, for a module whose every weight is assigned next.

    On the meta device that init costs nothing (it takes seconds at 124M). A module that computes
    buffers in ``__init__`` (older transformers keep GPT-2's causal mask as one) is built for real.
    """
    with torch.device("meta"):
        module = build()
    return build() if any(b.is_meta for b in module.buffers()) else module


def _some(names: list[str]) -> str:
    return f"{names[:5]}{' ...' if len(names) > 5 else ''}"


def _describe(cfg: GPTConfig) -> str:
    return (f"vocab_size={cfg.vocab_size}, block_size={cfg.block_size}, n_layer={cfg.n_layer}, "
            f"n_head={cfg.n_head}, n_embd={cfg.n_embd}")


def _unwrap(model):
    # A torch.compile'd or DDP-wrapped model: convert the module underneath.
    for attr in ("_orig_mod", "module"):
        model = getattr(model, attr, model)
    return model


# ----------------------------------------------------------------------------- models

def gpt_to_hf(model: GPT, **extra_config):
    """A ``GPT2LMHeadModel`` (fp32, CPU, eval mode) with ``model``'s weights.

    ``extra_config`` adds ``config.json`` fields (token ids, journey metadata).
    """
    from transformers import GPT2LMHeadModel

    model = _unwrap(model)
    hf = _skeleton(lambda: GPT2LMHeadModel(hf_config(model.config, **extra_config)))
    # Copies, so the HF model never aliases the (possibly still training) source weights.
    sd = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()}
    result = hf.load_state_dict(_transpose_conv1d(sd), strict=False, assign=True)
    # Only HF's causal-mask buffers (kept by some transformers versions) may be left unset.
    left_out = [k for k in result.missing_keys if not _MASK_BUFFER.search(k)] + result.unexpected_keys
    if left_out:
        raise CheckpointError(f"GPT and GPT2LMHeadModel disagree on weights {left_out[:5]}; this is a bug in "
                              "shared.model.hf for this transformers version: report it with the version")
    hf.tie_weights()
    return hf.eval()


def hf_to_gpt(hf_model) -> GPT:
    """Our ``GPT`` (fp32, CPU, eval mode) with the weights of an HF ``GPT2LMHeadModel``."""
    cfg = gpt_config_from_hf(hf_model.config, source=type(hf_model).__name__)
    sd = {k: v.detach().cpu() for k, v in hf_model.state_dict().items()}
    return gpt_from_state_dict(cfg, hf_state_to_gpt(sd), source=type(hf_model).__name__)


def save_hf_checkpoint(model: GPT, out_dir, tokenizer_dir=None, extra_config: dict | None = None) -> Path:
    """Write ``model`` as an HF checkpoint directory (``config.json``, ``model.safetensors``); return its path.

    ``tokenizer_dir``: a directory written by a tokenizer's ``save_pretrained``; its files are copied
    so the checkpoint is self-contained, and its eos/bos/pad ids go into the config. It is checked
    first: a tokenizer with more tokens than the model's vocabulary is refused before anything is
    written. ``extra_config``: additional ``config.json`` entries; architecture fields are refused
    (change the model's ``GPTConfig`` instead).
    """
    model = _unwrap(model)
    extra = dict(extra_config or {})
    clash = sorted(_ARCH_KEYS & extra.keys())
    if clash:
        raise CheckpointError(f"extra_config may not set architecture fields {clash}; they come from the model's "
                              "GPTConfig: change that instead")
    token_ids = {}
    if tokenizer_dir is not None:
        tokenizer = _load_tokenizer(Path(tokenizer_dir), model.config.vocab_size)
        token_ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpt_to_hf(model, **token_ids, **extra).save_pretrained(out)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, out / name)
    return out


def _load_tokenizer(tokenizer_dir: Path, vocab_size: int):
    from transformers import AutoTokenizer

    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in {tokenizer_dir}; "
                              "pass a directory written by a tokenizer's save_pretrained (e.g. the tokenizer "
                              "stage's artifact)")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"the tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens but the model's vocabulary has only "
            f"{vocab_size} rows, so ids >= {vocab_size} would index past the embedding; pass the tokenizer the "
            "model was trained with (or build the model with vocab_size >= len(tokenizer))")
    return tokenizer


def load_gpt(path, map_location="cpu") -> GPT:
    """Load an HF GPT-2 checkpoint directory into our ``GPT`` (fp32, eval mode) on ``map_location``.

    Reads ``model.safetensors`` (single or sharded) or, for older checkpoints, ``pytorch_model.bin``
    (with ``weights_only=True``: no code from the file runs).
    """
    ckpt = Path(path)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt} not found; pass a directory holding "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    if not (ckpt / CONFIG_FILE).is_file():
        raise CheckpointError(f"{ckpt} has no {CONFIG_FILE}; pass a directory holding {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE} (an HF checkpoint saved with save_pretrained)")
    cfg = gpt_config_from_hf(json.loads((ckpt / CONFIG_FILE).read_text()), source=str(ckpt))
    sd = {}
    for file in weight_files(ckpt):
        sd.update(_read_weights(file))
    return gpt_from_state_dict(cfg, hf_state_to_gpt(sd), source=str(ckpt)).to(map_location)


def weight_files(ckpt: Path) -> list[Path]:
    """The weight files of an HF checkpoint directory, or an error naming what is there instead."""
    if (ckpt / WEIGHTS_FILE).is_file():
        return [ckpt / WEIGHTS_FILE]
    if (ckpt / WEIGHTS_INDEX_FILE).is_file():
        weight_map = json.loads((ckpt / WEIGHTS_INDEX_FILE).read_text())["weight_map"]
        return [ckpt / name for name in sorted(set(weight_map.values()))]
    if (ckpt / LEGACY_WEIGHTS_FILE).is_file():
        return [ckpt / LEGACY_WEIGHTS_FILE]
    found = sorted(p.name for p in ckpt.iterdir())
    raise CheckpointError(f"{ckpt} has {CONFIG_FILE} but no {WEIGHTS_FILE} (found {found}); the weights are "
                          "missing: copy the whole checkpoint directory, or re-save the model with save_pretrained")


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)
