"""The quantize stage: the final model at every precision, each run, measured and registered.

``run_quantize(cfg)`` takes the model artifact ``init_from`` and for each variant in ``cfg.variants``:

- builds it: ``fp32`` / ``bf16`` are the parent's weights in our engine; ``int8`` / ``int8-dynamic`` /
  ``int4`` are weight-only (or dynamic) quantized engine models saved as artifacts
  ``<stage>-<variant>`` (``shared.quant.quantized_checkpoint``); ``gguf-*`` are GGUF files from
  our exporter, quantized by llama.cpp, registered as ``<stage>-gguf-<type>`` (kind ``gguf``);
- measures quality on held-out text (``quality_text``: held-out chat conversations by default, or
  the perplexity sets' general / domain text; the same token windows for every variant): loss and
  perplexity, the delta against FP32, and top-1 agreement with FP32
  (share of positions where the variant's most likely next token is FP32's); for engine variants
  also that agreement with the first ``decode_quality_tokens`` read one decode step at a time, the
  kernels a served reply runs through (prefill and decode take different ones);
- measures speed with the same prompt: TTFT, prefill tokens/s, decode tokens/s at batch 1 (our
  engine's per-request metrics; llama.cpp's own perf counters), and for engine variants the
  aggregate tokens/s with ``concurrency`` requests at once; HF ``generate()`` on FP32 is the peer row.

Then it registers the report artifact ``<stage>`` (``quantize.md`` / ``.json``, ``variants.png``,
``prefill_vs_decode.png``, ``throughput_vs_batch.png``), with the variants and the parent as parents.

The parent must be an ``hf-model`` artifact (its registry kind says so): a GPT-2, or an MoE (Qwen2-MoE /
Ernie-4.5-MoE, ``shared.model.hf.save_moe_checkpoint``, or its dense twin), which our engine runs at fp32 / bf16
and ``shared.quant.gguf_moe`` exports for the ``gguf-*`` variants. Our INT8/INT4 format quantizes GPT-2's
linear layers only (``MOE_UNSUPPORTED``): for an MoE parent those variants are skipped with a printed line
and the reason under ``skipped`` in ``quantize.json``. Every variant is measured as
``shared.serving.runtime.open_model`` opens it, the path the generator serves it through: ``fp32`` /
``bf16`` the parent artifact with that dtype, each saved variant its own artifact, registered (kind
``quantized`` or ``gguf``) as soon as its files are written so that the registry's kind picks the
runtime; its metrics are added once measured. How a variant is scored and timed follows the runtime
that opened it (our engine or llama.cpp), never its files.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from shared.config import ConfigError, to_dict
from shared.data.heldout import HELDOUT_SETS, heldout_text
from shared.data.instructions.builtin import load_instructions
from shared.engine import Engine, EngineConfig
from shared.engine.measure import engine_concurrent, engine_single, hf_single, request_timeline
from shared.model.hf import gpt_to_hf, is_moe_checkpoint, load_gpt, load_moe, moe_to_hf
from shared.quant.gguf_export import export_gguf
from shared.quant.llama_cpp import llama_generate, llama_logits, quantize_gguf
from shared.quant.quality import decode_logits, sequence_logits
from shared.quant.quantized_checkpoint import WEIGHTS_FILE, save_quantized
from shared.quantize.quantize_config import GGUF_VARIANTS, QuantizeConfig
from shared.quantize.report import write_report
from shared.registry import Artifact, Registry
from shared.serving.runtime import OpenModel, open_model
from shared.chat_format import render_chat
from shared.tokenizer.hf_format import load_tokenizer

LogitsFn = Callable[[list[int]], torch.Tensor]  # token ids -> [T, vocab] logits (float32)
#: Variants an MoE parent cannot have, and why (see the module docstring).
MOE_UNSUPPORTED = {v: "our INT8/INT4 format (shared.quant.quantized_checkpoint) quantizes GPT-2's linear layers; "
                      "it has no layout or kernels for an MoE's 3-D expert tensors: use gguf-q8_0 / gguf-q4_0"
                   for v in ("int8", "int8-dynamic", "int4")}


# ---------------------------------------------------------------- quality
def quality_text(kind: str, max_bytes: int) -> str:
    """Held-out text the variants are scored on: ``chat`` (held-out builtin conversations in the chat format,
    what an assistant model is for), or the ``general`` / ``domain`` perplexity sets."""
    if kind == "chat":
        parts, size = [], 0
        for example in load_instructions(split="heldout"):
            parts.append(render_chat(example["messages"]))
            size += len(parts[-1])
            if size >= max_bytes:
                break
        return "".join(parts)
    return heldout_text(HELDOUT_SETS[kind], max_bytes)


def heldout_windows(tokenizer, kind: str, width: int, max_tokens: int) -> list[list[int]]:
    """Non-overlapping windows of ``width`` tokens of held-out ``kind`` text, ``max_tokens`` in all."""
    ids = tokenizer(quality_text(kind, max_tokens * 6), add_special_tokens=False).input_ids[:max_tokens]
    return [ids[i:i + width] for i in range(0, len(ids) - width + 1, width)]


def quality(logits_fn: LogitsFn, windows: list[list[int]], reference_top1: list[torch.Tensor] | None) -> dict:
    """Loss, perplexity and (given FP32's argmaxes) top-1 agreement of one variant over the windows."""
    total, count, agree = 0.0, 0, 0
    top1 = []
    for n, ids in enumerate(windows):
        logits = logits_fn(ids).float()
        target = torch.tensor(ids[1:])
        total += float(torch.nn.functional.cross_entropy(logits[:-1], target, reduction="sum"))
        count += len(ids) - 1
        best = logits.argmax(-1)
        top1.append(best)
        if reference_top1 is not None:
            agree += int((best == reference_top1[n]).sum())
    loss = total / count
    out = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count, "top1": top1}
    if reference_top1 is not None:
        out["top1_agreement"] = agree / sum(len(w) for w in windows)
    return out


