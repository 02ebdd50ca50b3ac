"""Configuration of the interpret stage and of ``journey interpret attention|induction|diff``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from shared.config import ConfigError, JobConfig, help_field, require_positive

DEFAULT_PROMPT = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"
DEFAULT_PROMPTS = [
    DEFAULT_PROMPT,
    "The list is a mutable sequence type in Python. A list can hold",
    "import os\n\nfor name in os.listdir('.'):\n    print(",
]
DEFAULT_CHAT_PROMPTS = ["What does the len function return?", "How do I reverse a list in Python?"]


@dataclass
class InterpretConfig(JobConfig):
    """Look inside a run's models: attention patterns, induction heads (and when they formed), stage diffs."""

    run: str = help_field("default", "run name: models are read from it and the report goes to <run>/<stage>")
    stage: str = help_field("interpret", "stage name of the report artifact")
    overwrite: bool = help_field(False, "replace an existing report artifact of the same run/stage")
    models: list[str] = help_field(["pretrain", "cpt", "sft", "dpo"],
                                   "model artifacts to analyse, in journey order (consecutive ones are diffed); "
                                   "stage names missing from the run are skipped and listed in the report")
    prompt: str = help_field(DEFAULT_PROMPT, "prompt whose attention patterns are drawn")
    layer: Optional[int] = help_field(None, "attention: also draw this layer's heads one by one, large")
    head: Optional[int] = help_field(None, "attention: with layer, draw only this head")
    induction_len: int = help_field(40, "length of the random token sequence that is repeated twice")
    induction_batch: int = help_field(8, "random sequences averaged per induction measurement")
    induction_threshold: float = help_field(0.3, "heads scoring above this are listed as induction heads")
    prev_token_threshold: float = help_field(0.3, "heads scoring above this are listed as previous-token heads")
    phase_model: str = help_field("pretrain", "model whose training snapshots show when induction heads form "
                                  "(pretraining with train.snapshot_every > 0 writes them)")
    prompts: list[str] = help_field(list(DEFAULT_PROMPTS), "plain-text prompts of the stage diff")
    chat_prompts: list[str] = help_field(list(DEFAULT_CHAT_PROMPTS),
                                         "user messages of the stage diff, rendered in the chat format")
    lens_prompts: int = help_field(2, "logit lens on this many of the diff prompts (chat ones first)")
    top_heads: int = help_field(5, "heads listed per diff as the ones whose attention changed most")
    seed: int = help_field(0, "seed of the random induction sequences")
    threads: int = help_field(2, "torch threads")
    out: Optional[str] = help_field(None, "attention/induction/diff commands: output folder "
                                    "(default <runs_dir>/_interp/<command>-<artifact>)")

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("induction_len", "induction_batch", "top_heads", "threads"))
        if self.induction_len < 4:
            raise ConfigError(f"induction_len must be >= 4 to measure anything, got {self.induction_len}")
        for name in ("induction_threshold", "prev_token_threshold"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} is an attention weight, so it must be in (0, 1); got {getattr(self, name)}")
        if not self.prompt:
            raise ConfigError('prompt is empty; pass some text, e.g. prompt="def f(x): return x"')
        if self.head is not None and self.layer is None:
            raise ConfigError("head is set without layer; pass layer=L head=H (or layer=L for all its heads)")
        if self.lens_prompts < 0:
            raise ConfigError(f"lens_prompts must be >= 0, got {self.lens_prompts}")
