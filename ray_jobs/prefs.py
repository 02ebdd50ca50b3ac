"""Preference pairs from the SFT model's own sampled outputs (Ray Data batch inference), scored.

    python -m ray_jobs.prefs --config tiny run=myrun                 (after sft in the same run)
    python -m ray_jobs.prefs --config tiny reward_model=reward        (add a reward model's score)

Writes a dataset artifact (train.jsonl / heldout.jsonl of chosen/rejected pairs with margins).
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("prefs", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
