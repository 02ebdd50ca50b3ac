"""A reward model trained on preference pairs with TRL's ``RewardTrainer``, and scoring with it.

The reward model is the SFT checkpoint loaded as ``AutoModelForSequenceClassification`` with one
output: GPT-2's LM head is dropped and a fresh linear ``score`` head reads the hidden state of the
last non-padding token. It is trained with the Bradley-Terry loss ``-log sigmoid(r(chosen) -
r(rejected))`` (plus TRL's optional centring term that keeps rewards near zero).

Worker side, ``build_trainer``: full fine-tuning, or LoRA on the backbone with the ``score`` head
trained in full (``modules_to_save``); QLoRA is refused. Pairs are conversational (``prompt``
messages, ``chosen`` / ``rejected`` assistant replies): TRL renders ``prompt + chosen`` with the
tokenizer's chat template, without a generation prompt, so a training sequence is
``...<|user|>q<|end|><|assistant|>reply<|end|>``.

Scoring, ``RewardScorer`` / ``score_with_reward_model``: a reply as generated (the text decoded
after ``<|assistant|>``, e.g. ``42<|end|>``) is appended to the prompt rendered with the generation
prompt, which is the same string, hence the same tokens, as the training rendering of a terminated
reply. Padding sits on the right and the model reads the last non-pad token, as in training.
Sequences longer than the context lose their oldest tokens (training drops such pairs instead).

Driver side, ``run_reward``: pairs from a ``prefs`` artifact (or a dataset), the fit under Ray
Train, then held-out pair accuracy: TRL's ``eval_accuracy`` before (its step-0 evaluation, the
untrained head: ``eval_accuracy_before``) and after training, and ``heldout_accuracy`` /
``heldout_margin`` of the saved artifact scored here (every pair, nothing filtered by length);
registered as a ``reward-model`` artifact.

Not here: using the reward (``prefs`` adds it to the checkers' score, ``rl`` optimizes against it).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import ConfigError
from shared.tokenizer.chat import CHAT_TEMPLATE, render_chat, render_reply

if TYPE_CHECKING:
    from shared.registry import Artifact, Registry
    from shared.training.posttrain import ModelRef

REWARD_KIND = "reward-model"
HEAD = "score"  # the head transformers' *ForSequenceClassification models put on top of the backbone


# ----------------------------------------------------------------------------- worker side

def load_reward_backbone(path: str, method, device: str = "cpu"):
    """``(model, tokenizer, peft_config)``: a one-output sequence classifier over the checkpoint at ``path``.

    ``peft_config`` is None for full fine-tuning; for LoRA it targets the backbone's linear layers
    (never the fresh head) and trains the head in full; TRL wraps the model with it.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from shared.training.finetune_methods import enable_gradient_checkpointing
    from shared.training.posttrain_config import REWARD_METHOD_ERROR, REWARD_METHODS

    method.validate()
    if method.method not in REWARD_METHODS:
        raise ConfigError(f"{REWARD_METHOD_ERROR}, not {method.method!r}")
    # transformers reports score.weight as MISSING here: expected, the head is new and trains from scratch.
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE  # the training rendering must be the one scoring rebuilds
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last non-pad token
    model = model.to(device)
    if method.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, tokenizer, reward_lora_config(model, method) if method.method == "lora" else None


def reward_lora_config(model, method):
    """``lora_config`` for a sequence classifier: adapters on the backbone, the score head saved whole."""
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


