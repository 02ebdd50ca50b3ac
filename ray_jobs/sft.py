"""Supervised fine-tuning (TRL SFTTrainer) of a registered model on chat data, under Ray Train.

    python -m ray_jobs.sft --config tiny run=myrun                 (after cpt in the same run)
    python -m ray_jobs.sft --config tiny data=hf:databricks/databricks-dolly-15k method.method=lora

Loss on the assistant's tokens only; the held-out split is scored before (the start model) and
after (exact match, format adherence, refusals) into the artifact's metrics and heldout_eval.md.
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("sft", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
