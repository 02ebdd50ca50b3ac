"""Online RL of the chat policy against the reward model plus the exact checkers: TRL GRPO or RLOO.

What the algorithms are (no value model in either, so neither is PPO):

- GRPO (``GRPOTrainer``, the default): for each prompt a group of ``num_generations`` completions is
  sampled; a completion's advantage is its reward minus the group's mean reward, divided by the
  group's standard deviation. The loss is PPO's clipped surrogate on the token probability ratios
  with those advantages (TRL's default ``dapo`` aggregation: a mean over all completion tokens of
  the batch), plus ``beta`` times a KL estimate to the starting policy.
- RLOO (``RLOOTrainer``): REINFORCE with a leave-one-out baseline (the mean reward of the other
  completions of the same prompt); TRL folds the KL penalty into the reward.

The reward of a completion is ``reward_model + checker_weight * checker``, two reward functions
(TRL logs each as ``rewards/<name>/mean``, their weighted sum as ``reward``):

- ``reward_model``: the reward model's score (``posttrain.RewardScorer``) of the reply;
- ``checker``: ``chat_eval.score_replies``'s score in [0, 2] by the example's own exact check
  (passed through the dataset's ``check`` column: TRL hands extra columns to reward functions).

Both decode the completion's token ids themselves, special tokens kept (``42<|end|>``,
``<|tool_call|>{...}<|end|>``, or no ``<|end|>`` when the budget ran out): TRL's ``completions``
are decoded with ``skip_special_tokens=True``, and TRL's built-in reward-model path re-renders
them with the chat template, which would add ``<|end|>`` to truncated replies and lose the
``<|tool_call|>`` marker, so the reward model and the checkers would judge text other than the
policy's. Prompts are conversational (``{"prompt": [messages]}``, rendered by the one chat
template); rollouts are HF ``generate`` (no vLLM) and stop at ``<|end|>`` or ``<|endoftext|>``.

Driver side, ``run_rl``: prompts from the instruction train split, the fit under Ray Train, the
first/last logged rewards, then the policy's registered ancestors vs the new policy on held-out
instructions and the safety/helpfulness prompts (``posttrain.compare_stages``).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from shared.data.instructions import check_nonempty, load_sft_dataset
from shared.eval.chat_eval import score_replies
from shared.eval.generate import context_length, stop_token_ids
from shared.registry import Artifact, Registry
from shared.chat_format import CHAT_TEMPLATE, render_chat
from shared.training.posttrain import (RewardScorer, arrow_safe, compare_stages, first_last, fit_trl, model_lineage,
                                       resolve_model, resolve_reward_model, train_metrics)
from shared.training.posttrain_config import RLJobConfig
from shared.training.trl_worker import Algorithm, TrainRows

TRAINERS = {"grpo": ("GRPOTrainer", "GRPOConfig"), "rloo": ("RLOOTrainer", "RLOOConfig")}
LOGGED = ("reward", "reward_std", "rewards/reward_model/mean", "rewards/checker/mean", "kl",
          "completions/mean_length", "completions/clipped_ratio")


# ----------------------------------------------------------------------------- worker side

def stop_at_end_of_turn(model, tokenizer) -> None:
    """Make ``generate`` (and TRL, which reads the eos ids from the generation config) stop at the turn's end."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.generation_config.eos_token_id = stop_token_ids(tokenizer, required=True)
    base.generation_config.pad_token_id = tokenizer.pad_token_id


def fitting_prompts(rows: list[dict[str, Any]], tokenizer, budget: int) -> list[dict[str, Any]]:
    """Rows whose rendered prompt leaves ``max_completion_length`` tokens of context (TRL does not truncate)."""
    kept = [r for r in rows if len(tokenizer(render_chat(r["prompt"], add_generation_prompt=True),
                                             add_special_tokens=False).input_ids) <= budget]
    if not kept:
        raise ValueError(f"every prompt is longer than {budget} tokens, the context left after the rollout budget; "
                         "lower max_completion_length or start from a model with a longer context")
    return kept


