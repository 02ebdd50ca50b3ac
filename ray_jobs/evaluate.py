"""Evaluation: one artifact, or every model of a run side by side in the scorecard.

    journey eval all                              # scorecard of the newest run (tiny preset)
    journey eval all run=myrun parallel=2         # each artifact a Ray task, two at a time
    journey eval myrun/sft tasks=instructions,tool_use,safety
    journey eval myrun/sft tasks=hellaswag,arc_easy,truthfulqa_mc1 source=local data_dir=~/evals
    journey eval myrun/sft tasks=hellaswag,arc_challenge source=hub limit=null   (with hub access)
    python -m ray_jobs.evaluate --config tiny artifact=myrun/dpo

Tasks: ``perplexity`` (held-out general and domain text), our suite (``instructions``,
``chat_format``, ``tool_use``, ``safety``, ``rag``) and lm-eval tasks (``journey_docs_cloze``,
``journey_facts_mc``, and the standard ``hellaswag``, ``arc_easy``, ``arc_challenge``,
``truthfulqa_mc1`` ...). Results are written under ``<artifact>/eval/``; the scorecard is the
artifact ``<run>/eval`` (``scorecard.md``, ``scorecard.json``, ``scorecard.png``).
"""
from __future__ import annotations

import sys

from ray_jobs._args import parse_stage_args, run_main
from shared import stages

STAGE = stages.get("eval")


def parse(argv: list[str]):
    """``[all | ARTIFACT] [--config PRESET] key=value ...`` into the stage's config (``EvalConfig``)."""
    rest = list(argv)
    target = rest.pop(0) if rest and "=" not in rest[0] and not rest[0].startswith("-") else None
    if target and target != "all":
        rest.append(f"artifact={target}")
    return parse_stage_args(STAGE, rest, __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def job():
        result = STAGE.run(parse(argv))
        if isinstance(result, dict):
            return result
        print((result.dir / "scorecard.md").read_text())
        return {"artifact": result.id, "path": result.path}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
