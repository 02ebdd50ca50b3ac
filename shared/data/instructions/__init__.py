"""Post-training data: SFT examples, preference pairs, and the checks that score replies.

    train = load_sft_dataset("builtin:instructions")                 # or hf:databricks/databricks-dolly-15k ...
    heldout = load_sft_dataset("builtin:instructions", "heldout")
    pairs = load_preference_dataset("hf:Anthropic/hh-rlhf", data_files=["hh/train.jsonl"])
    score_response(heldout[0], "42<|end|>")   # {"correct": ..., "format_ok": ..., "refused": ..., ...}

Modules: ``schema`` (row shapes, validation, the held-out rule); ``builtin`` (the generated
``builtin:instructions`` set) over ``families``, ``safety``, ``passages``, ``facts`` and ``docs``;
``rag_prompt`` (the one answer-from-passages prompt format, shared with the eval's ``rag`` task);
``loaders`` (by source name) over ``hub_formats`` (public datasets' schemas); ``checks``
(scoring, pure Python). Rendering to text is ``shared.chat_format``; tokenizing and
training are the trainers' business, not this package's.
"""
from shared.data.instructions.builtin import generate_instructions, load_instructions, safety_prompts
from shared.data.instructions.safety import hard_safety_prompts
from shared.data.instructions.checks import is_refusal, parse_response, reference_overlap, score_response
from shared.data.instructions.loaders import load_preference_dataset, load_sft_dataset
from shared.data.instructions.schema import (CHECK_KINDS, SPLITS, check_nonempty, from_arrow_row, split_name,
                                             target_response, validate_preference_example, validate_sft_example)

__all__ = [
    "CHECK_KINDS",
    "SPLITS",
    "check_nonempty",
    "from_arrow_row",
    "generate_instructions",
    "is_refusal",
    "load_instructions",
    "load_preference_dataset",
    "load_sft_dataset",
    "parse_response",
    "reference_overlap",
    "safety_prompts",
    "hard_safety_prompts",
    "score_response",
    "split_name",
    "target_response",
    "validate_preference_example",
    "validate_sft_example",
]
