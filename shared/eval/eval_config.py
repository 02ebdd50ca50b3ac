"""Configuration of ``journey eval``: which artifacts, which tasks, how much of each."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from shared.config import ConfigError, JobConfig, help_field, require_positive

# Task groups: our held-out perplexity, our own suite (shared.eval.tasks), lm-eval tasks (shared.eval.harness).
PERPLEXITY = "perplexity"
DEFAULT_TASKS = [PERPLEXITY, "instructions", "chat_format", "tool_use", "safety", "rag",
                 "journey_docs_cloze", "journey_facts_mc"]


@dataclass
class EvalConfig(JobConfig):
    """Evaluate one artifact (``artifact=``) or every model artifact of a run into a scorecard."""

    run: Optional[str] = help_field(None, "the run whose model artifacts make the scorecard (default: the newest run)")
    stage: str = help_field("eval", "stage name of the scorecard artifact written into the run")
    overwrite: bool = help_field(False, "replace an existing scorecard artifact of the same run/stage")
    artifact: Optional[str] = help_field(None, "evaluate only this artifact (<run>/<stage>, <stage> or a path)")
    tasks: list[str] = help_field(list(DEFAULT_TASKS),
                                  "tasks: perplexity, our suite (instructions, chat_format, tool_use, safety, rag), "
                                  "lm-eval tasks (journey_docs_cloze, journey_facts_mc, hellaswag, arc_easy, "
                                  "arc_challenge, truthfulqa_mc1, ...)")
    source: Literal["local", "hub"] = help_field("local", "standard lm-eval tasks from local files (data_dir) or the hub")
    data_dir: Optional[str] = help_field(None, "local copies of the standard datasets (see shared.eval.harness)")
    limit: Optional[int] = help_field(200, "documents per lm-eval task (null = all)")
    num_fewshot: Optional[int] = help_field(None, "few-shot examples for lm-eval tasks (null = each task's default)")
    suite_limit: Optional[int] = help_field(200, "held-out prompts per suite task (null = all)")
    max_new_tokens: int = help_field(48, "reply budget for the generation tasks")
    ppl_tokens: int = help_field(16384, "held-out tokens per perplexity set")
    batch_size: int = help_field(16, "batch size for lm-eval and perplexity")
    device: str = help_field("cpu", "torch device: cpu, cuda, cuda:1, ...")
    kinds: list[str] = help_field(["hf-model", "quantized"],
                                  "artifact kinds on the scorecard: hf-model, quantized (INT8/INT4, our engine), gguf "
                                  "(llama.cpp; slower, one sequence per call: the quantize report already compares them)")
    parallel: int = help_field(2, "artifacts evaluated at once, each a Ray task")
    cpus_per_task: int = help_field(1, "CPU cores (torch threads) per evaluation task")
    seed: int = help_field(0, "seed for sampling-free tasks' data and lm-eval")

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("max_new_tokens", "ppl_tokens", "batch_size", "parallel", "cpus_per_task"))
        for name in ("limit", "suite_limit"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive or null (all), got {getattr(self, name)}")
        unknown = [k for k in self.kinds if k not in ("hf-model", "quantized", "gguf")]
        if unknown:
            raise ConfigError(f"unknown artifact kind {unknown[0]!r} in kinds; use hf-model, quantized, gguf")
        if not self.tasks:
            raise ConfigError("tasks is empty; name at least one, e.g. tasks=perplexity,instructions")
