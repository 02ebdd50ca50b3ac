"""What every evaluation task shares: the task contract, the context, and one generation cache.

An :class:`EvalTask` has a ``name``, a one-sentence ``description`` of exactly how it scores,
the ``metrics`` it can report, and ``run(ctx) -> {metric: float}``; ``unavailable(ctx)`` returns
a reason to skip it (a missing service), or ``None``. A task reports a metric only when it had
something to score for it: no example, no number (a family missing under a small ``limit``
leaves its ``acc_<family>`` out rather than reporting a made-up 0).

An :class:`EvalContext` is one model under evaluation. It loads ``(model, tokenizer)`` once, on
first use, and answers ``replies(conversations)`` with greedy replies (special tokens kept, as
``shared.eval.generate`` returns them), cached by the rendered prompt: tasks that ask the same
held-out prompts share one generation pass. ``reply_fn`` replaces the model altogether (a
scripted stand-in in tests, another engine later). Tasks hand their per-example rows to
``ctx.record`` so the suite can write them next to the numbers.

``limit`` caps each task's pool of prompts: ``heldout()`` is the first ``limit`` held-out
builtin instructions in their fixed (seeded, shuffled, every family mixed) order, and a task
that draws from a narrower pool (``tool_use``, ``safety``) takes the first ``limit`` of its own.
The suite runner is ``shared.eval.tasks.run_suite``; this module does not know the tasks.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch

from shared.data.instructions import load_instructions, safety_prompts
from shared.eval.checkpoint import EvalError
from shared.eval.generate import generate_replies, load_chat_model
from shared.chat_format import render_chat

Conversation = Sequence[Mapping[str, Any]]
ReplyFn = Callable[[Sequence[Conversation]], list[str]]


@lru_cache(maxsize=1)
def heldout_examples() -> tuple[dict, ...]:
    """Every held-out ``builtin:instructions`` example, generated once per process (it takes seconds).

    Shared between callers: treat the examples as read-only.
    """
    return tuple(load_instructions(split="heldout"))


@lru_cache(maxsize=1)
def heldout_safety_prompts() -> dict[str, tuple[dict, ...]]:
    """``safety_prompts("heldout")`` as tuples, computed once per process; read-only like the above."""
    return {side: tuple(examples) for side, examples in safety_prompts("heldout").items()}


def prompt_of(example: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The conversation an example asks the model to continue: every message but the target."""
    return list(example["messages"][:-1])


@dataclass
class EvalContext:
    """One model under evaluation, its generation settings and the reply cache (module docstring)."""

    model_path: Path | str
    limit: int | None = None
    max_new_tokens: int = 48
    batch_size: int = 32
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    reply_fn: ReplyFn | None = None
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)
    _cache: dict[str, str] = field(default_factory=dict, init=False, repr=False)  # rendered prompt -> reply

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"limit={self.limit} leaves nothing to evaluate; pass a positive limit or None for all")

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """``(model, tokenizer)``, loaded on first use (a suite of skipped tasks loads nothing)."""
        if self._model is None:
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = load_chat_model(str(self.model_path), device=device)
        return self._model

    def take(self, examples: Sequence[dict]) -> list[dict]:
        """The first ``limit`` of ``examples`` (all of them without a limit)."""
        return list(examples[: self.limit])

    def heldout(self) -> list[dict]:
        """The first ``limit`` held-out builtin instructions: the common pool of prompt-level tasks."""
        return self.take(heldout_examples())

    def replies(self, conversations: Sequence[Conversation]) -> list[str]:
        """One greedy reply per conversation; prompts seen before are answered from the cache."""
        keys = [render_chat(c, add_generation_prompt=True) for c in conversations]
        todo: dict[str, Conversation] = {}
        for key, conversation in zip(keys, conversations):
            if key not in self._cache:
                todo.setdefault(key, conversation)
        if todo:
            fresh = self._generate(list(todo.values()))
            if len(fresh) != len(todo):
                raise EvalError(f"the reply function returned {len(fresh)} replies for {len(todo)} prompts; "
                                "it must return exactly one reply per conversation")
            self._cache.update(zip(todo, fresh))
        return [self._cache[key] for key in keys]

    def _generate(self, conversations: list[Conversation]) -> list[str]:
        if self.reply_fn is not None:
            return list(self.reply_fn(conversations))
        model, tokenizer = self.model_and_tokenizer()
        replies = generate_replies(model, tokenizer, conversations, max_new_tokens=self.max_new_tokens,
                                   batch_size=self.batch_size, seed=self.seed)
        return [r[0] for r in replies]

    def record(self, task: str, rows: list[dict[str, Any]]) -> None:
        """Keep a task's per-example rows (id, reply, verdicts) for the suite's output files."""
        self.rows[task] = rows


class EvalTask:
    """One evaluation. Subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one sentence: exactly how it scores
    metrics: ClassVar[tuple[str, ...]]  # every metric it can report (see the module docstring)

    def unavailable(self, ctx: EvalContext) -> str | None:
        """Why this task cannot run now (a missing service), or ``None`` when it can."""
        return None

    def run(self, ctx: EvalContext) -> dict[str, float]:
        """``{metric: value}`` for the model in ``ctx``; per-example rows go to ``ctx.record``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<EvalTask {self.name}: {self.description}>"


def share(flags: Sequence[bool]) -> float | None:
    """The fraction of true flags, or ``None`` when there are none (nothing to score)."""
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def present(metrics: Mapping[str, float | int | None]) -> dict[str, float]:
    """The metrics that have a value, as floats (``None`` means nothing was scored: leave it out)."""
    return {k: float(v) for k, v in metrics.items() if v is not None}
