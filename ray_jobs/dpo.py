"""DPO (TRL DPOTrainer) on preference pairs, reference = the SFT model, under Ray Train.

    python -m ray_jobs.dpo --config tiny run=myrun                   (after prefs in the same run)
    python -m ray_jobs.dpo --config tiny data=hf:HuggingFaceH4/ultrafeedback_binarized beta=0.2

Logs reward margins and accuracies, then compares base / SFT / DPO on held-out instructions and
on the safety/helpfulness prompts (tables in the artifact) and reports DPO's win-rate over SFT.
"""
from __future__ import annotations

import sys

from ray_jobs._args import parse_job_args, run_main
from shared.training.posttrain_config import DPOJobConfig


def main(argv: list[str] | None = None) -> int:
    def job():
        cfg = parse_job_args(DPOJobConfig, "dpo", argv, __doc__.splitlines()[0])
        from shared.training.dpo import run_dpo
        art = run_dpo(cfg)
        return {"artifact": art.id, "path": art.path, "metrics": art.metrics}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
