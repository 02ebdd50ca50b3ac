"""Fine-tune any HF causal LM (full, LoRA r=8/16/32, QLoRA) under any parallelism (DDP, FSDP2, DeepSpeed ZeRO 1/2/3), under Ray Train.

    python -m ray_jobs.finetune --config tiny run=myrun method.method=lora method.lora_r=8
    python -m ray_jobs.finetune --config zero2-cpu run=myrun parallelism=zero3
    python -m ray_jobs.finetune --config llama3.1-8b-qlora          (one GPU)

The data is chat (SFT: loss on the assistant's tokens) or a text corpus (domain fine-tuning:
every token). LoRA runs save the adapter (``adapter/``) beside the merged checkpoint.
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("finetune", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