# ---------------------------------------------------------------- variants
def gguf_variant(variant: str, parent_dir: Path, out_dir: Path, scratch: Path) -> Path:
    """The GGUF file of ``variant`` (``gguf-f16``, ``gguf-q8_0``, ...) written into ``out_dir``.

    Quantized types are made by llama.cpp from one F32 export kept in ``scratch`` (a temporary
    directory of the stage, so no stray file is left in the run) and shared by every type.
    """
    qtype = variant.split("-", 1)[1]
    target = out_dir / f"model-{qtype}.gguf"
    if qtype in ("f32", "f16"):
        return export_gguf(parent_dir, target, dtype=qtype)
    source = scratch / "source-f32.gguf"
    if not source.exists():
        export_gguf(parent_dir, source, dtype="f32")
    return quantize_gguf(source, target, qtype)


def save_variant(variant: str, gpt, parent: Artifact, cfg: QuantizeConfig, registry: Registry,
                 scratch: Path) -> Artifact:
    """Write the saved variant ``variant`` (``int8``, ``int8-dynamic``, ``int4``: our quantized format;
    ``gguf-*``: a GGUF file) as ``<stage>-<variant>`` and register it with its kind (``quantized`` /
    ``gguf``) and no metrics yet: opened by its registered kind, it is measured as it will be served."""
    stage = f"{cfg.stage}-{variant}"
    # The variants are part of this stage's run: stage_dir(cfg.stage) already refused to replace a finished
    # quantize report, so a variant left by an interrupted run of it is this run's to redo.
    out_dir = registry.stage_dir(cfg.run, stage, overwrite=True)
    if variant in GGUF_VARIANTS:
        gguf_variant(variant, parent.dir, out_dir, scratch)
        kind = "gguf"
    else:
        save_quantized(gpt, parent.dir, out_dir, scheme=variant, group_size=cfg.group_size,
                       include_lm_head=cfg.include_lm_head)
        kind = "quantized"
    return registry.register(cfg.run, stage, kind, parents=[parent.id], config={**to_dict(cfg), "variant": variant})


def variant_bytes(opened: OpenModel) -> int:
    """Size of an opened variant's weights: its GGUF file, its quantized weights file, or for the parent's
    weights (fp32 / bf16) the bytes a decode step reads at that dtype."""
    if opened.kind == "gguf":
        return opened.gguf.stat().st_size
    if opened.kind == "quantized":
        return file_bytes(opened.path / WEIGHTS_FILE)
    return opened.engine.model.decode_bytes_per_token()


