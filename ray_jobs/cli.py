"""The ``journey`` command: one front door to every entry point.

    journey run [key=value ...]                 the whole journey (tiny preset)
    journey tokenizer train [--config P] [k=v]  train a tokenizer          (ray_jobs.tokenizer)
    journey tokenizer compare SPEC... [out=DIR] compare tokenizers on the same texts
    journey pretrain [--config P] [k=v]         pretrain under Ray Train   (ray_jobs.pretrain)
    journey cpt [--config P] [k=v]              continued pretraining      (ray_jobs.cpt)
    journey import SRC [k=v]                    import a nanoGPT / llm.c / HF checkpoint (ray_jobs.import_ckpt)
    journey finetune [--config P] [k=v]         full / LoRA / QLoRA, DeepSpeed ZeRO (ray_jobs.finetune)
    journey sft [--config P] [k=v]              supervised fine-tuning with TRL     (ray_jobs.sft)
    journey prefs [--config P] [k=v]            preference pairs from the model's own samples (ray_jobs.prefs)
    journey dpo [--config P] [k=v]              DPO with TRL                        (ray_jobs.dpo)
    journey reward [--config P] [k=v]           reward model with TRL               (ray_jobs.reward)
    journey rl [--config P] [k=v]               GRPO / RLOO against the reward model (ray_jobs.rl)
    journey quantize [--config P] [k=v]         INT8/INT4 (engine), GGUF F16/Q8_0/Q4_0 (llama.cpp), compared (ray_jobs.quantize)
    journey eval all|ARTIFACT [k=v]             scorecard of a run / evaluate one artifact (ray_jobs.evaluate)
    journey index [--config P] [k=v]            retrieval index: chunk, embed, Qdrant       (ray_jobs.index)
    journey interpret [attention A|induction A|diff A B] [k=v]  attention, induction heads, stage diffs (ray_jobs.interpret)
    journey up [run=R model=A port=8000 ui_port=7860 ...]  Redis + Ray Serve app + web chat  (services.stack)
    journey chat [model=A]                      terminal chat with the running gateway, over the bus
    journey down                                stop what `journey up` started
    journey submit STAGE [--config P] [k=v] [--address URL] [--no-wait]  run a stage as a Ray job on a cluster (ray_jobs.submit)
    journey experiment vocab-size|lr-schedules|finetune-methods [--config P] [k=v]
    journey runs                                list runs
    journey artifacts [RUN]                     list artifacts with their parents
"""
from __future__ import annotations

import sys

from ray_jobs._args import run_main


def _runs(argv: list[str]) -> int:
    from shared.registry import Registry
    reg = Registry()
    runs = reg.runs()
    if not runs:
        print(f"no runs under {reg.root}")
    for run in runs:
        arts = reg.artifacts(run)
        print(f"{run}: {len(arts)} artifacts ({', '.join(a.stage for a in arts)})")
    return 0


def _artifacts(argv: list[str]) -> int:
    from shared.registry import Registry
    print(Registry().lineage(argv[0] if argv else None))
    return 0


def _compare(argv: list[str]) -> int:
    def job():
        from shared.tokenizer import compare_tokenizers, write_comparison
        specs = [a for a in argv if not a.startswith("out=")]
        out = next((a.split("=", 1)[1] for a in argv if a.startswith("out=")), "runs/tokenizer-compare")
        if not specs:
            raise ValueError("name at least one tokenizer: an HF dir, a .gguf vocab file, or a hub name")
        from pathlib import Path
        Path(out).mkdir(parents=True, exist_ok=True)
        rows = compare_tokenizers(specs)
        paths = write_comparison(rows, out)
        print((Path(out) / "comparison.md").read_text())
        return {"written": {name: str(path) for name, path in paths.items()}}
    return run_main(job)


def _tokenizer(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    from ray_jobs import tokenizer
    return tokenizer.main(argv[1:] if argv and argv[0] == "train" else argv)


def _experiment(argv: list[str]) -> int:
    from ray_jobs import experiments
    return experiments.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from ray_jobs import journey
        return journey.main(rest)
    if command in ("pretrain", "cpt", "import", "finetune", "sft", "prefs", "dpo", "reward", "rl", "quantize", "eval",
                   "index", "interpret"):
        import importlib
        module_name = {"import": "import_ckpt", "eval": "evaluate"}.get(command, command)
        module = importlib.import_module(f"ray_jobs.{module_name}")
        return module.main(rest)
    if command in ("up", "down", "chat"):
        # The CLI is the one front door, so it reaches the serving stack too (ray_jobs themselves never do).
        from services import stack
        return stack.main([command, *rest])
    if command == "submit":
        from ray_jobs import submit
        return submit.main(rest)
    handlers = {"tokenizer": _tokenizer, "experiment": _experiment, "runs": _runs, "artifacts": _artifacts}
    if command not in handlers:
        print(f"journey: error: unknown command {command!r}; see `journey --help`", file=sys.stderr)
        return 2
    return handlers[command](rest)


if __name__ == "__main__":
    sys.exit(main())
