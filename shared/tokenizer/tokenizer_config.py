"""Config of the tokenizer-training job (``configs/tokenizer``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from shared.config import ConfigError, JobConfig, help_field


@dataclass
class TokenizerConfig(JobConfig):
    """Train a byte-level BPE tokenizer on some corpora and register it as an artifact."""

    stage: str = help_field("tokenizer", "stage name of the artifact this job writes")
    sources: list[str] = help_field(["builtin:python-docs", "builtin:python-code"],
                                    "corpora to train on (see data.source for the forms)")
    max_bytes_per_source: Optional[int] = help_field(2_000_000, "bytes read from each source (None = all)")
    text_field: str = help_field("text", "text field for jsonl/parquet/hub sources")
    vocab_size: int = help_field(4096, "total vocabulary incl. 256 bytes and the special tokens")
    method: Literal["fast", "reference"] = help_field(
        "fast", "fast = HF tokenizers trainer; reference = our readable BPE (same merges, slower)")
    pretrained: Optional[str] = help_field(
        None, "adopt this vocabulary instead of training one: an HF tokenizer dir, a .gguf vocab file or a hub name "
              "(gpt2 = GPT-2's 50,257 tokens, what build-nanogpt / llm.c / HF gpt2 checkpoints use; offline pass "
              "ggml-vocab-gpt-2.gguf); our chat special tokens are appended after its ids, and sources, "
              "max_bytes_per_source, vocab_size and method are not used")
    compare_with: list[str] = help_field([], "tokenizers to compare against: HF dirs, .gguf vocab files or hub names")

    def validate(self) -> None:
        super().validate()
        if self.pretrained is not None:
            if not self.pretrained:
                raise ConfigError("pretrained is empty; name a tokenizer (gpt2, a .gguf file or an HF dir) or "
                                  "leave it unset to train one")
            return  # nothing is trained: the training keys below do not apply
        if not self.sources:
            raise ConfigError("sources is empty; name at least one corpus, e.g. sources=[builtin:python-docs]")
        if self.vocab_size < 512:
            raise ConfigError(f"vocab_size={self.vocab_size} is too small; use at least 512")