def build_trainer(spec, args: dict[str, Any]):
    """A ``RewardTrainer`` for ``spec`` (a ``TrlSpec``) with the common ``TrainingArguments`` ``args``."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from shared.config import from_dict
    from shared.training.finetune_config import MethodConfig

    cfg = spec.config
    set_seed(cfg["train"]["seed"])  # the fresh score head is random: make it reproducible
    model, tokenizer, peft_config = load_reward_backbone(
        spec.model_path, from_dict(MethodConfig, cfg["method"]), "cuda" if cfg["use_gpu"] else "cpu")
    reward_args = RewardConfig(**args, max_length=cfg["train"]["max_length"], dataset_num_proc=None,
                               center_rewards_coefficient=cfg.get("center_rewards_coefficient"))
    eval_ds = Dataset.from_list(spec.eval_rows) if spec.eval_rows else None
    return RewardTrainer(model=model, args=reward_args, train_dataset=Dataset.from_list(spec.train_rows),
                         eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config)


# ----------------------------------------------------------------------------- scoring

class RewardScorer:
    """A reward model held in memory; ``score(prompts, replies)`` gives one float per reply."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from shared.eval.generate import context_length

        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            raise ConfigError(f"the tokenizer of {path} has no pad token; the classifier finds the last real "
                              "token by it: save the reward model with the tokenizer it was trained with")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # as RewardTrainer set it in training
        self.limit = context_length(self.model)
        self.device = torch.device(device)

    def encode(self, prompts: Sequence[Sequence[dict[str, Any]]], replies: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt + reply, as the trainer tokenized ``prompt + chosen`` (see module docstring)."""
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies; pass one reply per prompt")
        texts = [render_chat(p, add_generation_prompt=True) + r for p, r in zip(prompts, replies)]
        return [self.tokenizer(t, add_special_tokens=False).input_ids[-self.limit:] for t in texts]

    def score(self, prompts: Sequence[Sequence[dict[str, Any]]], replies: Sequence[str],
              batch_size: int = 32) -> list[float]:
        return self.score_ids(self.encode(prompts, replies), batch_size)

    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
        """Scores of tokenized sequences, right-padded in batches of ``batch_size``."""
        import torch

        pad = self.tokenizer.pad_token_id
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                width = max(len(s) for s in batch)
                ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in batch], device=self.device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=self.device)
                out.extend(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
        return out


def score_with_reward_model(path: str, prompts: Sequence[Sequence[dict[str, Any]]], replies: Sequence[str],
                            batch_size: int = 32) -> list[float]:
    """The reward model at ``path``'s score of each generated reply to its prompt (a message list)."""
    return RewardScorer(path).score(prompts, replies, batch_size)


def pair_accuracy(path: str, pairs: Sequence[dict[str, Any]], batch_size: int = 32) -> dict[str, float]:
    """Share of pairs whose chosen reply the reward model at ``path`` scores above the rejected, and the mean margin."""
    scorer = RewardScorer(path)
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer.score(prompts, [render_reply(p["chosen"]) for p in pairs], batch_size)
    rejected = scorer.score(prompts, [render_reply(p["rejected"]) for p in pairs], batch_size)
    margins = [c - r for c, r in zip(chosen, rejected)]
    n = max(1, len(pairs))
    return {"accuracy": sum(m > 0 for m in margins) / n, "margin": sum(margins) / n}


# ----------------------------------------------------------------------------- driver side

def resolve_reward_model(registry: Registry, name: str, run: str) -> ModelRef:
    """``name`` as a reward model (artifact or HF dir); anything that is not a sequence classifier is refused."""
    from shared.training.posttrain import resolve_model

    ref = resolve_model(registry, name, run)
    config = Path(ref.path) / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.exists() else []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(f"{name!r} ({ref.path}) is a {architectures or 'model of unknown architecture'}, not a "
                          "reward model; train one with python -m ray_jobs.reward and point reward_model= at it")
    return ref


def run_reward(cfg) -> Artifact:
    """Train the reward model on preference pairs, measure held-out pair accuracy, register it."""
    import time
    from shared.config import to_dict
    from shared.data.instructions import check_nonempty
    from shared.registry import Registry
    from shared.training.dpo import load_pairs, pair_row
    from shared.training.posttrain import first_last, fit_trl, resolve_model, train_metrics

    t0 = time.perf_counter()
    registry = Registry(cfg.runs_dir)
    backbone = resolve_model(registry, cfg.init_from, cfg.run)
    train_pairs, pairs_art = load_pairs(registry, cfg.data, cfg.run, "train", cfg.max_examples)
    check_nonempty(train_pairs, f"the preference data {cfg.data!r}")
    eval_pairs = load_pairs(registry, cfg.data, cfg.run, "heldout", cfg.eval_examples)[0] if cfg.eval_examples else []
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t_data = time.perf_counter() - t0
    fit = fit_trl(cfg, "reward", backbone, out_dir, [pair_row(p) for p in train_pairs],
                  [pair_row(p) for p in eval_pairs])
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
    return registry.register(cfg.run, cfg.stage, REWARD_KIND, parents=parents, config=to_dict(cfg), metrics=metrics,
                             timings=timings, extra={"backbone": backbone.path, "data": cfg.data})
