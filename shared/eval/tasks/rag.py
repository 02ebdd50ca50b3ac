"""``rag``: answer accuracy with and without retrieved passages. Not runnable yet.

It needs the retriever (``shared.rag``: embeddings + Qdrant), which does not exist yet, so
``unavailable`` always gives that reason and the suite reports the task as skipped: no numbers
are made up. When the retriever lands, ``run`` asks each held-out question twice, once bare and
once with the top passages in the prompt, and scores both answers with the example's check.
"""
from __future__ import annotations

from shared.eval.checkpoint import EvalError
from shared.eval.tasks.base import EvalContext, EvalTask

REASON = ("needs the retriever (shared.rag: embeddings + Qdrant), which is not built yet; "
          "this task will score answers with and without retrieval once it exists")


class Rag(EvalTask):
    name = "rag"
    description = ("Share of held-out questions answered correctly by their check with retrieved passages in the "
                   "prompt (accuracy_with_retrieval) and without (accuracy_without_retrieval).")
    metrics = ("accuracy_with_retrieval", "accuracy_without_retrieval")

    def unavailable(self, ctx: EvalContext) -> str | None:
        return REASON

    def run(self, ctx: EvalContext) -> dict[str, float]:
        raise EvalError(f"the rag task cannot run: it {REASON}; leave it out of the task list or let the suite "
                        "skip it")
