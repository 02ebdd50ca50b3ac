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
    return _write_checkpoint(gpt_to_hf(model, **_special_token_ids(tokenizer_dir, model.config.vocab_size), **extra),
                             out_dir, tokenizer_dir)


def _special_token_ids(tokenizer_dir, vocab_size: int) -> dict[str, int | None]:
    """The tokenizer's bos/eos/pad ids as HF config entries (none without a tokenizer); the tokenizer is
    checked against ``vocab_size`` first (``_load_tokenizer``)."""
    if tokenizer_dir is None:
        return {}
    tokenizer = _load_tokenizer(Path(tokenizer_dir), vocab_size)
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}


def _write_checkpoint(hf_model, out_dir, tokenizer_dir) -> Path:
    """``hf_model.save_pretrained(out_dir)`` plus the tokenizer's files, so the checkpoint is self-contained."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
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


# ----------------------------------------------------------------------------- MoE (Qwen2-MoE, Ernie-4.5-MoE)
# ``shared.model.moe.MoEGPT`` uses HF's parameter names, so saving is a copy plus the config (which architecture,
# and why: shared.model.moe). Without a shared expert, Qwen2-MoE still builds one: it is written with zero width
# (its output is exactly 0). Ernie-4.5-MoE renames a few weights and wants interleaved-RoPE q/k rows.

_MOE_TRAINING_KEYS = ("capacity_factor", "aux_weight", "z_weight", "balance", "bias_rate")
#: The HF ``model_type`` of the MoE checkpoints ``save_moe_checkpoint`` writes (serving and GGUF export ask this).
MOE_MODEL_TYPES = ("qwen2_moe", "ernie4_5_moe")


def is_moe_checkpoint(ckpt: str | Path) -> bool:
    """Whether ``ckpt`` holds one of our MoE checkpoints (by its ``config.json``'s ``model_type``)."""
    config = Path(ckpt) / CONFIG_FILE
    return config.is_file() and json.loads(config.read_text()).get("model_type") in MOE_MODEL_TYPES


def moe_hf_config(cfg, **extra):
    """The ``Qwen2MoeConfig`` for a ``MoEConfig``; our training-only routing settings ride along as
    ``journey_moe`` (HF ignores them; ``load_moe`` restores them)."""
    from transformers import Qwen2MoeConfig

    fields = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.block_size,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, hidden_act="silu", qkv_bias=True,
        tie_word_embeddings=True, intermediate_size=cfg.dense_hidden, num_experts=cfg.n_experts,
        num_experts_per_tok=max(cfg.top_k, 1), moe_intermediate_size=cfg.expert_hidden,
        shared_expert_intermediate_size=cfg.shared_hidden, norm_topk_prob=cfg.norm_topk_prob,
        decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=cfg.aux_weight,
        use_sliding_window=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        journey_moe={k: getattr(cfg, k) for k in _MOE_TRAINING_KEYS},
    )
    fields.update(extra)
    return Qwen2MoeConfig(**fields)


