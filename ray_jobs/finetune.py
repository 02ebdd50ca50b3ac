"""Fine-tune any HF causal LM (full, LoRA r=8/16/32, QLoRA) with DeepSpeed ZeRO 1/2/3, under Ray Train.

    python -m ray_jobs.finetune --config tiny run=myrun method.method=lora method.lora_r=8
    python -m ray_jobs.finetune --config tiny num_workers=2 cpus_per_worker=1 deepspeed.zero_stage=3
    python -m ray_jobs.finetune --config llama3.1-8b-qlora          (one GPU)

The data is chat (SFT: loss on the assistant's tokens) or a text corpus (domain fine-tuning:
every token). LoRA runs save the adapter (``adapter/``) beside the merged checkpoint.
"""
from __future__ import annotations

import sys

from ray_jobs import sft


def main(argv: list[str] | None = None) -> int:
    return sft.main(argv, stage="finetune", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
