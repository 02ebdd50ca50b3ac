"""Our GPT-2 artifacts as TransformerLens models, offline; prompts turned into checked token ids.

TransformerLens 4 dropped ``HookedTransformer``: its ``TransformerBridge`` wraps the HF module and
exposes the same hook names (``blocks.{l}.attn.hook_pattern``, ``blocks.{l}.hook_resid_post``, ...),
``run_with_cache`` and the ``ActivationCache`` tools (logit lens). ``load_bridge`` builds one from
an artifact directory without the hub: the checkpoint is read and checked by ``shared.model.hf``
(so a non-GPT-2 checkpoint fails there with a clear message), converted to ``GPT2LMHeadModel``
with eager attention (the bridge needs the attention weights), and wrapped by
``build_bridge_from_module`` with the config from our ``config.json``. We keep the raw weights
(no LayerNorm folding), so the bridge's logits equal the HF model's.

Contract: ``load_bridge`` returns an fp32 CPU model in eval mode plus the tokenizer when the
directory has one (artifacts and training snapshots do; snapshots of runs before the tokenizer was
copied into them do not). ``encode`` and ``check_head`` raise ``InterpError``
naming the fix for a prompt longer than the context and for a layer/head out of range.
What this module does not do: any analysis (``attention``, ``induction``, ``diff``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.model.hf import gpt_to_hf, load_gpt


class InterpError(ValueError):
    """An interpretability request cannot be served. The message names the problem and the fix."""


@dataclass
class Loaded:
    """A model ready for analysis: the bridge, its tokenizer (or None) and where it came from."""

    bridge: Any  # transformer_lens TransformerBridge
    tokenizer: Any
    name: str
    path: Path

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.bridge.cfg.n_heads

    @property
    def n_ctx(self) -> int:
        return self.bridge.cfg.n_ctx


def load_bridge(path: str | Path, name: str | None = None) -> Loaded:
    """The GPT-2 checkpoint directory ``path`` as a TransformerLens bridge (see module docstring)."""
    from transformer_lens.model_bridge.sources import build_bridge_from_module
    path = Path(path)
    hf = gpt_to_hf(load_gpt(path))  # CheckpointError for anything that is not a GPT-2 checkpoint
    hf.set_attn_implementation("eager")  # fused attention kernels never materialise the pattern
    tokenizer = _tokenizer(path)
    bridge = build_bridge_from_module(hf, "GPT2LMHeadModel", hf_config=hf.config, tokenizer=tokenizer,
                                      device="cpu", model_name=str(path))
    bridge.eval()
    return Loaded(bridge, tokenizer, name or path.name, path)


def _tokenizer(path: Path):
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


def bos_id(model: Loaded) -> int | None:
    """The id that starts a document in training (our shards separate documents with it), if known."""
    if model.tokenizer is not None:
        return model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else model.tokenizer.eos_token_id
    config = model.bridge.original_model.config
    return config.bos_token_id if config.bos_token_id is not None else config.eos_token_id


def encode(model: Loaded, text: str) -> list[int]:
    """``text`` as token ids after the document-start token, or an error if it does not fit the context."""
    if model.tokenizer is None:
        raise InterpError(f"{model.path} has no tokenizer files, so text prompts cannot be encoded; "
                          "use a model artifact, or rerun pretraining so its snapshots carry the tokenizer")
    start = bos_id(model)
    ids = ([start] if start is not None else []) + model.tokenizer(text, add_special_tokens=False).input_ids
    check_length(model, len(ids), "the prompt")
    return ids


def check_length(model: Loaded, n_tokens: int, what: str) -> None:
    if n_tokens > model.n_ctx:
        raise InterpError(f"{what} is {n_tokens} tokens but {model.name} has a context of {model.n_ctx}; "
                          "shorten it (or, for induction, lower induction_len)")
    if n_tokens < 2:
        raise InterpError(f"{what} is {n_tokens} token(s); attention needs at least 2: pass a longer prompt")


def token_labels(model: Loaded, ids: list[int]) -> list[str]:
    """One readable label per token (newlines and tabs shown as escapes) for plot axes and HTML."""
    if model.tokenizer is None:
        return [str(i) for i in ids]
    return [model.tokenizer.decode([i]).replace("\n", "\\n").replace("\t", "\\t") for i in ids]


def check_head(model: Loaded, layer: int | None, head: int | None = None) -> None:
    """Raise ``InterpError`` if ``layer`` / ``head`` do not exist in ``model``."""
    if layer is not None and not 0 <= layer < model.n_layers:
        raise InterpError(f"layer {layer} is out of range: {model.name} has layers 0..{model.n_layers - 1}")
    if head is not None and not 0 <= head < model.n_heads:
        raise InterpError(f"head {head} is out of range: {model.name} has heads 0..{model.n_heads - 1} per layer")


@torch.no_grad()
def run_cached(model: Loaded, tokens: torch.Tensor, suffixes: tuple[str, ...]):
    """``(logits, cache)`` for a ``[batch, pos]`` token tensor, caching only hooks ending in ``suffixes``."""
    check_length(model, tokens.shape[-1], "the input")
    return model.bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith(suffixes))


def attention_stack(cache, n_layers: int) -> torch.Tensor:
    """Attention patterns of every layer from a cache: ``[layer, batch, head, query, key]``."""
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(n_layers)])
