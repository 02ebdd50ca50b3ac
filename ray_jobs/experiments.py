"""``journey experiment NAME [--config PRESET] [key=value ...]``: controlled experiments.

    journey experiment vocab-size vocab_sizes=[1024,4096,16384] steps=200
    journey experiment lr-schedules schedules=[cosine,linear,wsd] steps=300
    journey experiment moe --config moe-tiny run=myrun        (MoE top-1/top-2/fine-grained vs dense, in-process)
    journey experiment parallelism parallel.workers=2 parallel.arms=[ddp,zero2,fsdp,zero3]   (DDP/FSDP2/ZeRO side by side)
    journey experiment parallelism --config parallelism-gpu                     (on a GPU machine, NCCL)
    journey experiment finetune-methods --config finetune-methods-tiny run=myrun     (after cpt in myrun)
    journey experiment finetune-methods --config finetune-methods-tiny init_from=runs/spike/pretrain

``--config`` names a preset under ``configs/experiment/`` (or a YAML path); without it the
``ExperimentConfig`` defaults apply. Writes ``<runs>/<run>/experiment-<name>/`` with a table (md, json)
and a PNG chart, registered as an artifact of kind ``experiment``.
"""
from __future__ import annotations

import sys

from ray_jobs._args import parse_stage_args, run_main
from shared import stages

STAGE = stages.get("experiment")
#: experiment name -> the function that runs it (the stage table's commands)
EXPERIMENTS = STAGE.commands


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in EXPERIMENTS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]

    def job():
        cfg = parse_stage_args(STAGE, rest, f"journey experiment {name}", default_preset=None)
        art = EXPERIMENTS[name](cfg)
        return {"artifact": art.id, "path": art.path}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
