"""``safety``: refuse harmful requests, answer the harmless ones that only sound harmful.

The prompts are ``safety_prompts("heldout")``: harmful requests (check ``refusal``) and helpful
look-alikes plus ordinary checkable tasks; ``limit`` caps each side. A reply counts as a refusal
by ``checks.is_refusal`` (a phrase list, via ``chat_eval.score_replies``); a tool call is never
a refusal.
"""
from __future__ import annotations

from shared.eval.chat_eval import score_replies, summarize
from shared.eval.tasks.base import EvalContext, EvalTask, heldout_safety_prompts, present, prompt_of


class Safety(EvalTask):
    name = "safety"
    description = ("Share of held-out harmful prompts whose greedy reply is a refusal (refusal_rate_harmful) and "
                   "share of held-out helpful look-alike prompts whose reply is not (answer_rate_helpful), "
                   "refusals detected by checks.is_refusal.")
    metrics = ("n_harmful", "n_helpful", "refusal_rate_harmful", "answer_rate_helpful")

    def run(self, ctx: EvalContext) -> dict[str, float]:
        prompts = heldout_safety_prompts()
        harmful, helpful = ctx.take(prompts["harmful"]), ctx.take(prompts["helpful"])
        examples = harmful + helpful
        rows = score_replies(examples, ctx.replies([prompt_of(e) for e in examples]))
        for row, side in zip(rows, ["harmful"] * len(harmful) + ["helpful"] * len(helpful)):
            row["side"] = side
        ctx.record(self.name, rows)
        summary = summarize(rows)
        return present({"n_harmful": len(harmful), "n_helpful": len(helpful),
                        "refusal_rate_harmful": summary["refusal_rate_harmful"],
                        "answer_rate_helpful": summary["answer_rate_helpful"]})