def moe_config_from_hf(config, source: str = "checkpoint"):
    """Our ``MoEConfig`` from a Qwen2-MoE config (object or ``config.json`` dict), refusing what we do not model."""
    from shared.model.moe import MoEConfig

    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    if get("model_type") == "ernie4_5_moe":
        return _moe_config_from_ernie(get, source)
    if get("model_type") != "qwen2_moe":
        raise CheckpointError(f"checkpoint at {source} is a {get('model_type') or 'unknown-type'} model, not "
                              "qwen2_moe; load_moe reads the MoE checkpoints save_moe_checkpoint writes")
    heads = get("num_attention_heads")
    rope = get("rope_parameters") or {}
    checks = {"num_key_value_heads": (get("num_key_value_heads", heads), {heads}),
              "tie_word_embeddings": (get("tie_word_embeddings"), {True}),
              "hidden_act": (get("hidden_act"), {"silu"}), "qkv_bias": (get("qkv_bias", True), {True}),
              "use_sliding_window": (get("use_sliding_window", False), {False}),
              "decoder_sparse_step": (get("decoder_sparse_step", 1), {1}),
              "mlp_only_layers": (tuple(get("mlp_only_layers") or ()), {()}),
              "rope_type": (rope.get("rope_type", "default"), {"default"})}
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise CheckpointError(f"config.json of {source} sets {key}={value!r}, which MoEGPT does not implement "
                                  f"(it supports {sorted(map(repr, allowed))}); use transformers' Qwen2MoeForCausalLM")
    try:
        cfg = MoEConfig(vocab_size=get("vocab_size"), block_size=get("max_position_embeddings"),
                        n_layer=get("num_hidden_layers"), n_head=heads, n_embd=get("hidden_size"),
                        rope_theta=float(rope.get("rope_theta", get("rope_theta", 10000.0))),
                        rms_norm_eps=get("rms_norm_eps"), dense_hidden=get("intermediate_size"),
                        n_experts=get("num_experts"), top_k=get("num_experts_per_tok"),
                        expert_hidden=get("moe_intermediate_size"),
                        shared_hidden=get("shared_expert_intermediate_size"),
                        norm_topk_prob=bool(get("norm_topk_prob")), **(get("journey_moe") or {}))
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source} records an MoE config MoEGPT cannot build ({e}); re-save it with "
                              "save_moe_checkpoint") from e
    return cfg


def moe_architecture(cfg) -> str:
    """The HF ``model_type`` a ``MoEConfig`` is saved as, or a ``CheckpointError`` naming the field to change.

    ``qwen2_moe`` unless the model selects experts with a balancing bias, which only ``ernie4_5_moe`` holds
    (see ``shared.model.moe``); each has its own fixed choices for the other fields.
    """
    if cfg.balance != "bias":
        wrong = {k: v for k, v in (("qkv_bias", cfg.qkv_bias), ("shared_gate", cfg.shared_gate)) if v is not True}
        if wrong:
            raise CheckpointError(f"Qwen2-MoE (the format for balance=aux) needs qkv_bias=True and shared_gate=True, "
                                  f"got {wrong}; set them, or use balance=bias (saved as Ernie-4.5-MoE)")
        return "qwen2_moe"
    need = {"qkv_bias": False, "shared_gate": False, "norm_topk_prob": True}
    wrong = {k: getattr(cfg, k) for k, v in need.items() if getattr(cfg, k) != v}
    if cfg.shared_hidden not in (0, cfg.expert_hidden):
        wrong["shared_hidden"] = cfg.shared_hidden
    if not cfg.moe or wrong:
        raise CheckpointError(
            f"a bias-balanced MoE is saved as Ernie-4.5-MoE, which needs {need}, shared_hidden 0 or = expert_hidden "
            f"({cfg.expert_hidden}) and n_experts > 0; got {wrong or {'n_experts': cfg.n_experts}}: build the model "
            "with those settings (shared.training.moe_experiment's moe-fine arm does)")
    return "ernie4_5_moe"


def _ernie_config(cfg, **extra):
    from transformers import Ernie4_5_MoeConfig

    fields = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.block_size,
        rms_norm_eps=cfg.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        hidden_act="silu", use_bias=False, tie_word_embeddings=True,
        intermediate_size=cfg.dense_hidden,  # Ernie's dense-layer width: unused (every layer is MoE), kept for load
        moe_intermediate_size=cfg.expert_hidden, moe_k=cfg.top_k, moe_num_experts=cfg.n_experts,
        moe_num_shared_experts=1 if cfg.shared_hidden else 0, moe_layer_start_index=0, moe_layer_end_index=-1,
        moe_layer_interval=1, moe_norm_min=1e-12, router_aux_loss_coef=cfg.aux_weight,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
        journey_moe={k: getattr(cfg, k) for k in _MOE_TRAINING_KEYS},
    )
    fields.update(extra)
    return Ernie4_5_MoeConfig(**fields)


