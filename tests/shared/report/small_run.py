"""A small run written the way the stages write theirs: manifests through ``Registry.register``, and
the stage files (PNGs, scorecard, interpret, quantize, post-training comparisons) in their formats."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from shared.registry import Registry

RUN = "r"


def png(path: Path, width: int = 3, height: int = 2) -> Path:
    """A real (tiny, grey) PNG: what the browser test decodes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _stage(reg: Registry, stage: str, kind: str, parents=(), config=None, metrics=None, timings=None, files=None,
           pngs=()):
    out = reg.stage_dir(RUN, stage)
    for name, content in (files or {}).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(content))
    for name in pngs:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        png(out / name)
    return reg.register(RUN, stage, kind, parents=list(parents), config={"run": RUN, "stage": stage, **(config or {})},
                        metrics=metrics or {}, timings=timings or {})


SCORECARD = {
    "artifacts": ["r/pretrain", "r/sft", "r/dpo", "r/quantize-int8"],
    "parents": {"r/pretrain": None, "r/sft": "r/pretrain", "r/dpo": "r/sft", "r/quantize-int8": "r/dpo"},
    "metrics": {"perplexity/general_bpb": {"r/pretrain": 2.25, "r/sft": 2.5, "r/dpo": 2.375, "r/quantize-int8": 2.375},
                "instructions/exact_match": {"r/pretrain": 0.0, "r/sft": 0.25, "r/dpo": 0.125,
                                             "r/quantize-int8": 0.125},
                "journey_facts_mc/acc": {"r/pretrain": 0.25, "r/sft": 0.75, "r/dpo": 0.7, "r/quantize-int8": 0.7}},
    "stderr": {"perplexity/general_bpb": {}, "instructions/exact_match": {},
               "journey_facts_mc/acc": {"r/pretrain": 0.03, "r/sft": 0.03, "r/dpo": 0.03, "r/quantize-int8": 0.03}},
    "deltas": {"perplexity/general_bpb": {"r/pretrain": None, "r/sft": 0.25, "r/dpo": -0.125, "r/quantize-int8": 0.0},
               "instructions/exact_match": {"r/pretrain": None, "r/sft": 0.25, "r/dpo": -0.125, "r/quantize-int8": 0.0},
               "journey_facts_mc/acc": {"r/pretrain": None, "r/sft": 0.5, "r/dpo": -0.05, "r/quantize-int8": 0.0}},
    "counts": {"instructions/n": {"r/pretrain": 134.0, "r/sft": 134.0, "r/dpo": 134.0, "r/quantize-int8": 134.0}},
    "lower_is_better": ["perplexity/general_bpb"], "skipped": {}, "seconds": {}}

QUANTIZE = {
    "parent": "r/dpo", "quality_text": "chat", "reference": {"loss": 6.5, "ppl": 665.14}, "prompt_tokens": 32,
    "new_tokens": 64, "threads": 2,
    "rows": {"hf-generate-fp32": {"runtime": "HF generate()", "bytes": 5_341_104, "ttft_s": 0.0024,
                                  "prefill_tokens_per_s": 13084.6, "decode_tokens_per_s": 1200.0, "ppl": 665.14,
                                  "top1_agreement": 1.0},
             "fp32": {"runtime": "engine", "bytes": 5_200_000, "ttft_s": 0.0017, "prefill_tokens_per_s": 18609.0,
                      "decode_tokens_per_s": 9000.0, "concurrency": {"1": 8000.0, "4": 20000.0}, "ppl": 665.14,
                      "ppl_delta": 0.0, "top1_agreement": 1.0},
             "int8": {"runtime": "engine", "bytes": 2_600_000, "ttft_s": 0.001, "prefill_tokens_per_s": 30000.0,
                      "decode_tokens_per_s": 14400.0, "concurrency": {"1": 12000.0, "4": 22000.0}, "ppl": 665.8,
                      "ppl_delta": 0.656, "top1_agreement": 0.9875}}}

INTERPRET = {
    "induction": {"pretrain": {"max_induction_score": 0.42, "max_induction_head": "L1H2", "induction_heads": 2,
                               "prev_token_heads": 1, "loss_drop": 1.5, "chance": 0.021},
                  "sft": {"max_induction_score": 0.35, "max_induction_head": "L1H2", "induction_heads": 1,
                          "prev_token_heads": 1, "loss_drop": 1.25, "chance": 0.021}},
    "phase_change": [{"step": 0, "max_induction_score": 0.02}, {"step": 120, "max_induction_score": 0.42}],
    "diffs": [{"a": "pretrain", "b": "sft", "final_cosine": 0.625, "final_distance": 0.9, "most_changed_head": "L0H1",
               "most_changed_head_tv": 0.5, "mean_weight_change": 0.3125, "cosine": [0.9, 0.625],
               "distance": [0.2, 0.9], "weight_change": {"wte": 0.25, "L0.mlp.c_fc": 0.375}}],
    "missing": []}

