"""Speed measurements of generation, shared by ``benchmarks/generation.py`` and the quantize stage.

- ``copy_bandwidth``: the memory bandwidth a decode step can at best use (a large tensor copy/sum).
- ``weight_read_rate``: how many times a second a plain read gets through the model's linear weights,
  matrix by matrix as a decode step meets them: how fast those weights stream here and now (a
  reference beside the copy bound, which one large copy sets; not a hard ceiling, our GEMVs can
  stream a little faster than torch's sum).
- ``engine_single`` / ``hf_single``: one request at batch 1: TTFT, prefill tokens/s, time per output
  token and decode tokens/s, for our engine (its own per-request metrics) and HF ``generate()``
  (timed from outside: ``max_new_tokens=1`` is TTFT, the rest is decode). Best of ``repeats``:
  a shared machine only ever slows a run down.
- ``engine_concurrent``: aggregate tokens/s with several requests submitted at once.
- ``request_timeline``: wall-clock time of each token of one streamed request (the prefill block,
  then the decode steps), for the prefill-vs-decode plot.
"""
from __future__ import annotations

import time

import torch

from shared.engine.engine import Engine
from shared.engine.params import SamplingParams


def copy_bandwidth(mib: int = 512, repeats: int = 5) -> tuple[float, float]:
    """``(copy, read)`` bytes per second over a ``mib`` MiB float tensor, best runs.

    copy: ``dst.copy_(src)``, counting bytes read + written (the STREAM "Copy" convention); read:
    ``src.sum()``, read only, which is what streaming weights through a matrix-vector product does.
    """
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages first
    nbytes = src.numel() * 4
    copy = 2 * nbytes / min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    read = nbytes / min(_timed(src.sum) for _ in range(repeats))
    return copy, read


def weight_read_rate(model, repeats: int = 3) -> float:
    """Passes per second of ``torch.sum`` over every tensor of ``model``'s linear layers, in the order a
    decode step reads them (best of ``repeats``): decode tokens/s if a step did nothing but read its
    weights. Why beside the copy bound: a step reads ~50 separate matrices, each a new stream that the
    memory system ramps up on, and such a pass can fall well short of one large copy's rate (see
    benchmarks/generation.py, which reports both).
    """
    tensors = [t for _, layer in model.linears() for t in (*layer.parameters(), *layer.buffers())
               if t.layout == torch.strided]  # oneDNN's opaque packed weights have no sum
    return 1.0 / min(_timed(lambda: [t.sum() for t in tensors]) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def engine_single(engine: Engine, prompt: list[int], new_tokens: int, repeats: int) -> tuple[dict, list[int]]:
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    engine.submit(prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)).result()  # warm-up
    runs = [engine.submit(prompt, params).result() for _ in range(repeats)]
    best = max(runs, key=lambda o: o.metrics.decode_tokens_per_s)
    m = best.metrics
    return {"ttft_s": min(o.metrics.ttft_s for o in runs),
            "prefill_tokens_per_s": max(o.metrics.prefill_tokens_per_s for o in runs),
            "tpot_s": m.tpot_s, "decode_tokens_per_s": m.decode_tokens_per_s}, best.token_ids


@torch.inference_mode()
def hf_single(hf, prompt: list[int], new_tokens: int, repeats: int) -> tuple[dict, list[int]]:
    ids = torch.tensor([prompt])

    def run(n: int):
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0, use_cache=True)
    run(4)  # warm-up
    ttft = min(_timed(lambda: run(1)) for _ in range(repeats))
    total = min(_timed(lambda: run(new_tokens)) for _ in range(repeats))
    decode = total - ttft
    return {"ttft_s": ttft, "prefill_tokens_per_s": len(prompt) / ttft, "tpot_s": decode / (new_tokens - 1),
            "decode_tokens_per_s": (new_tokens - 1) / decode}, run(new_tokens)[0, len(prompt):].tolist()


def engine_concurrent(engine: Engine, prompts: list[list[int]], new_tokens: int, repeats: int) -> dict:
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        outs = engine.generate(prompts, params)
        wall = time.perf_counter() - start
        if best is None or wall < best[0]:
            best = (wall, outs)
    wall, outs = best
    tokens = sum(len(o.token_ids) for o in outs)
    return {"requests": len(prompts), "wall_s": wall, "aggregate_tokens_per_s": tokens / wall,
            "mean_ttft_s": sum(o.metrics.ttft_s for o in outs) / len(outs),
            "mean_decode_tokens_per_s": sum(o.metrics.decode_tokens_per_s for o in outs) / len(outs)}


def request_timeline(engine: Engine, prompt: list[int], new_tokens: int) -> dict:
    """``{"prompt_tokens", "token_times_s"}``: seconds from submit to each streamed token of one greedy request."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    engine.submit(prompt, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)).result()  # warm-up
    start = time.perf_counter()
    times = []
    for delta in engine.submit(prompt, params):
        times.extend([time.perf_counter() - start] * len(delta.token_ids))
    return {"prompt_tokens": len(prompt), "token_times_s": times}