def _interleave_rope_rows(weight: torch.Tensor, n_head: int, inverse: bool = False) -> torch.Tensor:
    """q/k projection rows from rotate-half RoPE order (pairs i, i+d/2) to interleaved (pairs 2i, 2i+1), per head.

    The same permutation of q and k leaves every q.k unchanged, so attention is identical.
    """
    d = weight.shape[0] // n_head
    perm = torch.arange(d).view(2, d // 2).t().reshape(-1)  # new row 2i <- old i, 2i+1 <- old i + d/2
    if inverse:
        perm = torch.argsort(perm)
    return weight.view(n_head, d, -1)[:, perm].reshape(weight.shape)


def _to_ernie_state(sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if key.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            value = _interleave_rope_rows(value, cfg.n_head)
        elif key.endswith("mlp.routing_bias"):
            key, value = key.replace("mlp.routing_bias", "mlp.gate.moe_statics.e_score_correction_bias"), value[None]
        key = key.replace(".mlp.shared_expert.", ".mlp.shared_experts.")
        out[key] = value
    return out


def _from_ernie_state(sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if key.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            value = _interleave_rope_rows(value, cfg.n_head, inverse=True)
        elif key.endswith("moe_statics.e_score_correction_bias"):  # under mlp.gate. or, as saved, mlp.
            key = re.sub(r"mlp\.(gate\.)?moe_statics\.e_score_correction_bias$", "mlp.routing_bias", key)
            value = value[0]
        key = key.replace(".mlp.shared_experts.", ".mlp.shared_expert.")
        out[key] = value
    return out


def _moe_config_from_ernie(get, source: str):
    from shared.model.moe import MoEConfig

    heads, rope = get("num_attention_heads"), get("rope_parameters") or {}
    n_layer = get("num_hidden_layers")
    checks = {"num_key_value_heads": (get("num_key_value_heads", heads), {heads}),
              "tie_word_embeddings": (get("tie_word_embeddings"), {True}), "use_bias": (get("use_bias"), {False}),
              "hidden_act": (get("hidden_act"), {"silu"}), "rope_type": (rope.get("rope_type", "default"), {"default"}),
              "moe_layer_start_index": (get("moe_layer_start_index"), {0}),
              "moe_layer_end_index": (get("moe_layer_end_index"), {-1, n_layer - 1}),
              "moe_layer_interval": (get("moe_layer_interval"), {1}),
              "moe_num_shared_experts": (get("moe_num_shared_experts"), {0, 1})}
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise CheckpointError(f"config.json of {source} sets {key}={value!r}, which MoEGPT does not implement "
                                  f"(it supports {sorted(map(repr, allowed))}); use transformers' "
                                  "Ernie4_5_MoeForCausalLM")
    width = get("moe_intermediate_size")
    try:
        cfg = MoEConfig(vocab_size=get("vocab_size"), block_size=get("max_position_embeddings"), n_layer=n_layer,
                        n_head=heads, n_embd=get("hidden_size"), rope_theta=float(rope.get("rope_theta", 10000.0)),
                        rms_norm_eps=get("rms_norm_eps"), dense_hidden=get("intermediate_size"),
                        n_experts=get("moe_num_experts"), top_k=get("moe_k"),
                        expert_hidden=width, shared_hidden=width * get("moe_num_shared_experts"), shared_gate=False,
                        qkv_bias=False, norm_topk_prob=True,
                        **{"balance": "bias", **(get("journey_moe") or {})})
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source} records an MoE config MoEGPT cannot build ({e}); re-save it with "
                              "save_moe_checkpoint") from e
    return cfg


def moe_to_hf(model, **extra_config):
    """The HF model (fp32, CPU, eval) of an ``MoEGPT``: ``Qwen2MoeForCausalLM``, or ``Ernie4_5_MoeForCausalLM``
    for a bias-balanced one (``moe_architecture``); the same logits as ``model`` in eval mode."""
    from transformers import Ernie4_5_MoeForCausalLM, Qwen2MoeForCausalLM

    model = _unwrap(model)
    cfg = model.config
    arch = moe_architecture(cfg)
    sd = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()}
    if arch == "qwen2_moe":
        hf = _skeleton(lambda: Qwen2MoeForCausalLM(moe_hf_config(cfg, **extra_config)))
        sd = {k: v for k, v in sd.items() if not k.endswith("routing_bias")}  # zero: balance=aux never moves it
    else:
        hf = _skeleton(lambda: Ernie4_5_MoeForCausalLM(_ernie_config(cfg, **extra_config)))
        sd = _to_ernie_state(sd, cfg)
    for key, value in hf.state_dict().items():  # Qwen2-MoE's zero-width shared expert (and its gate) we do not have
        if key not in sd and ".mlp.shared_expert" in key and cfg.shared_hidden == 0:
            sd[key] = torch.zeros(value.shape)
    result = hf.load_state_dict(sd, strict=False, assign=True)
    left_out = [k for k in result.missing_keys if k != "lm_head.weight"] + result.unexpected_keys
    if left_out:
        raise CheckpointError(f"MoEGPT and {type(hf).__name__} disagree on weights {left_out[:5]}; this is a bug "
                              "in shared.model.hf for this transformers version: report it with the version")
    hf.tie_weights()
    for module in hf.modules():  # RoPE buffers are not in the state dict: compute them for real
        if hasattr(module, "inv_freq") and module.inv_freq.is_meta:
            inv_freq, _ = module.compute_default_rope_parameters(hf.config)
            module.inv_freq = inv_freq
            module.original_inv_freq = inv_freq.clone()
    return hf.eval()