def decode_replies(tokenizer, completion_ids: Sequence[Sequence[int]]) -> list[str]:
    """Completions as the checkers and the reward model expect them (special tokens kept, see module docstring)."""
    return [tokenizer.decode(ids, skip_special_tokens=False) for ids in completion_ids]


def reward_functions(reward_model_path: str, tokenizer, device: str = "cpu") -> list:
    """``[reward_model, checker]`` in TRL's reward-function form (keyword arguments, one float per completion)."""
    scorer = RewardScorer(reward_model_path, device)

    def reward_model(prompts, completion_ids, **_) -> list[float]:
        return scorer.score(prompts, decode_replies(tokenizer, completion_ids))

    def checker(prompts, completion_ids, check, **columns) -> list[float]:
        examples = [{"id": i, "check": c} for i, c in zip(columns["id"], check, strict=True)]
        return [row["score"] for row in score_replies(examples, decode_replies(tokenizer, completion_ids))]

    return [reward_model, checker]


def build_trainer(model, tokenizer, cfg: RLJobConfig, rows: TrainRows, args: dict[str, Any]):
    """A ``GRPOTrainer`` or ``RLOOTrainer`` over ``rows`` for the loaded policy with the common ``TrainingArguments``."""
    import trl
    from datasets import Dataset

    if rows.reward_model_path is None:
        raise ValueError("the RL worker needs rows.reward_model_path (the reward model); run it through run_rl")
    tokenizer.chat_template = CHAT_TEMPLATE
    stop_at_end_of_turn(model, tokenizer)
    prompts = fitting_prompts(rows.train, tokenizer, context_length(model) - cfg.max_completion_length)
    trainer_name, config_name = TRAINERS[cfg.algorithm]
    rl_args = getattr(trl, config_name)(
        **args, num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, beta=cfg.beta, reward_weights=[1.0, cfg.checker_weight])
    return getattr(trl, trainer_name)(
        model=model, reward_funcs=reward_functions(rows.reward_model_path, tokenizer, cfg.device), args=rl_args,
        train_dataset=Dataset.from_list(prompts), processing_class=tokenizer)


ALGORITHM = Algorithm("rl", build_trainer)


# ----------------------------------------------------------------------------- driver side

def prompt_rows(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL prompt rows: the conversation up to the reply, the example's id and check (for the checker reward)."""
    return [{"prompt": arrow_safe(ex["messages"][:-1]), "id": ex["id"], "check": dict(ex["check"])}
            for ex in examples]


def run_rl(cfg: RLJobConfig) -> Artifact:
    """RL the policy against the reward model and the checkers; compare with its ancestors; register it."""
    t0 = time.perf_counter()
    registry = Registry(cfg.runs_dir)
    policy = resolve_model(registry, cfg.init_from, cfg.run)
    reward = resolve_reward_model(registry, cfg.reward_model, cfg.run)
    rows = prompt_rows(load_sft_dataset(cfg.data, split="train", max_examples=cfg.max_examples))
    check_nonempty(rows, f"the prompt data {cfg.data!r}", noun="prompts")
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t_data = time.perf_counter() - t0
    fit = fit_trl(cfg, ALGORITHM, policy, out_dir, TrainRows(rows, reward_model_path=reward.path))
    metrics = {**train_metrics(fit.history, fit.final_eval), **first_last(fit.history, LOGGED), "n_prompts": len(rows)}
    t1 = time.perf_counter()
    lineage = model_lineage(registry, policy)
    models = dict(lineage)
    new = cfg.stage if cfg.stage not in models else f"{cfg.run}/{cfg.stage}"
    models[new] = str(out_dir)
    metrics.update(compare_stages(models, new, lineage[-1][0], out_dir, cfg))
    timings = {"data_s": t_data, "train_s": fit.train_s, "eval_s": time.perf_counter() - t1}
    return registry.register(cfg.run, cfg.stage, "hf-model", parents=policy.parent_ids + reward.parent_ids,
                             config=cfg, metrics=metrics, timings=timings,
                             extra={"algorithm": cfg.algorithm, "reward_model": reward.path, "data": cfg.data,
                                    "resumed_from_step": fit.resumed_from_step})
