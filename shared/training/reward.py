"""A reward model trained on preference pairs with TRL's ``RewardTrainer``, and the reward stage around it.

The reward model is the SFT checkpoint loaded as ``AutoModelForSequenceClassification`` with one
output (``trl_worker.load_sequence_classifier``: ``ALGORITHM`` is a sequence classifier): GPT-2's
LM head is dropped and a fresh linear ``score`` head reads the hidden state of the last non-padding
token. It is trained with the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))`` (plus
TRL's optional centring term that keeps rewards near zero).

Worker side, ``build_trainer``: full fine-tuning, or LoRA on the backbone with the ``score`` head
trained in full (``modules_to_save``); QLoRA is refused. Pairs are conversational (``prompt``
messages, ``chosen`` / ``rejected`` assistant replies): TRL renders ``prompt + chosen`` with the
tokenizer's chat template, without a generation prompt, so a training sequence is
``...<|user|>q<|end|><|assistant|>reply<|end|>``; scoring a generated reply
(``posttrain.RewardScorer``) rebuilds exactly those tokens.

Driver side, ``run_reward``: pairs from a ``prefs`` artifact (or a dataset), the fit under Ray
Train, then held-out pair accuracy: TRL's ``eval_accuracy`` before (its step-0 evaluation, the
untrained head: ``eval_accuracy_before``) and after training, and ``heldout_accuracy`` /
``heldout_margin`` of the saved artifact scored here (every pair, nothing filtered by length);
registered as a ``reward-model`` artifact.

Not here: using the reward (``prefs`` adds it to the checkers' score, ``rl`` optimizes against it,
both through ``posttrain.RewardScorer``).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from shared.config import ConfigError
from shared.data.instructions import check_nonempty
from shared.registry import Artifact, Registry
from shared.chat_format import CHAT_TEMPLATE, render_reply
from shared.training.finetune_config import MethodConfig
from shared.training.posttrain import (RewardScorer, first_last, fit_trl, load_pairs, pair_row, resolve_model,
                                       train_metrics)
from shared.training.posttrain_config import RewardJobConfig
from shared.training.trl_worker import Algorithm, TrainRows

REWARD_KIND = "reward-model"
HEAD = "score"  # the head transformers' *ForSequenceClassification models put on top of the backbone


# ----------------------------------------------------------------------------- worker side

def reward_lora_config(model, method: MethodConfig):
    """``lora_config`` for a sequence classifier: adapters on the backbone, the score head saved whole."""
    # finetune_methods imports peft (seconds): paid by the worker, not by every import of this stage.
    from shared.training.finetune_methods import lora_config

    peft_config = lora_config(model, method)
    # A randomly initialised head needs every weight trained; "all-linear" would also put an adapter on it.
    peft_config.target_modules = sorted(set(peft_config.target_modules) - {HEAD})
    if not peft_config.target_modules:
        raise ConfigError(f"method.target_modules={method.target_modules!r} leaves no backbone layer for LoRA once the "
                          f"{HEAD!r} head (trained in full) is set aside; target the backbone, e.g. all-linear")
    peft_config.task_type = "SEQ_CLS"
    peft_config.modules_to_save = [HEAD]
    return peft_config


def build_trainer(model, tokenizer, cfg: RewardJobConfig, rows: TrainRows, args: dict[str, Any]):
    """A ``RewardTrainer`` over ``rows`` for the loaded sequence classifier with the common ``TrainingArguments``.

    For LoRA the trainer wraps the plain classifier itself (``peft_config``: adapters on the backbone).
    """
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tokenizer.chat_template = CHAT_TEMPLATE  # the training rendering must be the one scoring rebuilds
    peft_config = reward_lora_config(model, cfg.method) if cfg.method.method == "lora" else None
    reward_args = RewardConfig(**args, max_length=cfg.train.max_length, dataset_num_proc=None,
                               center_rewards_coefficient=cfg.center_rewards_coefficient)
    eval_ds = Dataset.from_list(rows.eval) if rows.eval else None
    return RewardTrainer(model=model, args=reward_args, train_dataset=Dataset.from_list(rows.train),
                         eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config)


ALGORITHM = Algorithm("reward", build_trainer, sequence_classifier=True)


# ----------------------------------------------------------------------------- driver side

def pair_accuracy(path: str, pairs: Sequence[dict[str, Any]], batch_size: int = 32) -> dict[str, float]:
    """Share of pairs whose chosen reply the reward model at ``path`` scores above the rejected, and the mean margin."""
    scorer = RewardScorer(path)
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer.score(prompts, [render_reply(p["chosen"]) for p in pairs], batch_size)
    rejected = scorer.score(prompts, [render_reply(p["rejected"]) for p in pairs], batch_size)
    margins = [c - r for c, r in zip(chosen, rejected)]
    n = max(1, len(pairs))
    return {"accuracy": sum(m > 0 for m in margins) / n, "margin": sum(margins) / n}


def run_reward(cfg: RewardJobConfig) -> Artifact:
    """Train the reward model on preference pairs, measure held-out pair accuracy, register it."""
    t0 = time.perf_counter()
    registry = Registry(cfg.runs_dir)
    backbone = resolve_model(registry, cfg.init_from, cfg.run)
    train_pairs, pairs_art = load_pairs(registry, cfg.data, cfg.run, "train", cfg.max_examples)
    check_nonempty(train_pairs, f"the preference data {cfg.data!r}")
    eval_pairs = load_pairs(registry, cfg.data, cfg.run, "heldout", cfg.eval_examples)[0] if cfg.eval_examples else []
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t_data = time.perf_counter() - t0
    fit = fit_trl(cfg, ALGORITHM, backbone, out_dir,
                  TrainRows([pair_row(p) for p in train_pairs], [pair_row(p) for p in eval_pairs]))
    metrics = {**train_metrics(fit.history, fit.final_eval), **first_last(fit.history, ("accuracy", "margin")),
               "n_pairs": len(train_pairs), "n_eval_pairs": len(eval_pairs)}
    t1 = time.perf_counter()
    before = [r["eval_accuracy"] for r in fit.history if r.get("step") == 0 and "eval_accuracy" in r]
    if before:  # eval_on_start: TRL's accuracy of the untrained head; its final eval_accuracy is the after
        metrics["eval_accuracy_before"] = before[0]
    if eval_pairs:
        after = pair_accuracy(str(out_dir), eval_pairs)
        metrics.update(heldout_accuracy=after["accuracy"], heldout_margin=after["margin"])
    parents = backbone.parent_ids + ([pairs_art.id] if pairs_art else [])
    timings = {"data_s": t_data, "train_s": fit.train_s, "eval_s": time.perf_counter() - t1}
    return registry.register(cfg.run, cfg.stage, REWARD_KIND, parents=parents, config=cfg, metrics=metrics,
                             timings=timings, extra={"backbone": backbone.path, "data": cfg.data,
                                                     "resumed_from_step": fit.resumed_from_step})
