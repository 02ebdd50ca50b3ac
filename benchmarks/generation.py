"""Our inference engine vs Hugging Face ``generate()``: FP32 decode speed, TTFT, prefill, concurrency, bandwidth bound.

Same weights in both (a gpt2-124m-shaped random model by default, or ``--checkpoint DIR``), same
process, same threads. Batch 1, ``--prompt-tokens`` prompt, ``--new-tokens`` greedy tokens (no
early stop):
- engine: TTFT, prefill tokens/s and decode tokens/s from its per-request metrics;
- HF: ``generate(max_new_tokens=1)`` timed as TTFT (prefill + first token), the full run minus that
  as decode time; decode tokens/s = (new_tokens - 1) / decode time; prefill tokens/s = prompt / TTFT.
Both greedy runs must give the same tokens (checked and reported).
Then the engine's aggregate tokens/s with 1, 4, 16 concurrent requests (all submitted at once),
and the memory-bandwidth bound: copy bandwidth of a large tensor copy (bytes read + written per
second), bytes the engine reads per decode token (its weights), bound = bandwidth / bytes; the
read-only bandwidth (a large sum) and its bound are reported beside it. This VM's bandwidth drifts
by up to 2x within a minute, so the copy bandwidth is read before and after each FP32 decode run;
each run's fraction of the bound uses the two readings beside it, and the median run is reported
(other rows use the mean of all readings). With each reading also goes a plain read of the
engine's weights (``torch.sum`` of each matrix in a decode step's order, ``weight_read_rate``):
how fast those ~50 matrices stream one by one, as a fraction of the copy bound, and our FP32
decode as a fraction of that (a reference, not a ceiling: our GEMVs can stream a little faster than
torch's sum; and for a model whose weights fit in the caches it measures call overhead, not memory).

Each measurement is the best of ``--repeats`` runs (a shared machine only ever slows a run down).
Results go to ``--out`` as ``generation.json`` and ``generation.md``.

    python benchmarks/generation.py [--checkpoint DIR | --model PRESET] [--threads 2] [--new-tokens 128] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from shared.engine import Engine, EngineConfig
from shared.engine.measure import copy_bandwidth, engine_concurrent, engine_single, hf_single, weight_read_rate
from shared.model.gpt import GPT
from shared.model.hf import gpt_to_hf, load_gpt
from shared.model.presets import model_config


def build_model(args) -> GPT:
    if args.checkpoint:
        return load_gpt(args.checkpoint)
    torch.manual_seed(0)
    return GPT(model_config(args.model)).eval()


def variant_rows(gpt: GPT, variants: list[str], prompt: list[int], args, fp32_bytes: int) -> dict[str, dict]:
    """Batch-1 speed of each variant on the same weights and prompt: engine BF16/INT8/INT4, llama.cpp GGUF files."""
    import tempfile

    from shared.quantize.stage import llama_speed
    rows: dict[str, dict] = {}
    engine_variants = [v for v in variants if not v.startswith("gguf-")]
    for variant in engine_variants:
        if variant == "bf16":
            engine = Engine(gpt, None, EngineConfig(max_batch_size=1, dtype="bfloat16",
                                                    max_seq_len=min(gpt.config.block_size, len(prompt) + args.new_tokens)))
        else:
            from shared.quant.engine_quant import QuantSpec, build_quantized_engine_model
            model, _ = build_quantized_engine_model(gpt, QuantSpec(scheme=variant))
            engine = Engine(model, None, EngineConfig(max_batch_size=1, max_seq_len=min(
                gpt.config.block_size, len(prompt) + args.new_tokens)))
        row, _ = engine_single(engine, prompt, args.new_tokens, args.repeats)
        rows[f"engine-{variant}"] = {**row, "bytes_per_decode_token": engine.model.decode_bytes_per_token()}
        del engine
    gguf_variants = [v for v in variants if v.startswith("gguf-")]
    if gguf_variants:
        from shared.model.hf import save_hf_checkpoint
        from shared.quant.gguf_export import export_gguf
        from shared.quant.llama_cpp import load_llama, quantize_gguf
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = save_hf_checkpoint(gpt, Path(tmp) / "hf", tokenizer_dir=benchmark_tokenizer(Path(tmp)))
            source = export_gguf(hf_dir, Path(tmp) / "model-f32.gguf", dtype="f32")
            for variant in gguf_variants:
                qtype = variant.split("-", 1)[1]
                path = source if qtype == "f32" else (export_gguf(hf_dir, Path(tmp) / "model-f16.gguf", dtype="f16")
                                                      if qtype == "f16" else quantize_gguf(source, Path(tmp) / f"{qtype}.gguf", qtype))
                llama = load_llama(path, n_threads=args.threads)
                cfg = argparse.Namespace(new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads)
                row = llama_speed(llama, prompt, cfg)
                # Bytes per token: the file's weights (the tied embedding is read once as the output matrix).
                rows[f"llama.cpp-{qtype}"] = {**row, "bytes_per_decode_token": path.stat().st_size}
                del llama
    return rows


def benchmark_tokenizer(tmp: Path) -> Path:
    """A small byte-level BPE tokenizer of ours for the GGUF file (rows past its vocab are exported as padding)."""
    from shared.tokenizer.train import train_tokenizer
    train_tokenizer([Path(__file__).read_text(encoding="utf-8")] * 4, vocab_size=512, out_dir=tmp / "tok")
    return tmp / "tok"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="HF GPT-2 checkpoint dir (default: random weights of --model's shape)")
    ap.add_argument("--model", default="gpt2-124m", help="model preset whose shape the random weights take")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated request counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto", choices=("auto", "dense", "onednn", "gemv"))
    ap.add_argument("--skip-hf", action="store_true", help="engine only")
    ap.add_argument("--variants", default="bf16,int8,int4,gguf-f32,gguf-f16,gguf-q8_0,gguf-q4_0",
                    help="other precisions / backends at batch 1: bf16, int8, int4, int8-dynamic (our engine), "
                         "gguf-f32, gguf-f16, gguf-q8_0, gguf-q4_0, gguf-q4_k (llama.cpp); empty for none")
    ap.add_argument("--out", help="directory for generation.json and generation.md")
    args = ap.parse_args()
    if args.repeats < 1 or args.new_tokens < 2:
        ap.error("--repeats must be at least 1 and --new-tokens at least 2 (decode speed needs a step after the first token)")
    torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    if not args.checkpoint:
        try:
            model_config(args.model)
        except ValueError as e:
            ap.error(str(e))

    gpt = build_model(args)
    cfg = gpt.config
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (args.prompt_tokens,), generator=g).tolist()
               for _ in range(max(levels))]
    max_seq_len = min(cfg.block_size, args.prompt_tokens + args.new_tokens)
    engine = Engine(gpt, None, EngineConfig(max_batch_size=max(levels), max_seq_len=max_seq_len,
                                            linear_backend=args.backend))
    hf = None if args.skip_hf else gpt_to_hf(gpt)

    result = {"model": args.checkpoint or f"random {args.model}", "threads": args.threads, "dtype": "float32",
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "linear_backend": engine.model.lm_head.__class__.__name__, "cpu_count": os.cpu_count(),
              "load_avg_at_start": os.getloadavg()[0]}
    # This VM's bandwidth drifts by up to 2x within a minute: each FP32 decode run is bounded by the mean of
    # the readings taken right before and right after it, and the fraction reported is the median over runs.
    per_token = engine.model.decode_bytes_per_token()
    readings, reads, runs = [copy_bandwidth()], [weight_read_rate(engine.model)], []
    for _ in range(args.repeats):
        runs.append(engine_single(engine, prompts[0], args.new_tokens, 1))
        readings.append(copy_bandwidth())
        reads.append(weight_read_rate(engine.model))
    result["engine"], ours = max(runs, key=lambda run: run[0]["decode_tokens_per_s"])
    fractions = sorted(run["decode_tokens_per_s"] * per_token / ((before[0] + after[0]) / 2)
                       for (run, _), before, after in zip(runs, readings, readings[1:]))
    # the plain read of the weights against the copy bound, and our decode against the plain read
    read_fractions = sorted(rate * per_token / copy for rate, (copy, _) in zip(reads, readings))
    of_read = sorted(run["decode_tokens_per_s"] / ((before + after) / 2)
                     for (run, _), before, after in zip(runs, reads, reads[1:]))
    bandwidth = sum(r[0] for r in readings) / len(readings)
    read_bandwidth = sum(r[1] for r in readings) / len(readings)
    bound = bandwidth / per_token
    result["bandwidth"] = {"copy_GBps": bandwidth / 1e9, "read_GBps": read_bandwidth / 1e9,
                           "copy_GBps_readings": [r[0] / 1e9 for r in readings],
                           "bytes_per_decode_token": per_token, "bound_decode_tokens_per_s": bound,
                           "read_bound_decode_tokens_per_s": read_bandwidth / per_token}
    result["engine"]["fraction_of_bound"] = fractions[len(fractions) // 2]
    result["engine"]["fractions_of_bound"] = fractions
    result["weight_read"] = {"tokens_per_s_readings": reads, "fractions_of_bound": read_fractions,
                             "fraction_of_bound": read_fractions[len(read_fractions) // 2],
                             "engine_fractions": of_read, "engine_fraction": of_read[len(of_read) // 2]}
    if hf is not None:
        result["hf_generate"], theirs = hf_single(hf, prompts[0], args.new_tokens, args.repeats)
        result["hf_generate"]["fraction_of_bound"] = result["hf_generate"]["decode_tokens_per_s"] / bound
        result["same_greedy_tokens"] = ours == theirs
        result["decode_speedup_vs_hf"] = (result["engine"]["decode_tokens_per_s"]
                                          / result["hf_generate"]["decode_tokens_per_s"])
        result["ttft_ratio_hf_over_engine"] = result["hf_generate"]["ttft_s"] / result["engine"]["ttft_s"]
    variants = [v for v in args.variants.split(",") if v]
    if variants:
        result["variants"] = variant_rows(gpt, variants, prompts[0], args, per_token)
        for row in result["variants"].values():
            row["fraction_of_bound"] = row["decode_tokens_per_s"] / (bandwidth / row["bytes_per_decode_token"])
            if "hf_generate" in result:
                row["decode_speedup_vs_hf"] = row["decode_tokens_per_s"] / result["hf_generate"]["decode_tokens_per_s"]
    del gpt
    result["concurrency"] = [engine_concurrent(engine, prompts[:c], args.new_tokens, args.repeats) for c in levels]
    base = result["concurrency"][0]["aggregate_tokens_per_s"]
    for row in result["concurrency"]:
        row["vs_first_level"] = row["aggregate_tokens_per_s"] / base
    result["load_avg_at_end"] = os.getloadavg()[0]
    text = markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "generation.md").write_text(text)


def markdown(r: dict) -> str:
    bw = r["bandwidth"]
    lines = [f"# Generation benchmark: {r['model']}, FP32, {r['threads']} threads",
             "", f"Prompt {r['prompt_tokens']} tokens, {r['new_tokens']} new tokens, batch 1, best of {r['repeats']}; "
             f"engine linear layers: {r['linear_backend']}; load average {r['load_avg_at_start']:.2f} at start, "
             f"{r['load_avg_at_end']:.2f} at end.", "",
             f"Copy bandwidth {bw['copy_GBps']:.1f} GB/s (read + write; mean of readings "
             f"{', '.join(f'{g:.1f}' for g in bw['copy_GBps_readings'])} taken between our FP32 decode runs, whose "
             "fraction of the bound is the median over runs, each against the readings beside it); the engine reads "
             f"{bw['bytes_per_decode_token'] / 1e6:.0f} MB per decode token: bound "
             f"{bw['bound_decode_tokens_per_s']:.1f} tokens/s. (Read-only bandwidth {bw['read_GBps']:.1f} GB/s: bound "
             f"{bw['read_bound_decode_tokens_per_s']:.1f} tokens/s.)", "",
             "| | TTFT (ms) | prefill tok/s | decode tok/s | ms/token | of bound |", "|---|---|---|---|---|---|"]
    for name in ("engine", "hf_generate"):
        if name in r:
            m = r[name]
            lines.append(f"| {name} | {m['ttft_s'] * 1e3:.1f} | {m['prefill_tokens_per_s']:.0f} | "
                         f"{m['decode_tokens_per_s']:.1f} | {m['tpot_s'] * 1e3:.2f} | {m['fraction_of_bound']:.0%} |")
    if r["engine"].get("fractions_of_bound"):
        lines += ["", "Our FP32 decode runs, each against the bandwidth read beside it: "
                  + ", ".join(f"{f:.0%}" for f in r["engine"]["fractions_of_bound"]) + " of the bound (median in the table)."]
    wr = r["weight_read"]
    lines += ["", "A plain read of the same weights (`torch.sum` of each matrix, in a decode step's order), read beside "
              "each copy reading: " + ", ".join(f"{t:.1f}" for t in wr["tokens_per_s_readings"]) + " passes/s, "
              + ", ".join(f"{f:.0%}" for f in wr["fractions_of_bound"]) + " of the copy bound (median "
              f"**{wr['fraction_of_bound']:.0%}**): how fast these matrices stream here and now, one by one. "
              "Our FP32 decode runs against the reads beside them: " + ", ".join(f"{f:.0%}" for f in wr["engine_fractions"])
              + f" (median **{wr['engine_fraction']:.0%}**)."]
    if "hf_generate" in r:
        lines += ["", f"Decode speed-up vs HF generate: **{r['decode_speedup_vs_hf']:.2f}x**; TTFT ratio (HF / engine) "
                  f"{r['ttft_ratio_hf_over_engine']:.2f}x; identical greedy tokens: {r['same_greedy_tokens']}."]
    if r.get("variants"):
        lines += ["", "Other precisions and backends, batch 1 (bytes per token = the weights each decode step reads):", "",
                  "| variant | TTFT (ms) | prefill tok/s | decode tok/s | vs HF | MB per token | of bound |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in r["variants"].items():
            lines.append(f"| {name} | {m['ttft_s'] * 1e3:.1f} | {m['prefill_tokens_per_s']:.0f} | "
                         f"{m['decode_tokens_per_s']:.1f} | {m.get('decode_speedup_vs_hf', float('nan')):.2f}x | "
                         f"{m['bytes_per_decode_token'] / 1e6:.0f} | {m['fraction_of_bound']:.0%} |")
    lines += ["", "| concurrent requests | aggregate tok/s | vs first | mean TTFT (ms) | mean decode tok/s/request |",
              "|---|---|---|---|---|"]
    for c in r["concurrency"]:
        lines.append(f"| {c['requests']} | {c['aggregate_tokens_per_s']:.1f} | {c['vs_first_level']:.2f}x | "
                     f"{c['mean_ttft_s'] * 1e3:.0f} | {c['mean_decode_tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
