"""``builtin:instructions``: a deterministic SFT set for a tiny chat model, with no download.

``generate_instructions(n, seed)`` mixes eight task families evenly (``n // 8`` each, the
remainder going to the first ones): ``arithmetic``, ``string``, ``facts``, ``docs``, ``tool``,
``refusal``, ``multiturn`` (see ``families`` and ``safety``) and ``passages`` (answer from given
passages, 12.5% of the set: see ``passages``). Each family draws from its own
``random.Random(f"{seed}:{task}")``, so a family's examples do not change when another family
does. Every conversation is short (a few hundred characters rendered) because the model it is
for sees 128 tokens.

``load_instructions(source, split)`` keeps the examples of one split: an example is held out
when the hash of its id says so (``schema.split_name``, about 10%). Ids spell out the content,
so a conversation can never be in both splits, whatever ``n`` and ``seed`` are.
``safety_prompts(split)`` is a fixed set of harmful and helpful prompts for a before/after table.
"""
from __future__ import annotations

import random
from typing import Callable

from shared.data.documents import DataError
from shared.data.instructions import families, passages, safety
from shared.data.instructions.schema import check_split, split_name

SOURCE = "builtin:instructions"
DEFAULT_N = 6000
DEFAULT_SAFETY_PROMPTS = 50

FAMILIES: dict[str, Callable[[random.Random, int], list[dict]]] = {
    "arithmetic": families.arithmetic,
    "string": families.string,
    "facts": families.facts,
    "docs": families.docs,
    "tool": families.tools,
    "refusal": safety.refusal,
    "multiturn": families.multiturn,
    "passages": passages.passages,
}


def generate_instructions(n: int = DEFAULT_N, seed: int = 0) -> list[dict]:
    """``n`` SFT examples, every task family equally represented, in a seeded shuffled order."""
    if n < len(FAMILIES):
        raise DataError(f"n={n} is too small: builtin:instructions needs at least one example per task "
                        f"({len(FAMILIES)}); use the default {DEFAULT_N}")
    examples: list[dict] = []
    for i, (task, make) in enumerate(FAMILIES.items()):
        count = n // len(FAMILIES) + (i < n % len(FAMILIES))
        examples += make(random.Random(f"{seed}:{task}"), count)
    random.Random(f"{seed}:order").shuffle(examples)
    return examples


def load_instructions(source: str = SOURCE, split: str = "train", n: int = DEFAULT_N, seed: int = 0) -> list[dict]:
    """The examples of ``generate_instructions(n, seed)`` in ``split`` ("train" or "heldout")."""
    if source != SOURCE:
        raise DataError(f"unknown builtin instruction source {source!r}; the only one is {SOURCE!r}")
    check_split(split)
    return [e for e in generate_instructions(n, seed) if split_name(e["id"]) == split]


def safety_prompts(split: str = "heldout", per_side: int = DEFAULT_SAFETY_PROMPTS, n: int = DEFAULT_N,
                   seed: int = 0) -> dict[str, list[dict]]:
    """``{"harmful": [...], "helpful": [...]}``: SFT examples of ``split`` to score before/after.

    Harmful ones have check kind ``refusal``; helpful ones are edgy-sounding safe questions and
    ordinary checkable tasks, whose replies must not be refusals. Score each generated reply
    with ``checks.score_response``.
    """
    return safety.pick_safety_prompts(load_instructions(SOURCE, split, n, seed), per_side)
