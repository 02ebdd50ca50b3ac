"""Where one batch-1 decode step of our engine spends its time, per precision.

For each precision it splits the time per output token (TPOT, engine.submit, greedy) into:
- the forward pass as the engine runs it (one C++ call per step when every layer is one our kernels
  run: ``shared.engine.native.decode_model``), and the engine around it (scheduling, sampling,
  streaming, bookkeeping);
- and, through the op-by-op Python forward of the same step: the linear layers alone (every
  weight matrix applied to one row, as the step applies them; the bytes they stream are the
  memory-bandwidth bound of decode) and the rest (embeddings, LayerNorms, attention over the KV
  cache, GELU, residual adds, Python between the ops). Python forward minus forward is what the
  fused step saves.
Both forwards run the request's decode positions in turn (the attention grows with them), so
TPOT - forward is the engine's own work. It prints the linears' effective GB/s next to the read
bandwidth (a large ``sum``, read right before): how far the GEMVs are from the limit, and how much
the other parts add on top. The peer is the same engine's own parts. This VM's memory bandwidth
drifts, so each precision runs ``--rounds`` rounds of all the timings back to back and reports the
median of each column (the engine column is the median of each round's TPOT - forward).

    python benchmarks/decode_breakdown.py [--precisions fp32,fp32-gemv,int8,int4] [--threads 2] [--new-tokens 128] [--rounds 5] [--model gpt2-124m]

``fp32-<backend>`` picks the engine's linear backend for FP32 (onednn, dense, gemv; plain fp32 is "auto",
i.e. gemv where our kernels build); ``int4-f32`` is INT4 with fp32 activations (compute_dtype float32).

Random weights in the GPT-2 124M shape (``--model`` for another preset's shape), a 32-token prompt.
"""
from __future__ import annotations

import argparse
import time

import torch

from shared.engine import Engine, EngineConfig, SamplingParams
from shared.engine.cache import StepBatch
from shared.engine.measure import copy_bandwidth
from shared.engine.model import layer_nbytes
from shared.model.gpt import GPT
from shared.model.presets import model_config


def median_s(fn, repeats: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def per_step_s(model, cache, first: int, steps: int) -> float:
    """Mean seconds of ``model``'s batch-1 decode forward at positions ``first..first+steps-1`` in turn, as
    the engine's steps run them (the attention grows with the position), the engine's own work left out."""
    batches = [StepBatch.build([(7, pos)], [], [0]) for pos in range(first, first + steps)]
    start = time.perf_counter()
    for batch in batches:
        model(batch, cache)
    return (time.perf_counter() - start) / steps


def build_engine(gpt: GPT, precision: str, max_seq_len: int) -> Engine:
    backend = precision.split("-", 1)[1] if precision.startswith("fp32-") else "auto"
    config = EngineConfig(max_batch_size=1, max_seq_len=max_seq_len, linear_backend=backend)
    if precision in ("int8", "int4", "int4-f32"):
        from shared.quant.engine_quant import QuantSpec, build_quantized_engine_model
        # int4-f32: compute_dtype float32, so the GEMV keeps fp32 activations (int4 rounds them to int8 on VNNI CPUs)
        dtype = "float32" if precision == "int4-f32" else "bfloat16"
        model, _ = build_quantized_engine_model(gpt, QuantSpec(scheme=precision[:4], compute_dtype=dtype))
        return Engine(model, None, config)
    return Engine(gpt, None, config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", default="fp32,fp32-gemv,int8,int4")
    ap.add_argument("--model", default="gpt2-124m", help="model preset (random weights of its shape)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the four timings; medians reported")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.rounds < 1 or args.new_tokens < 2:
        ap.error("--rounds must be at least 1 and --new-tokens at least 2 (a decode step after the first token)")
    try:
        config = model_config(args.model)
    except ValueError as e:
        ap.error(str(e))
    gpt = GPT(config).eval()
    if 32 + args.new_tokens + 8 > gpt.config.block_size:
        ap.error(f"--new-tokens {args.new_tokens} does not fit {args.model}'s {gpt.config.block_size}-token context "
                 f"after the 32-token prompt; use at most {gpt.config.block_size - 40}")
    prompt = list(range(100, 132))
    copy, read = copy_bandwidth()
    print(f"memory bandwidth: copy {copy / 1e9:.1f} GB/s (read + written), read {read / 1e9:.1f} GB/s; "
          f"{args.threads} threads")
    header = ("precision", "TPOT ms", "forward ms", "engine ms", "Python forward ms", "linears ms",
              "rest of Python forward ms", "linears GB/s", "linears / read bandwidth", "MB/token")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for precision in args.precisions.split(","):
        engine = build_engine(gpt, precision, len(prompt) + args.new_tokens + 8)
        params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        engine.submit(prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)).result()
        model, cache = engine.model, engine.cache
        linears = [m for _, m in model.linears()]
        rows = {m.in_features: torch.randn(1, m.in_features) for m in linears}
        nbytes = sum(layer_nbytes(m) for m in linears)
        # Rounds of all four timings back to back, then the median of each (and of TPOT - forward): this
        # VM's bandwidth drifts, and parts timed minutes apart would not add up.
        rounds = []
        for _ in range(args.rounds):
            _, read = copy_bandwidth(repeats=3)
            tpot = engine.submit(prompt, params).result().metrics.tpot_s
            with torch.inference_mode():
                forward = per_step_s(model, cache, len(prompt), args.new_tokens - 1)  # fused where it can be
                fused, model._fused = model._fused, None
                python = per_step_s(model, cache, len(prompt), args.new_tokens - 1)  # op by op, for the split
                model._fused = fused
                t_linears = median_s(lambda: [m(rows[m.in_features]) for m in linears], repeats=10)
            rounds.append((tpot, forward, tpot - forward, python, t_linears, python - t_linears,
                           nbytes / t_linears / read))
        tpot, t_forward, t_engine, t_python, t_linears, t_rest, of_read = (sorted(col)[len(col) // 2]
                                                                            for col in zip(*rounds))
        cells = (precision, f"{tpot * 1e3:.2f}", f"{t_forward * 1e3:.2f}", f"{t_engine * 1e3:.2f}",
                 f"{t_python * 1e3:.2f}", f"{t_linears * 1e3:.2f}", f"{t_rest * 1e3:.2f}",
                 f"{nbytes / t_linears / 1e9:.1f}", f"{of_read:.0%}", f"{nbytes / 1e6:.0f}")
        print("| " + " | ".join(cells) + " |", flush=True)
        del engine

if __name__ == "__main__":
    main()
