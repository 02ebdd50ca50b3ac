"""Direct preference optimization with TRL's ``DPOTrainer``, and the DPO stage around it.

Worker side, ``build_trainer`` (``ALGORITHM``): the policy arrives loaded with the configured method
(full / LoRA); the frozen reference is the SFT model (for LoRA TRL uses the policy with its adapters
switched off when the reference is the policy's own base). Pairs are conversational (``prompt``
messages, ``chosen`` / ``rejected`` assistant replies), rendered by the one chat template.

Driver side, ``run_dpo``: pairs from a ``prefs`` artifact (or a preference dataset by name), the
fit, then the before/after tables: base vs SFT vs DPO on held-out instructions and on the
safety/helpfulness prompts, and DPO's win-rate against SFT on the same prompts.
"""
from __future__ import annotations

import time
from typing import Any

from shared.data.instructions import check_nonempty
from shared.eval.chat_eval import pair_preference_accuracy
from shared.registry import Artifact, Registry
from shared.chat_format import CHAT_TEMPLATE
from shared.training.posttrain import (compare_stages, first_last, fit_trl, load_pairs, model_lineage, pair_row,
                                       resolve_model, train_metrics)
from shared.training.posttrain_config import DPOJobConfig
from shared.training.trl_worker import Algorithm, TrainRows


def build_trainer(model, tokenizer, cfg: DPOJobConfig, rows: TrainRows, args: dict[str, Any]):
    """A ``DPOTrainer`` over ``rows`` for the loaded policy with the common ``TrainingArguments`` ``args``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer.chat_template = CHAT_TEMPLATE
    ref_model = None  # TRL: a frozen copy of the policy (full) or the policy with adapters off (LoRA)
    if rows.reference_path is not None:
        ref_model = AutoModelForCausalLM.from_pretrained(rows.reference_path)
    losses, weights = [cfg.loss_type], [1.0]
    if cfg.sft_weight > 0:  # RPO: DPO plus NLL on the chosen reply
        losses, weights = losses + ["sft"], weights + [cfg.sft_weight]
    dpo_args = DPOConfig(**args, beta=cfg.beta, loss_type=losses, loss_weights=weights,
                         max_length=cfg.train.max_length)
    eval_ds = Dataset.from_list(rows.eval) if rows.eval else None
    return DPOTrainer(model=model, ref_model=ref_model, args=dpo_args, train_dataset=Dataset.from_list(rows.train),
                      eval_dataset=eval_ds, processing_class=tokenizer)


ALGORITHM = Algorithm("dpo", build_trainer)


# ----------------------------------------------------------------------------- driver side

DPO_LOGGED = ("rewards/margins", "rewards/accuracies", "eval_rewards/margins", "eval_rewards/accuracies")


def run_dpo(cfg: DPOJobConfig) -> Artifact:
    """Train DPO on preference pairs, compare base / SFT / DPO, register the policy."""
    t0 = time.perf_counter()
    registry = Registry(cfg.runs_dir)
    policy = resolve_model(registry, cfg.init_from, cfg.run)
    reference = resolve_model(registry, cfg.reference or cfg.init_from, cfg.run)
    train_pairs, pairs_art = load_pairs(registry, cfg.data, cfg.run, "train", cfg.max_examples)
    check_nonempty(train_pairs, f"the preference data {cfg.data!r}")
    eval_pairs, _ = load_pairs(registry, cfg.data, cfg.run, "heldout", cfg.eval_examples or None)
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t_data = time.perf_counter() - t0
    rows = TrainRows([pair_row(p) for p in train_pairs], [pair_row(p) for p in eval_pairs[: cfg.eval_examples]],
                     reference_path=reference.path if reference.path != policy.path else None)
    fit = fit_trl(cfg, ALGORITHM, policy, out_dir, rows)
    # TRL logs implicit rewards (beta * log-ratio to the reference): their margin and how often chosen wins.
    metrics = {**train_metrics(fit.history, fit.final_eval), **first_last(fit.history, DPO_LOGGED),
               "n_pairs": len(train_pairs)}
    t1 = time.perf_counter()
    models = dict(model_lineage(registry, reference, generations=2))  # e.g. {cpt: ..., sft: ...}
    old = list(models)[-1]
    models[cfg.stage] = str(out_dir)
    metrics.update(compare_stages(models, cfg.stage, old, out_dir, cfg))
    if eval_pairs:  # does the policy itself rank held-out chosen above rejected more often than SFT did?
        for label in (old, cfg.stage):
            key = "pair_accuracy" if label == cfg.stage else f"{old}_pair_accuracy"
            metrics[f"heldout_{key}"] = pair_preference_accuracy(models[label], eval_pairs[: cfg.eval_examples])
    parents = policy.parent_ids + ([pairs_art.id] if pairs_art else [])
    timings = {"data_s": t_data, "train_s": fit.train_s, "eval_s": time.perf_counter() - t1}
    return registry.register(cfg.run, cfg.stage, "hf-model", parents=parents, config=cfg, metrics=metrics,
                             timings=timings, extra={"reference": reference.path, "data": cfg.data,
                                                     "resumed_from_step": fit.resumed_from_step})
