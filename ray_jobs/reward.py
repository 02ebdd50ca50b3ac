"""Reward model (TRL RewardTrainer) on preference pairs, backbone = the SFT model, under Ray Train.

    python -m ray_jobs.reward --config tiny run=myrun                (after prefs in the same run)
    python -m ray_jobs.reward --config tiny method.method=lora data=hf:HuggingFaceH4/ultrafeedback_binarized

A one-output sequence classifier trained with the Bradley-Terry loss on chosen vs rejected; the
artifact (kind reward-model) records the held-out pair accuracy before (untrained head) and after.
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("reward", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
