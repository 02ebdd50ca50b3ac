"""The quantize stage's report: the variants side by side, and prefill vs decode explained with the numbers.

``write_report(result, out_dir)`` writes ``quantize.json`` (everything measured), ``quantize.md``
(the table, then a few sentences on prefill vs decode that quote this run's figures),
``variants.png`` (decode tokens/s, size and perplexity delta per variant), ``prefill_vs_decode.png``
(one request's timeline: the prompt processed in one parallel block, then one token per step) and
``throughput_vs_batch.png`` (aggregate tokens/s against concurrent requests, per engine variant).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    levels = sorted({c for r in rows.values() for c in (r.get("concurrency") or {})}, key=int)
    head = ["variant", "runtime", "size (MB)", "TTFT (ms)", "prefill tok/s", "decode tok/s", "vs HF",
            *[f"{c} req tok/s" for c in levels], "ppl", "Δppl vs FP32", "top-1 agree", "top-1 agree (decode)"]
    hf = rows.get("hf-generate-fp32", {}).get("decode_tokens_per_s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        ratio = r["decode_tokens_per_s"] / hf if hf and r.get("decode_tokens_per_s") else None
        cells = [name, r["runtime"], _fmt(r["bytes"] / 1e6, ".2f"), _fmt((r.get("ttft_s") or 0) * 1e3, ".1f"),
                 _fmt(r.get("prefill_tokens_per_s"), ".0f"), _fmt(r.get("decode_tokens_per_s"), ".1f"),
                 _fmt(ratio, ".2f") + ("x" if ratio else ""),
                 *[_fmt((r.get("concurrency") or {}).get(c), ".0f") for c in levels],
                 _fmt(r.get("ppl"), ".3f"), _fmt(r.get("ppl_delta"), "+.3f") + (
                     f" ({r['ppl_change']:+.1%})" if isinstance(r.get("ppl_change"), float) else ""),
                 _fmt(r.get("top1_agreement"), ".3f"), _fmt(r.get("decode_top1_agreement"), ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def explanation(result: dict[str, Any]) -> str:
    """Prefill vs decode in a few sentences, with this run's measured numbers."""
    fp32 = result["rows"].get("fp32")
    if not fp32:
        return ""
    conc = fp32.get("concurrency") or {}
    levels = sorted(conc, key=int)
    scale = (f" With {levels[-1]} requests sharing each step the engine produced {conc[levels[-1]]:.0f} tokens/s in "
             f"all, {conc[levels[-1]] / conc[levels[0]]:.1f}x one request's rate: the weights are read once per "
             "step whoever uses them, so batching turns idle memory time into more tokens."
             if len(levels) > 1 and conc[levels[0]] else "")
    return (
        f"**Prefill vs decode.** Prefill runs all {result['prompt_tokens']} prompt tokens through the model in one "
        f"parallel forward pass: the first token came after {fp32['ttft_s'] * 1e3:.1f} ms, "
        f"{fp32['prefill_tokens_per_s']:.0f} prompt tokens/s. Each weight read from memory is used for every prompt "
        "token (matrix-matrix products), so prefill is compute-bound. Decode then produces one token per step, "
        f"each step depending on the last: {fp32['decode_tokens_per_s']:.1f} tokens/s "
        f"({(fp32.get('tpot_s') or 0) * 1e3:.2f} ms per token) at batch 1, because every step streams all the "
        f"weights ({fp32['bytes'] / 1e6:.1f} MB in FP32) through the CPU for a single token's matrix-vector products: "
        "decode is memory-bound, and smaller weights (INT8, INT4, Q8_0, Q4_0) are how it gets faster." + scale
        + (f" (At {fp32['bytes'] / 1e6:.1f} MB this model's weights fit in the CPU caches, so here per-step overhead "
           "more than DRAM bandwidth sets the decode rate; benchmarks/generation.py measures the gpt2-124m shape, "
           "where the bandwidth bound is what decode runs into.)" if fp32["bytes"] < 64e6 else ""))


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "quantize.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = [f"# Quantized variants of {result['parent']}", "",
          f"Same prompt ({result['prompt_tokens']} tokens) and {result['new_tokens']} new tokens for every variant, "
          f"batch 1 unless stated, {result['threads']} threads. Quality on held-out {result['quality_text']} text "
          "against FP32 "
          f"(perplexity {result['reference']['ppl']:.2f}).", "", table(result), "", explanation(result), "",
          "![variants](variants.png)", "", "![prefill vs decode](prefill_vs_decode.png)", "",
          "![throughput vs batch](throughput_vs_batch.png)", ""]
    skipped = result.get("skipped") or {}
    if skipped:
        md += ["**Not made for this model:**", "", *[f"- {variant}: {why}" for variant, why in skipped.items()], ""]
    (out_dir / "quantize.md").write_text("\n".join(md))
    _plots(result, out_dir)


def _plots(result: dict[str, Any], out_dir: Path) -> None:
    import matplotlib  # start-up cost: only a run that writes a report pays it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["rows"]
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in ((axes[0], "decode_tokens_per_s", "decode tokens/s (batch 1) ↑"),
                           (axes[1], "bytes", "size (MB) ↓"), (axes[2], "ppl_delta", "perplexity - FP32 ↓")):
        values = [(rows[n].get(key) or 0) / (1e6 if key == "bytes" else 1) for n in names]
        ax.barh(names, values, color=["#888" if rows[n]["runtime"] != "engine" else "#3a7" for n in names])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle("Variants: green = our engine, grey = llama.cpp / HF")
    fig.tight_layout()
    fig.savefig(out_dir / "variants.png", dpi=100)
    plt.close(fig)

    timeline = result.get("timeline")
    if timeline and timeline["token_times_s"]:
        times = [t * 1e3 for t in timeline["token_times_s"]]
        fig, ax = plt.subplots(figsize=(9, 2.6))
        ax.barh(0, times[0], color="#d84", label=f"prefill: {timeline['prompt_tokens']} tokens in one pass")
        steps = [b - a for a, b in zip(times, times[1:])]
        ax.barh(0, steps, left=times[:-1], color="#47b", edgecolor="white", linewidth=0.3,
                label=f"decode: {len(steps)} steps, one token each")
        ax.set_yticks([])
        ax.set_xlabel("ms since the request arrived")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=8)
        ax.set_title("One request (FP32 engine): prefill, then decode step by step", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "prefill_vs_decode.png", dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, r in rows.items():
        conc = r.get("concurrency") or {}
        if conc:
            levels = sorted(conc, key=int)
            ax.plot([int(c) for c in levels], [conc[c] for c in levels], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title("Throughput vs batch size (continuous batching)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput_vs_batch.png", dpi=100)
    plt.close(fig)