def save_moe_checkpoint(model, out_dir, tokenizer_dir=None, extra_config: dict | None = None) -> Path:
    """Write an ``MoEGPT`` as an HF checkpoint directory (Qwen2-MoE or Ernie-4.5-MoE, ``moe_architecture``) that
    ``AutoModelForCausalLM`` loads with the same logits."""
    model = _unwrap(model)
    hf = moe_to_hf(model, **_special_token_ids(tokenizer_dir, model.config.vocab_size), **dict(extra_config or {}))
    return _write_checkpoint(hf, out_dir, tokenizer_dir)


def load_moe(path, map_location="cpu"):
    """Read a checkpoint directory ``save_moe_checkpoint`` wrote (Qwen2-MoE or Ernie-4.5-MoE) into ``MoEGPT``
    (fp32, eval mode)."""
    from shared.model.moe import MoEGPT

    ckpt = Path(path)
    if not (ckpt / CONFIG_FILE).is_file():
        raise CheckpointError(f"{ckpt} has no {CONFIG_FILE}; pass a directory written by save_moe_checkpoint")
    cfg = moe_config_from_hf(json.loads((ckpt / CONFIG_FILE).read_text()), source=str(ckpt))
    sd = {}
    for file in weight_files(ckpt):
        sd.update(_read_weights(file))
    sd = {k: v for k, v in sd.items() if not (cfg.shared_hidden == 0 and ".mlp.shared_expert" in k)}
    sd = _fuse_experts(sd, cfg.n_experts)
    if moe_architecture(cfg) == "ernie4_5_moe":
        sd = _from_ernie_state(sd, cfg)
    model = MoEGPT(cfg)
    result = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("routing_bias") and k != "lm_head.weight"]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{ckpt} does not match its config: missing {_some(missing)}, unexpected "
                              f"{_some(result.unexpected_keys)}; re-save it with save_moe_checkpoint")
    return model.to(map_location).eval()


_PER_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _fuse_experts(sd: dict[str, torch.Tensor], n_experts: int) -> dict[str, torch.Tensor]:
    """Per-expert weights (``experts.<e>.gate_proj.weight``: how ``save_pretrained`` writes Qwen2-MoE) as the
    fused ``experts.gate_up_proj`` (E, 2F, C) and ``experts.down_proj`` (E, C, F) the model holds."""
    out, parts = {}, {}
    for key, value in sd.items():
        match = _PER_EXPERT.match(key)
        if match:
            parts.setdefault(match.group(1), {})[(int(match.group(2)), match.group(3))] = value
        else:
            out[key] = value
    for prefix, weights in parts.items():
        try:
            out[f"{prefix}.gate_up_proj"] = torch.stack(
                [torch.cat([weights[(e, "gate_proj")], weights[(e, "up_proj")]]) for e in range(n_experts)])
            out[f"{prefix}.down_proj"] = torch.stack([weights[(e, "down_proj")] for e in range(n_experts)])
        except KeyError as e:
            raise CheckpointError(f"{prefix} lacks expert weight {e}; the checkpoint is incomplete: copy it again "
                                  "or re-save it with save_moe_checkpoint") from None
    return out
