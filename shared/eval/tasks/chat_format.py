"""``chat_format``: does the model keep to the chat format on the held-out prompts?

Every prompt of ``ctx.heldout()`` is answered greedily and parsed with
``checks.parse_response``. ``format_ok``: the reply has no format problem at all (it ends with
``<|end|>`` before any other special token, is not empty, and a tool call in it is the whole
reply and valid JSON). ``terminated``: it ends with ``<|end|>`` before any other special token.
``stray_role``: a role token (``<|user|>``, ``<|assistant|>``, ...) comes before ``<|end|>``, i.e.
the model ran on into another turn.
"""
from __future__ import annotations

from shared.data.instructions.checks import ROLE_TOKENS, parse_response
from shared.eval.tasks.base import EvalContext, EvalTask, present, prompt_of, share
from shared.chat_format import END


def has_stray_role(reply: str) -> bool:
    """True when a role token appears before the first ``<|end|>`` (or anywhere, if there is none)."""
    head = reply.split(END, 1)[0]
    return any(token in head for token in ROLE_TOKENS)


class ChatFormat(EvalTask):
    name = "chat_format"
    description = ("Share of greedy replies to the held-out prompts that are well formed (format_ok: no "
                   "checks.parse_response problem), that end with <|end|> (terminated), and that run into "
                   "another turn's role token (stray_role, lower is better).")
    metrics = ("n", "format_ok", "terminated", "stray_role")

    def run(self, ctx: EvalContext) -> dict[str, float]:
        examples = ctx.heldout()
        rows = []
        for example, reply in zip(examples, ctx.replies([prompt_of(e) for e in examples]), strict=True):
            parsed = parse_response(reply)
            rows.append({"id": example["id"], "reply": reply, "format_ok": not parsed["problems"],
                         "terminated": parsed["terminated"], "stray_role": has_stray_role(reply),
                         "problems": parsed["problems"]})
        ctx.record(self.name, rows)
        return present({"n": len(rows), **{m: share([r[m] for r in rows]) for m in self.metrics[1:]}})