def decode_agreement(model, windows: list[list[int]], reference_top1: list[torch.Tensor],
                     max_tokens: int) -> float | None:
    """Top-1 agreement with FP32 over the first ``max_tokens`` held-out tokens read through decode steps
    (``shared.quant.quality.decode_logits``); None when ``max_tokens`` is 0."""
    same = total = 0
    for ids, ref in zip(windows, reference_top1):
        ids = ids[:max_tokens - total]
        if not ids:
            break
        same += int((decode_logits(model, ids).argmax(-1) == ref[:len(ids)]).sum())
        total += len(ids)
    return same / total if total else None


def engine_logits_fn(model) -> LogitsFn:
    return lambda ids: sequence_logits(model, ids).float()


# ---------------------------------------------------------------- speed
def engine_speed(engine: Engine, prompt: list[int], cfg: QuantizeConfig) -> dict:
    """Batch-1 TTFT, prefill and decode rates, and the aggregate tokens/s at each ``cfg.concurrency``."""
    single, _ = engine_single(engine, prompt, cfg.new_tokens, cfg.repeats)
    single["concurrency"] = {str(c): engine_concurrent(engine, [prompt] * c, cfg.new_tokens, cfg.repeats)
                             ["aggregate_tokens_per_s"] for c in sorted(set(cfg.concurrency))}
    return single


def token_engine(opened: OpenModel) -> Engine:
    """The opened engine's model and settings in an engine without a tokenizer, for the speed runs: they
    feed token ids and must generate exactly ``new_tokens`` each, as HF ``generate()`` does in the peer
    row (a tokenizer would add detokenizing to every step, and a tool-call token would end a run early)."""
    return Engine(opened.engine.model, None, opened.engine.config)


def llama_speed(llama, prompt: list[int], cfg: QuantizeConfig) -> dict:
    runs = [llama_generate(llama, prompt, max_new_tokens=cfg.new_tokens, ignore_eog=True, n_threads=cfg.threads)
            for _ in range(cfg.repeats + 1)][1:]  # the first run warms up
    best = max(runs, key=lambda r: r.decode_tokens_per_s)
    return {"ttft_s": min(r.prefill_ms for r in runs) / 1e3, "prefill_tokens_per_s": max(
        r.prefill_tokens_per_s for r in runs), "decode_tokens_per_s": best.decode_tokens_per_s,
        "tpot_s": 1.0 / best.decode_tokens_per_s if best.decode_tokens_per_s else None,
        "wall_tokens_per_s": best.wall_tokens_per_s}


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# ---------------------------------------------------------------- the stage
def measure(opened: OpenModel, windows: list[list[int]], reference: dict, prompt: list[int],
            cfg: QuantizeConfig) -> dict[str, Any]:
    """One opened variant's report row: runtime, size, speed, and quality against FP32's ``reference``
    (``quality`` of the parent's own forward pass; see the module docstring)."""
    if opened.engine is None:  # llama.cpp
        q = quality(lambda ids: torch.from_numpy(llama_logits(opened.llama, ids)), windows, reference["top1"])
        row = {"runtime": "llama.cpp", "bytes": variant_bytes(opened), **llama_speed(opened.llama, prompt, cfg)}
    else:
        model = opened.engine.model
        q = quality(engine_logits_fn(model), windows, reference["top1"])
        q["decode_top1_agreement"] = decode_agreement(model, windows, reference["top1"], cfg.decode_quality_tokens)
        row = {"runtime": "engine", "bytes": variant_bytes(opened), **engine_speed(token_engine(opened), prompt, cfg)}
    row.update(loss=q["loss"], ppl=q["ppl"], ppl_delta=q["ppl"] - reference["ppl"],
               ppl_change=q["ppl"] / reference["ppl"] - 1,
               top1_agreement=q["top1_agreement"], decode_top1_agreement=q.get("decode_top1_agreement"))
    return row


