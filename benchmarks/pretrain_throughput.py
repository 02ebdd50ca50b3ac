"""Our pretraining step vs a plain single-process FP32 PyTorch loop over HF ``GPT2LMHeadModel``.

Same architecture, same initial weights, same batches: 6 layers, 6 heads, width 384, context 256,
vocab 8192, batch 8 (the foundation issue's shape). "Ours" is the trainer's default for this
hardware: our ``GPT`` class with fused SDPA attention, bf16 autocast where the CPU/GPU supports it,
the foreach/fused AdamW, and ``torch.compile`` when ``--compile`` is given.

Prints tokens/s of each and the ratio, plus the loss of both runs at every step so you can see the
curves agree (bf16 autocast vs FP32, from identical weights, on a learnable synthetic task).

    python benchmarks/pretrain_throughput.py [--steps 20] [--threads 2] [--compile]
    python benchmarks/pretrain_throughput.py --device cuda --preset gpt2-124m --batch 16 --compile

On a GPU both loops run on it and the line for ours adds MFU (model FLOPs per token, 6N plus
attention, times tokens/s, over the card's dense bf16 peak), the figure the pretraining loop logs.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2LMHeadModel

from shared.model.gpt import GPT
from shared.model.hf import gpt_to_hf
from shared.model.presets import model_config
from shared.training.hardware import autocast, peak_flops, resolve_precision
from shared.training.optim import build_adamw

def batches(n: int, vocab: int, block: int, batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """A learnable stream: short random 'phrases' repeated, so the loss really falls in a few steps."""
    g = torch.Generator().manual_seed(seed)
    phrases = torch.randint(0, vocab, (64, 16), generator=g)
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(phrases), (batch, block // 16 + 1), generator=g)
        out.append(phrases[idx].reshape(batch, -1)[:, : block + 1])
    return out


def run(step_fn, data: list[torch.Tensor], warmup: int, device: torch.device) -> tuple[float, list[float]]:
    losses = []
    for i, seq in enumerate(data):
        if i == warmup:
            t0 = time.perf_counter()  # loss.item() in each step synchronizes, so GPU work is inside the span
        seq = seq.to(device)
        losses.append(step_fn(seq[:, :-1], seq[:, 1:]))
    tokens = (len(data) - warmup) * data[0][:, :-1].numel()
    return tokens / (time.perf_counter() - t0), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile our model (costs ~30-60 s up front)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--preset", default="bench", help="model preset (bench: the issue's shape; gpt2-124m, ...)")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = model_config(args.preset)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = GPT(cfg)
    hf: GPT2LMHeadModel = gpt_to_hf(ours).to(device)  # identical initial weights
    ours.to(device)
    data = batches(args.steps + args.warmup, cfg.vocab_size, cfg.block_size, args.batch)
    precision = resolve_precision("auto", device)

    hf_opt = torch.optim.AdamW(hf.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def hf_step(x, y):
        loss = hf(input_ids=x, labels=x).loss  # HF shifts labels itself: targets x[1:] (T-1 of our T)
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return loss.item()

    model = torch.compile(ours) if args.compile else ours
    opt = build_adamw(ours, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def our_step(x, y):
        with autocast(precision, device):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    hf_tps, hf_losses = run(hf_step, data, args.warmup, device)
    our_tps, our_losses = run(our_step, data, args.warmup, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"config: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context {cfg.block_size}, "
          f"vocab {cfg.vocab_size}, batch {args.batch}, {where}")
    peak = peak_flops(device)
    mfu = f"   MFU {ours.flops_per_token() * our_tps / peak:.1%}" if peak else ""
    print(f"HF GPT2LMHeadModel FP32 loop : {hf_tps:8.0f} tok/s")
    print(f"ours ({precision}{', compiled' if args.compile else ''})  : {our_tps:8.0f} tok/s{mfu}")
    print(f"ratio ours / HF              : {our_tps / hf_tps:8.2f}x")
    print("step  loss(HF fp32)  loss(ours)")
    for i in range(0, len(data), max(1, len(data) // 8)):
        print(f"{i:4d}  {hf_losses[i]:12.4f}  {our_losses[i]:10.4f}")
    final_gap = abs(sum(hf_losses[-3:]) - sum(our_losses[-3:])) / 3
    print(f"mean |loss gap| over the last 3 steps: {final_gap:.4f} nats")


if __name__ == "__main__":
    main()
