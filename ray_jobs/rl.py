"""Online RL (TRL GRPO or RLOO) of the DPO policy against the reward model and the exact checkers.

    python -m ray_jobs.rl --config tiny run=myrun                  (after dpo and reward in the same run)
    python -m ray_jobs.rl --config tiny algorithm=rloo checker_weight=0

GRPO is a PPO-style clipped objective with group-relative advantages and no value model (not
PPO); rollouts use HF generate and stop at <|end|>. Logs the rewards, then compares the policy's
ancestors (base / SFT / DPO) with the RL policy on held-out and safety/helpfulness prompts.
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("rl", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
