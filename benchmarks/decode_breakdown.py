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
It prints the linears' effective GB/s next to the measured read bandwidth: how far the GEMVs are from
the limit, and how much the other two parts add on top. The peer is the same engine's own parts.

    python benchmarks/decode_breakdown.py [--precisions fp32,fp32-gemv,int8,int4] [--threads 2] [--new-tokens 128]

``fp32-<backend>`` picks the engine's linear backend for FP32 (onednn, dense, gemv; plain fp32 is "auto",
i.e. gemv where our kernels build); ``int4-f32`` is INT4 with fp32 activations (compute_dtype float32).

Random weights in the GPT-2 124M shape, a 32-token prompt.
"""
from __future__ import annotations

import argparse
import time

import torch

from shared.engine import Engine, EngineConfig, SamplingParams
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


def decode_batch(engine: Engine, prompt: list[int]):
    """A batch-1 decode ``StepBatch`` and its cache, as the engine's scheduler builds them."""
    from shared.engine import model as engine_model
    seen = {}
    forward = engine_model.EngineModel.forward

    def spy(self, batch, cache):
        if batch.n_decode == 1 and not batch.chunks:
            seen["step"] = (batch, cache)
        return forward(self, batch, cache)

    engine_model.EngineModel.forward = spy
    try:
        engine.submit(prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)).result()
    finally:
        engine_model.EngineModel.forward = forward
    return seen["step"]


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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gpt = GPT(model_config("gpt2-124m")).eval()
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
        tpot = min(engine.submit(prompt, params).result().metrics.tpot_s for _ in range(3))
        model = engine.model
        linears = [m for _, m in model.linears()]
        rows = {m.in_features: torch.randn(1, m.in_features) for m in linears}
        batch, cache = decode_batch(engine, prompt)
        with torch.inference_mode():
            t_linears = median_s(lambda: [m(rows[m.in_features]) for m in linears])
            t_forward = median_s(lambda: model(batch, cache))  # as the engine runs it (fused when possible)
            fused, model._fused = model._fused, None
            t_python = median_s(lambda: model(batch, cache))  # the op-by-op Python forward, for the split
            model._fused = fused
        nbytes = sum(layer_nbytes(m) for m in linears)
        cells = (precision, f"{tpot * 1e3:.2f}", f"{t_forward * 1e3:.2f}", f"{(tpot - t_forward) * 1e3:.2f}",
                 f"{t_python * 1e3:.2f}", f"{t_linears * 1e3:.2f}", f"{(t_python - t_linears) * 1e3:.2f}",
                 f"{nbytes / t_linears / 1e9:.1f}", f"{nbytes / t_linears / read:.0%}", f"{nbytes / 1e6:.0f}")
        print("| " + " | ".join(cells) + " |", flush=True)
        del engine


if __name__ == "__main__":
    main()
