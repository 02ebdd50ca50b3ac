"""``rag``: does the run's retriever find the document a question is about? Hit rate@1/@4 and MRR.

The index is the newest ``index`` artifact in the evaluated model's run (``python -m ray_jobs.index``);
without one the task is skipped with ``REASON``. The questions are those whose source document is
known because they are asked about an indexed builtin Python docs document: for ``module:<file>``
one of the ``docs`` instruction family's questions ("What does the json.decoder module do?"), for a
language-reference ``topic:<name>`` "What does the Python reference say about <name>?". Each is
searched (top 4, the retriever's default) and scored by the rank of the first passage from its
document. Local documents in the index have no such questions and are only distractors.

Evaluations of several models may run at once in separate processes, and a local-mode index admits
one process at a time (``shared.rag.store``): the task holds it only while it searches and waits up
to ``LOCK_WAIT_S`` for another task to let go.

This scores retrieval only, which is model-independent; answer accuracy with retrieved passages in
the prompt needs a model that can read them (the tiny ones cannot) and is not measured here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shared.data.builtin import module_name
from shared.data.instructions.families import DOCS_TEMPLATES
from shared.eval.checkpoint import EvalError
from shared.eval.tasks.base import EvalContext, EvalTask, present, share
from shared.rag.retriever import Retriever, read_metadata
from shared.rag.store import StoreLocked
from shared.registry import MANIFEST, Registry

TOP_K = 4
LOCK_WAIT_S = 120.0
BUILTIN = "builtin:python-docs#"
REASON = ("no index artifact in this model's run for the retriever to search; build one with "
          "`python -m ray_jobs.index --config tiny run=<run>` and the task scores retrieval hit rate")


def run_index_dir(model_path: str | Path) -> Path | None:
    """The newest ``index`` artifact of the run that holds the artifact ``model_path``, if any."""
    if not (Path(model_path) / MANIFEST).exists():
        return None  # not a registered artifact: it has no run to look in
    model = Registry.load(model_path)
    indexes = [a for a in Registry(model.dir.parent.parent).artifacts(model.run) if a.kind == "index"]
    return indexes[-1].dir if indexes else None


def questions(index_dir: Path) -> list[dict[str, str]]:
    """One question per indexed builtin docs document (sorted by source), with that source as the answer."""
    chunks = index_dir / read_metadata(index_dir)["chunks_file"]
    sources = sorted({json.loads(line)["source"] for line in chunks.read_text(encoding="utf-8").splitlines()
                      if line.strip()})
    out = []
    for n, source in enumerate(s for s in sources if s.startswith(BUILTIN)):
        kind, _, name = source[len(BUILTIN):].partition(":")
        if kind == "module":
            question = DOCS_TEMPLATES[n % len(DOCS_TEMPLATES)].format(m=module_name(Path(name)))
        else:
            question = f"What does the Python reference say about {name.replace('-', ' ')}?"
        out.append({"id": f"rag:{source[len(BUILTIN):]}", "question": question, "source": source})
    return out


def search_all(index_dir: Path, queries: list[str]) -> list[list[str]]:
    """The top-``TOP_K`` sources for each query; waits while another process holds a local index (module doc)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            retriever = Retriever.from_index(index_dir)
            try:
                return [[p.source for p in retriever.search(q, top_k=TOP_K)] for q in queries]
            finally:
                retriever.store.release()
        except StoreLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Rag(EvalTask):
    name = "rag"
    description = (f"For questions about indexed Python docs documents, share whose document is the run index's top "
                   f"passage (hit_rate_at_1) or among the top {TOP_K} (hit_rate_at_{TOP_K}), and the mean reciprocal "
                   f"rank of its first passage in the top {TOP_K} (mrr).")
    metrics = ("n", "hit_rate_at_1", f"hit_rate_at_{TOP_K}", "mrr")

    def unavailable(self, ctx: EvalContext) -> str | None:
        index_dir = run_index_dir(ctx.model_path)
        if index_dir is None:
            return REASON
        if not questions(index_dir):
            return f"the run's index {index_dir} holds no builtin:python-docs documents to ask about"
        return None

    def run(self, ctx: EvalContext) -> dict[str, float]:
        index_dir = run_index_dir(ctx.model_path)
        if index_dir is None:
            raise EvalError(f"the rag task cannot run: {REASON}")
        asked = ctx.take(questions(index_dir))
        rows: list[dict[str, Any]] = []
        for q, found in zip(asked, search_all(index_dir, [q["question"] for q in asked])):
            rank = found.index(q["source"]) + 1 if q["source"] in found else None
            rows.append({**q, "retrieved": found, "rank": rank})
        ctx.record(self.name, rows)
        ranks = [r["rank"] for r in rows]
        return present({"n": len(rows), "hit_rate_at_1": share([r == 1 for r in ranks]),
                        f"hit_rate_at_{TOP_K}": share([r is not None for r in ranks]),
                        "mrr": sum(1 / r for r in ranks if r) / len(ranks) if ranks else None})
