"""Pretrain a GPT-2 from scratch under Ray Train.

    python -m ray_jobs.pretrain --config tiny run=myrun train.max_steps=500
    ray job submit --working-dir . -- python -m ray_jobs.pretrain --config configs/pretrain/tiny.yaml

Reads the run's ``tokenizer`` artifact, writes ``<runs>/<run>/pretrain`` (an HF checkpoint).
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("pretrain", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
