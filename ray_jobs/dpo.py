"""DPO (TRL DPOTrainer) on preference pairs, reference = the SFT model, under Ray Train.

    python -m ray_jobs.dpo --config tiny run=myrun                   (after prefs in the same run)
    python -m ray_jobs.dpo --config tiny data=hf:HuggingFaceH4/ultrafeedback_binarized beta=0.2

Logs reward margins and accuracies, then compares base / SFT / DPO on held-out instructions and
on the safety/helpfulness prompts (tables in the artifact) and reports DPO's win-rate over SFT.
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("dpo", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