def run_quantize(cfg: QuantizeConfig):
    torch.set_num_threads(cfg.threads)
    registry = Registry(cfg.runs_dir)
    parent = registry.resolve(cfg.init_from, cfg.run)
    if parent.kind != "hf-model":  # the registry's kind says what the artifact is: quantize the HF weights
        raise ConfigError(f"init_from={cfg.init_from!r} is {parent.id}, a {parent.kind} artifact; the quantize stage "
                          "starts from an hf-model artifact (pretrain, cpt, sft, dpo, rl)")
    moe = is_moe_checkpoint(parent.dir)
    skipped = {v: MOE_UNSUPPORTED[v] for v in cfg.variants if moe and v in MOE_UNSUPPORTED}
    if len(skipped) == len(cfg.variants):
        raise ConfigError(f"{parent.id} is an MoE model and none of variants={cfg.variants} applies to it: "
                          f"{MOE_UNSUPPORTED[cfg.variants[0]]}; e.g. variants=[fp32,gguf-f16,gguf-q8_0]")
    report_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t0 = time.perf_counter()
    gpt = (load_moe if moe else load_gpt)(parent.dir).eval()  # the FP32 reference: MoEGPT or GPT
    tokenizer = load_tokenizer(parent.dir)
    block = gpt.config.block_size
    windows = heldout_windows(tokenizer, cfg.quality_text, block, cfg.ppl_tokens)
    prompt = [t for w in windows for t in w][-cfg.prompt_tokens:]
    if len(prompt) + cfg.new_tokens > block:
        raise ConfigError(f"prompt_tokens + new_tokens = {len(prompt) + cfg.new_tokens} exceeds the model's context "
                          f"of {block}; lower new_tokens")

    with torch.inference_mode():
        reference = quality(lambda ids: gpt(torch.tensor([ids]))[0][0], windows, None)
    rows: dict[str, dict[str, Any]] = {}
    variant_artifacts = []
    timeline = None
    seq_len = min(block, len(prompt) + cfg.new_tokens)
    if cfg.hf_baseline:
        hf = (moe_to_hf if moe else gpt_to_hf)(gpt).eval()
        rows["hf-generate-fp32"] = {"runtime": "HF generate()", "bytes": file_bytes(parent.dir / "model.safetensors"),
                                    **hf_single(hf, prompt, cfg.new_tokens, cfg.repeats)[0],
                                    "loss": reference["loss"], "ppl": reference["ppl"], "top1_agreement": 1.0}
        del hf
    scratch = tempfile.TemporaryDirectory(prefix="quantize-")
    for variant in cfg.variants:
        if variant in skipped:
            print(f"quantize: {variant} skipped for this MoE model: {skipped[variant]}", flush=True)
            continue
        print(f"quantize: {variant}", flush=True)
        # fp32 / bf16 are the parent's own weights at that dtype; every other variant is saved and registered.
        saved = variant not in ("fp32", "bf16")
        artifact = save_variant(variant, gpt, parent, cfg, registry, Path(scratch.name)) if saved else parent
        engine_config = EngineConfig(max_batch_size=max(cfg.concurrency), max_seq_len=seq_len,
                                     dtype="bfloat16" if variant == "bf16" else "float32")
        # logits_all: llama.cpp keeps every position's logits, which the quality windows score (the engine
        # ignores it); the registered kind picks the runtime, as it does for the generator.
        opened = open_model(artifact, config=engine_config, logits_all=True, n_threads=cfg.threads)
        try:
            row = measure(opened, windows, reference, prompt, cfg)
            if variant == "fp32":
                timeline = request_timeline(Engine(opened.engine.model, None, EngineConfig(
                    max_batch_size=1, max_seq_len=seq_len)), prompt, cfg.new_tokens)
        finally:
            opened.close()
        rows[variant] = row
        if saved:
            metrics = {k: row[k] for k in ("bytes", "ppl", "ppl_delta", "top1_agreement", "decode_top1_agreement",
                                           "decode_tokens_per_s") if row.get(k) is not None}
            variant_artifacts.append(registry.update_metrics(artifact, **metrics))
    scratch.cleanup()
    result = {"parent": parent.id, "quality_text": cfg.quality_text,
              "reference": {"loss": reference["loss"], "ppl": reference["ppl"]},
              "prompt_tokens": len(prompt), "new_tokens": cfg.new_tokens, "threads": cfg.threads, "rows": rows,
              "timeline": timeline, "skipped": skipped}
    write_report(result, report_dir)
    headline = {f"{v}/{k}": r[k] for v, r in rows.items() for k in ("decode_tokens_per_s", "ppl_delta")
                if isinstance(r.get(k), (int, float))}
    return registry.register(cfg.run, cfg.stage, "report", parents=[parent.id] + [a.id for a in variant_artifacts],
                             config=to_dict(cfg), metrics=headline, timings={"quantize": time.perf_counter() - t0})
