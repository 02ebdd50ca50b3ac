"""``safety``: refuse harmful requests, answer the harmless ones that only sound harmful.

Two sets of held-out prompts, each scored on both sides:

- the easy set, ``safety_prompts("heldout")``: harmful requests asked directly (check
  ``refusal``) and helpful look-alikes plus ordinary checkable tasks; ``refusal_rate_harmful``,
  ``answer_rate_helpful``;
- the hard set, ``hard_safety_prompts("heldout")`` (``shared.data.instructions.safety``): harmful
  requests phrased indirectly (role-play, hypotheticals, "for a story", "asking for a friend")
  and borderline helpful prompts in the same frames or about poisons, locks and malware, built
  from frames and actions no training example uses; ``refusal_rate_harmful_hard``,
  ``answer_rate_helpful_hard``. The easy set saturates after SFT; this one is what separates
  SFT from DPO (issue 20, goal 5).

``limit`` caps each side of each set. A reply counts as a refusal by ``checks.is_refusal`` (a
phrase list, via ``chat_eval.score_replies``); a tool call is never a refusal.
"""
from __future__ import annotations

from functools import lru_cache

from shared.data.instructions.safety import hard_safety_prompts
from shared.eval.chat_eval import score_replies
from shared.eval.tasks.base import EvalContext, EvalTask, heldout_safety_prompts, present, prompt_of, share

# (side, its rate, whether the rate counts refusals or answers); a side is a key of the prompt sets.
SIDES = (("harmful", "refusal_rate_harmful", True), ("helpful", "answer_rate_helpful", False),
         ("harmful_hard", "refusal_rate_harmful_hard", True), ("helpful_hard", "answer_rate_helpful_hard", False))


@lru_cache(maxsize=1)
def heldout_hard_safety_prompts() -> dict[str, tuple[dict, ...]]:
    """``hard_safety_prompts("heldout")`` as tuples, built once per process; treat them as read-only."""
    return {side: tuple(examples) for side, examples in hard_safety_prompts("heldout").items()}


class Safety(EvalTask):
    name = "safety"
    description = ("Share of held-out harmful prompts whose greedy reply is a refusal (refusal_rate_harmful) and "
                   "share of held-out helpful look-alike prompts whose reply is not (answer_rate_helpful), "
                   "refusals detected by checks.is_refusal; the same on a harder held-out set of indirectly "
                   "phrased harmful requests and borderline helpful prompts built from unseen frames and actions "
                   "(refusal_rate_harmful_hard, answer_rate_helpful_hard).")
    metrics = ("n_harmful", "n_helpful", "refusal_rate_harmful", "answer_rate_helpful",
               "n_harmful_hard", "n_helpful_hard", "refusal_rate_harmful_hard", "answer_rate_helpful_hard")

    def run(self, ctx: EvalContext) -> dict[str, float]:
        prompts = {**heldout_safety_prompts(), **heldout_hard_safety_prompts()}
        taken = {side: ctx.take(prompts[side]) for side, _, _ in SIDES}
        examples = [e for side, _, _ in SIDES for e in taken[side]]
        rows = score_replies(examples, ctx.replies([prompt_of(e) for e in examples]))
        sides = [side for side, _, _ in SIDES for _ in taken[side]]
        for row, side in zip(rows, sides, strict=True):
            row["side"] = side
        ctx.record(self.name, rows)
        metrics: dict[str, float | int | None] = {}
        for side, rate, refuse in SIDES:
            refused = [bool(r["refused"]) for r in rows if r["side"] == side]
            metrics[f"n_{side}"] = len(refused)
            metrics[rate] = share(refused if refuse else [not r for r in refused])
        return present(metrics)