SUMMARY = {"n": 100, "exact_match": 0.0, "format_ok": 0.0, "refusal_rate_harmful": 0.0, "answer_rate_helpful": 1.0,
           "mean_score": 0.0}


def build(root: Path, with_eval: bool = True, with_quantize: bool = True) -> Registry:
    """The small run ``r`` under ``root``: tokenizer, pretrain, sft, dpo, and optionally eval, quantize, interpret."""
    reg = Registry(root)
    _stage(reg, "tokenizer", "tokenizer", metrics={"vocab_size": 4096, "n_special_tokens": 7},
           timings={"train_s": 3.0, "total_s": 4.0})
    _stage(reg, "pretrain", "hf-model", ["r/tokenizer"],
           config={"data": {"source": "builtin:python-docs", "max_bytes": 3_000_000}, "train": {"max_steps": 600}},
           metrics={"initial_val_loss": 8.3251, "val_loss": 5.0963, "val_bpb": 2.0287, "steps": 600,
                    "tokens": 1_228_800, "tokens_per_s": 14461.7, "n_params": 1_334_016},
           timings={"data_s": 13.0, "train_s": 100.0}, pngs=["loss_curve.png"])
    _stage(reg, "sft", "hf-model", ["r/pretrain"], config={"init_from": "pretrain", "data": "builtin:instructions"},
           metrics={"base_exact_match": 0.0, "exact_match": 0.1919, "base_format_ok": 0.0, "format_ok": 1.0,
                    "first_eval_loss": 7.6704, "eval_loss": 0.6601, "n_train": 5433, "steps": 1200},
           timings={"data_s": 1.0, "train_s": 332.0, "eval_s": 5.0}, pngs=["loss_curve.png"],
           files={"heldout_eval.json": {"summaries": {"base": SUMMARY, "tuned": {**SUMMARY, "exact_match": 0.1919,
                                                                                  "format_ok": 1.0}}}})
    _stage(reg, "dpo", "hf-model", ["r/sft"], config={"init_from": "sft", "data": "prefs"},
           metrics={"heldout_sft_exact_match": 0.1919, "heldout_exact_match": 0.1768,
                    "heldout_win_rate_vs_sft": 0.4867, "heldout_wins_ties_losses_vs_sft": [9, 274, 17],
                    "safety_sft_refusal_rate_harmful": 0.5, "safety_refusal_rate_harmful": 0.75,
                    "safety_sft_answer_rate_helpful": 1.0, "safety_answer_rate_helpful": 0.9,
                    "last_eval_rewards_accuracies": 0.5625},
           timings={"train_s": 54.0, "eval_s": 9.0}, pngs=["loss_curve.png"],
           files={"safety_helpfulness.json": {"summaries": {
               "sft": {**SUMMARY, "refusal_rate_harmful": 0.5}, "dpo": {**SUMMARY, "refusal_rate_harmful": 0.75,
                                                                          "answer_rate_helpful": 0.9}}},
                  "safety_hard.json": {"summaries": {
                      "sft": {**SUMMARY, "refusal_rate_harmful": 0.2, "answer_rate_helpful": 0.86},
                      "dpo": {**SUMMARY, "refusal_rate_harmful": 0.22, "answer_rate_helpful": 0.84}}}})
    if with_quantize:
        _stage(reg, "quantize-int8", "quantized", ["r/dpo"], config={"stage": "quantize", "variant": "int8"},
               metrics={"bytes": 2_600_000, "decode_tokens_per_s": 14400.0, "ppl_delta": 0.656,
                        "top1_agreement": 0.9875})
        _stage(reg, "quantize", "report", ["r/dpo", "r/quantize-int8"],
               config={"init_from": "dpo", "variants": ["fp32", "int8"]},
               metrics={"fp32/decode_tokens_per_s": 9000.0, "int8/decode_tokens_per_s": 14400.0,
                        "int8/ppl_delta": 0.656}, timings={"quantize": 35.0}, files={"quantize.json": QUANTIZE},
               pngs=["variants.png", "throughput_vs_batch.png"])
    if with_eval:
        models = ["r/pretrain", "r/sft", "r/dpo"] + (["r/quantize-int8"] if with_quantize else [])
        _stage(reg, "eval", "report", models, config={"tasks": ["perplexity", "instructions"]},
               timings={"eval": 49.0}, files={"scorecard.json": SCORECARD}, pngs=["scorecard.png",
                                                                                   "training_curves.png"])
        _stage(reg, "interpret", "report", ["r/pretrain", "r/sft"],
               config={"induction_threshold": 0.3, "phase_model": "pretrain"},
               metrics={"pretrain/max_induction_score": 0.42, "induction_formed_at_step": 120},
               timings={"interpret_s": 14.0}, files={"interpret.json": INTERPRET},
               pngs=["phase_change.png", "diff_residual.png", "induction_pretrain.png", "attention/sft/grid.png"])
    return reg
