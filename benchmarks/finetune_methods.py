"""Full fine-tuning vs LoRA vs QLoRA at real model sizes: memory, step time, eval loss, side by side.

The same measurement as ``journey experiment finetune-methods`` (each arm is
``finetune_experiment.train_arm``: our SFT trainer, the memory tracker, the step timer, in a fresh
process), driven by ``multiprocessing`` instead of Ray tasks, so it runs on a bare GPU box that has
torch, transformers, peft, trl and bitsandbytes but no Ray cluster. The start model is a randomly
initialised checkpoint of a named shape, so no hub download is needed: the numbers are about
memory and speed (and the eval loss only compares the arms with each other).

    python benchmarks/finetune_methods.py --shape gpt2-124m --tokenizer runs/R/tokenizer
    python benchmarks/finetune_methods.py --shape llama3.1-8b --tokenizer runs/R/tokenizer \\
        --arms qlora-r16,lora-r16 --data builtin:python-code --max-length 2048 --batch-size 4 --steps 6 \\
        --gradient-checkpointing --optim paged_adamw_8bit

Shapes: ``gpt2-124m`` (our GPT-2 preset, the tokenizer's vocabulary) and ``llama3.1-8b`` (Llama
3.1 8B's published config: 32 layers, width 4096, GQA 32/8 heads, MLP 14336, vocab 128256). The
tokenizer only has to cover the ids the data uses; any of our tokenizers (they carry the chat
tokens) works. Prints one row per arm plus each arm's memory and step time as a ratio of the first
arm's, and writes ``finetune_methods.{md,json,png}`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from shared.config import load_config
from shared.model.gpt import GPT
from shared.model.hf import gpt_to_hf
from shared.model.presets import model_config
from shared.training import sft
from shared.training.finetune_experiment import COLUMNS, _chart, _row, arm_config, train_arm
from shared.training.posttrain_config import SFTJobConfig
from shared.training.trl_worker import TrainRows, TrlSpec

# Llama 3.1 8B's config.json values that shape the network (the rest are transformers' defaults).
LLAMA31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                  rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def build_model(shape: str, tokenizer_dir: str, out: Path) -> Path:
    """A randomly initialised HF checkpoint of ``shape`` with the tokenizer, written to ``out``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    if shape == "gpt2-124m":
        model = gpt_to_hf(GPT(model_config("gpt2-124m", vocab_size=len(tokenizer))))
    elif shape == "llama3.1-8b":
        # Initialised on the GPU in bf16 (seconds, 16 GB) rather than in fp32 on the CPU (minutes, 32 GB).
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            model = LlamaForCausalLM._from_config(LlamaConfig(**LLAMA31_8B), dtype=torch.bfloat16)
    else:
        raise SystemExit(f"unknown --shape {shape!r}; choose gpt2-124m or llama3.1-8b")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def job_config(args, model_path: Path) -> SFTJobConfig:
    """The SFT job every arm shares: the sft preset plus these flags."""
    use_gpu = torch.cuda.is_available()
    base = {"run": "bench", "stage": "finetune-methods", "init_from": str(model_path), "data": args.data,
            "eval_examples": args.eval_examples, "packing": args.packing, "use_gpu": use_gpu,
            "cpus_per_worker": args.threads, "max_examples": args.max_examples,
            "precision": "bf16" if use_gpu else "fp32",
            "method": {"gradient_checkpointing": args.gradient_checkpointing},
            "train": {"max_steps": args.steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                      "max_length": args.max_length, "lr": args.lr, "optim": args.optim,
                      "eval_every": args.steps, "log_every": max(1, args.steps // 5)}}
    return load_config(SFTJobConfig, "sft", args.preset, base=base)


def _arm_in_process(spec: TrlSpec, queue) -> None:
    try:
        queue.put(train_arm(spec))
    except Exception as exc:  # an arm that fails (out of memory, say) is a row, not the end of the benchmark
        queue.put({"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})


def run_arm(spec: TrlSpec) -> dict[str, Any]:
    """``train_arm`` in a fresh spawned process: each arm starts with clean memory and CUDA state."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_arm_in_process, args=(spec, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gpt2-124m", help="gpt2-124m | llama3.1-8b (random init)")
    ap.add_argument("--model", help="an HF checkpoint dir to start from instead of --shape")
    ap.add_argument("--tokenizer", help="tokenizer dir for --shape (any of ours: it has the chat tokens)")
    ap.add_argument("--arms", default="full,lora-r8,lora-r16,lora-r32,qlora-r16")
    ap.add_argument("--preset", default="tiny", help="sft preset the shared settings start from")
    ap.add_argument("--data", default="builtin:instructions")
    ap.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--optim", default="adamw_torch", help="HF optimizer name (paged_adamw_8bit: the QLoRA preset's)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/_bench/finetune_methods")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        if args.model:
            model_path = Path(args.model)
        else:
            if not args.tokenizer:
                raise SystemExit("--shape needs --tokenizer DIR (e.g. runs/<run>/tokenizer after `journey run`)")
            model_path = build_model(args.shape, args.tokenizer, Path(work) / "model")
        print(f"start model {model_path} ready in {time.perf_counter() - t0:.0f} s", flush=True)
        cfg = job_config(args, model_path)
        train_rows, eval_rows, _ = sft.training_rows(cfg)
        rows = []
        for arm in args.arms.split(","):
            spec = TrlSpec(algorithm=sft.ALGORITHM, config=arm_config(cfg, arm), model_path=str(model_path),
                           rows=TrainRows(train_rows, eval_rows))
            t1 = time.perf_counter()
            result = run_arm(spec)
            rows.append(_row(arm, result))
            print(f"{arm}: {result.get('status')} in {time.perf_counter() - t1:.0f} s "
                  + json.dumps({k: rows[-1][k] for k in COLUMNS[2:]}, default=str), flush=True)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    ran = [r for r in rows if r["status"] == "ok"]
    first = ran[0] if ran else None
    lines = [f"finetune methods on {device}: shape {args.model or args.shape}, {args.steps} steps of "
             f"{args.batch_size}x{args.max_length} tokens (accum {args.grad_accum}), data {args.data}", "",
             "| " + " | ".join(COLUMNS + ["memory vs " + (first["method"] if first else "-"),
                                          "step time vs " + (first["method"] if first else "-")]) + " |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        ratios = ["", ""]
        if first and r["status"] == "ok":
            ratios = [f"{r['peak_memory_mb'] / first['peak_memory_mb']:.2f}x", f"{r['step_s'] / first['step_s']:.2f}x"]
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells + ratios) + " |")
    table = "\n".join(lines)
    print(table)
    (out / "finetune_methods.md").write_text(table + "\n")
    (out / "finetune_methods.json").write_text(json.dumps({"device": device, "args": vars(args), "rows": rows},
                                                          indent=1, default=str))
    _chart(rows, cfg).savefig(out / "finetune_methods.png", dpi=110)


if __name__ == "__main__":
    main()
