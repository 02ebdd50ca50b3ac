"""``instructions``: exact-match accuracy on the held-out builtin instructions, overall and per family.

The pool is ``ctx.heldout()``; the examples with an exact check (``exact``, ``exact_case``,
``tool_call``: ``chat_eval.CHECKABLE``) are scored by ``chat_eval.score_replies`` against each
example's own check and summarized by ``chat_eval.summarize``. ``docs`` and refusal prompts are
not exact-checkable, so they are left to ``chat_format`` and ``safety``.
"""
from __future__ import annotations

from shared.data.instructions.builtin import FAMILIES
from shared.eval.chat_eval import CHECKABLE, score_replies, summarize
from shared.eval.tasks.base import EvalContext, EvalTask, present, prompt_of


class Instructions(EvalTask):
    name = "instructions"
    description = ("Share of held-out builtin instructions with an exact check (exact, exact_case, tool_call) "
                   "whose greedy reply passes that check, overall (exact_match) and per task family (acc_<family>).")
    metrics = ("n", "exact_match", *(f"acc_{family}" for family in FAMILIES))

    def run(self, ctx: EvalContext) -> dict[str, float]:
        examples = [e for e in ctx.heldout() if e["check"]["kind"] in CHECKABLE]
        rows = score_replies(examples, ctx.replies([prompt_of(e) for e in examples]))
        ctx.record(self.name, rows)
        summary = summarize(rows)
        families = {k: v for k, v in summary.items() if k.startswith("acc_")}
        return present({"n": len(rows), "exact_match": summary["exact_match"], **families})
