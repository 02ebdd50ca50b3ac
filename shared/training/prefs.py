"""Preference pairs made from a model's own outputs (the input of DPO and of the reward model).

1. Pick ``num_prompts`` training instructions (and a tenth as many held-out ones for DPO's eval),
   plus ``hard_safety_prompts`` training prompts of the hard safety set (``pick_hard_safety``).
2. Sample ``samples_per_prompt`` replies per prompt from the model, plus its greedy reply when
   ``include_greedy``: a Ray Data pipeline whose actors each hold the model (``map_batches`` over a
   callable class: batch inference).
3. Score every reply (``chat_eval.score_replies``: the example's exact checker, the refusal rule,
   reference overlap, well-formedness) and, when given, add a reward model's score.
4. Pair the best reply (chosen) with the worst (rejected) when the margin is at least
   ``min_margin``; among equally bad replies the greedy one is rejected, so the pairs push on the
   mistakes the model actually makes when it decodes greedily. When no sample passes the check and ``reference_fallback`` is on, the dataset's
   own reference reply is chosen instead; every pair records ``chosen_source`` (model | reference).
   With ``pairs_per_prompt`` > 1 a prompt gives up to that many pairs: further distinct couples of
   distinct replies (another right reply, another wrong one), each at least ``min_margin`` apart, worst-first on the
   rejected side so the greedy mistake is used first. With the ``balance_refusals`` option as many
   pairs choose a refusal as reject one (the function of the same name).

The artifact is a ``dataset``: ``train.jsonl`` / ``heldout.jsonl`` in the preference schema
(``shared.data.instructions.schema``) plus ``stats.json``.
"""
from __future__ import annotations

import json
import random
from collections import Counter
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.cluster import ensure_ray
from shared.data.instructions import check_nonempty, load_sft_dataset
from shared.data.instructions.checks import is_refusal, parse_response
from shared.data.instructions.safety import hard_examples
from shared.eval.chat_eval import score_replies, summarize
from shared.eval.generate import generate_replies, load_chat_model
from shared.registry import Artifact, Registry
from shared.chat_format import render_reply
from shared.training.posttrain import resolve_model, score_with_reward_model
from shared.training.posttrain_config import PrefsJobConfig

PASSING_TASK_SCORE = 1.0  # the task part of chat_eval's score when the reply is right


class ReplySampler:
    """Ray Data actor: holds one model; for each conversation of a batch, its greedy reply first
    (when ``greedy``) and then ``n`` sampled ones."""

    def __init__(self, model_path: str, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 threads: int, seed: int, greedy: bool = False, device: str = "cpu"):
        import torch
        torch.set_num_threads(threads)
        self.model, self.tokenizer = load_chat_model(model_path, device=device)
        self.opts = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self.seed, self.greedy = seed, greedy

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        conversations = [json.loads(p) for p in batch["prompt"]]
        replies = generate_replies(self.model, self.tokenizer, conversations, batch_size=len(conversations),
                                   seed=self.seed + int(batch["idx"][0]), **self.opts)
        if self.greedy:
            first = generate_replies(self.model, self.tokenizer, conversations, batch_size=len(conversations),
                                     max_new_tokens=self.opts["max_new_tokens"])
            replies = [g + r for g, r in zip(first, replies)]
        return {"idx": batch["idx"], "replies": np.array([json.dumps(r) for r in replies])}


def sample_replies(model_path: str, examples: list[dict[str, Any]], cfg: PrefsJobConfig) -> list[list[str]]:
    """``cfg.samples_per_prompt`` sampled replies per example, in example order (Ray Data)."""
    import ray

    ensure_ray()
    items = [{"idx": i, "prompt": json.dumps(ex["messages"][:-1])} for i, ex in enumerate(examples)]
    ds = ray.data.from_items(items).map_batches(
        ReplySampler, batch_size=cfg.batch_size, concurrency=cfg.num_workers, num_cpus=cfg.cpus_per_worker,
        num_gpus=1 if cfg.use_gpu else 0,  # Ray gives each actor its own GPU (CUDA_VISIBLE_DEVICES): "cuda" is it
        fn_constructor_kwargs=dict(model_path=model_path, n=cfg.samples_per_prompt, temperature=cfg.temperature,
                                   top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                   threads=cfg.cpus_per_worker, seed=cfg.seed, greedy=cfg.include_greedy,
                                   device="cuda" if cfg.use_gpu else "cpu"))
    out: list[list[str]] = [[] for _ in examples]
    for row in ds.iter_rows():
        out[int(row["idx"])] = json.loads(row["replies"])
    return out


def reply_message(reply: str) -> dict[str, Any]:
    """A generated reply as an assistant message (a tool call when it parses as one)."""
    parsed = parse_response(reply)
    if parsed["tool_call"] is not None:
        return {"role": "assistant", "content": "", "tool_call": parsed["tool_call"]}
    return {"role": "assistant", "content": parsed["text"]}


def score_candidates(examples: list[dict], replies: list[list[str]]) -> list[list[dict[str, Any]]]:
    """Each example's replies scored by its own check (``chat_eval.score_replies`` rows, reply included)."""
    return [score_replies([example] * len(candidates), candidates)
            for example, candidates in zip(examples, replies, strict=True)]


def make_pairs(examples: list[dict], scored_replies: list[list[dict[str, Any]]], min_margin: float,
               reference_fallback: bool, rewards: list[list[float]] | None = None,
               pairs_per_prompt: int = 1) -> list[dict[str, Any]]:
    """Chosen/rejected pairs with their margin from ``score_candidates`` rows (see the module docstring).

    Up to ``pairs_per_prompt`` pairs per prompt, each a distinct (chosen, rejected) couple of distinct
    replies; the first tried is the best reply against the worst (the greedy one among equals).
    """
    pairs = []
    for i, (example, scored) in enumerate(zip(examples, scored_replies, strict=True)):
        scores = [r["score"] + (rewards[i][j] if rewards else 0.0) for j, r in enumerate(scored)]
        # Distinct replies, first occurrence kept (the greedy reply comes first when sampled).
        seen: dict[str, int] = {}
        for j, r in enumerate(scored):
            seen.setdefault(r["reply"], j)
        distinct = list(seen.values())
        by_best = sorted(distinct, key=lambda j: (-scores[j], j))   # chosen candidates, best first
        by_worst = sorted(distinct, key=lambda j: (scores[j], j))   # rejected candidates, worst (greedy) first
        best = by_best[0]
        task_ok = scored[best]["score"] - (1.0 if scored[best]["format_ok"] else 0.0) >= PASSING_TASK_SCORE
        if reference_fallback and not task_ok:
            target = example["messages"][-1]
            reference_score = score_replies([example], [render_reply([target])])[0]["score"]
            chosen_side = [(target, reference_score)]
            source = "reference"
        else:
            chosen_side = [(reply_message(scored[j]["reply"]), scores[j]) for j in by_best]
            source = "model"
        rejected_side = [(reply_message(scored[j]["reply"]), scores[j]) for j in by_worst]
        # Couples ordered so that each new pair brings a new reply on one side: (0,0), (0,1), (1,0), (1,1), ...
        couples = sorted(((c, r) for c in range(len(chosen_side)) for r in range(len(rejected_side))),
                         key=lambda cr: (max(cr), cr[1], cr[0]))
        taken: list[tuple[dict, dict]] = []
        for c, r in couples:
            if len(taken) >= pairs_per_prompt:
                break
            (chosen, chosen_score), (rejected, rejected_score) = chosen_side[c], rejected_side[r]
            margin = chosen_score - rejected_score
            # An unterminated "42" and the reference "42<|end|>" are the same message once parsed: the
            # defect (no end of turn) has no conversational form, so such a pair would teach nothing.
            if margin < min_margin or rejected == chosen or (chosen, rejected) in taken:
                continue
            taken.append((chosen, rejected))
            pairs.append({"id": example["id"], "task": example.get("task", ""), "prompt": example["messages"][:-1],
                          "chosen": [chosen], "rejected": [rejected], "margin": margin,
                          "chosen_source": source})
    return pairs


def refusal_side(pair: dict[str, Any]) -> str | None:
    """``"chosen"`` or ``"rejected"``: the side of ``pair`` that is a refusal when exactly one is, else None."""
    refused = [bool(m.get("content")) and is_refusal(m["content"]) for m in (pair["chosen"][0], pair["rejected"][0])]
    return ("chosen" if refused[0] else "rejected") if refused[0] != refused[1] else None


def balance_refusals(pairs: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """``pairs`` with as many refusal-chosen as refusal-rejected pairs (order kept; the rest untouched).

    A small SFT model's samples disagree about refusing mostly on harmless-but-edgy prompts, so its
    pairs reject refusals far more often than they choose them, and DPO learns to refuse less
    everywhere, the harmful prompts framed like the harmless ones included (issue 20). Dropping a
    seeded subset of the larger side leaves only the signal of which prompts to refuse.
    """
    sides: dict[str, list[int]] = {"chosen": [], "rejected": []}
    for i, pair in enumerate(pairs):
        side = refusal_side(pair)
        if side is not None:
            sides[side].append(i)
    keep = min(len(v) for v in sides.values())
    rng = random.Random(f"{seed}:balance-refusals")
    dropped = {i for v in sides.values() for i in v} - {i for v in sides.values() for i in rng.sample(v, keep)}
    return [p for i, p in enumerate(pairs) if i not in dropped]


def pick_examples(source: str, split: str, count: int, seed: int) -> list[dict[str, Any]]:
    examples = load_sft_dataset(source, split=split)
    rng = random.Random(seed)
    return rng.sample(examples, min(count, len(examples)))


def pick_hard_safety(count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict[str, Any]]:
    """Up to ``count`` hard safety training prompts not in ``exclude`` (ids): half indirect harmful, half borderline.

    They come from every combination of the hard set's training items (``safety.hard_examples("train")``,
    a few hundred), of which SFT saw only ``HARD_SHARE`` of the refusal family: the prompts where a
    small model is least sure whether to refuse, so its samples disagree and give pairs. Held-out
    items are never drawn (``tests/shared/data/test_heldout_overlap.py``).
    """
    pool = hard_examples("train")
    rng = random.Random(f"{seed}:hard-safety")
    harmful, helpful = ([e for e in pool[side] if e["id"] not in exclude] for side in ("harmful", "helpful"))
    take_harmful = min((count + 1) // 2, len(harmful))
    take_helpful = min(count - take_harmful, len(helpful))
    return rng.sample(harmful, take_harmful) + rng.sample(helpful, take_helpful)


def run_prefs(cfg: PrefsJobConfig) -> Artifact:
    """Sample, score and pair; write and register the preference dataset."""
    t0 = time.perf_counter()
    registry = Registry(cfg.runs_dir)
    model = resolve_model(registry, cfg.init_from, cfg.run)
    reward = registry.resolve(cfg.reward_model, run=cfg.run) if cfg.reward_model else None
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    stats: dict[str, Any] = {}
    for split, count in (("train", cfg.num_prompts), ("heldout", max(1, cfg.num_prompts // 10))):
        examples = pick_examples(cfg.data, split, count, cfg.seed)
        if split == "train" and cfg.hard_safety_prompts:
            examples += pick_hard_safety(cfg.hard_safety_prompts, cfg.seed, {e["id"] for e in examples})
        replies = sample_replies(model.path, examples, cfg)
        rewards = _reward_scores(reward, examples, replies) if reward else None
        scored = score_candidates(examples, replies)
        pairs = make_pairs(examples, scored, cfg.min_margin, cfg.reference_fallback, rewards, cfg.pairs_per_prompt)
        if cfg.balance_refusals:
            pairs = balance_refusals(pairs, cfg.seed)
        if split == "train":
            check_nonempty(pairs, f"pairs sampled from {model.path}")
        _write_jsonl(out_dir / f"{split}.jsonl", pairs)
        stats.update(_stats(split, examples, scored, pairs))
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    parents = model.parent_ids + ([reward.id] if reward else [])
    return registry.register(cfg.run, cfg.stage, "dataset", parents=parents, config=cfg, metrics=stats,
                             timings={"sample_s": time.perf_counter() - t0})


def _reward_scores(reward: Artifact, examples: list[dict], replies: list[list[str]]) -> list[list[float]]:
    flat_prompts = [ex["messages"][:-1] for ex, rs in zip(examples, replies) for _ in rs]
    flat = score_with_reward_model(str(reward.dir), flat_prompts, [r for rs in replies for r in rs])
    out, k = [], 0
    for rs in replies:
        out.append(flat[k:k + len(rs)])
        k += len(rs)
    return out


def _stats(split: str, examples: list[dict], scored: list[list[dict]], pairs: list[dict]) -> dict[str, Any]:
    sample = summarize([row for rows in scored for row in rows])
    refusals = Counter(refusal_side(p) for p in pairs)
    return {f"{split}_prompts": len(examples), f"{split}_pairs": len(pairs),
            f"{split}_pairs_reference_chosen": sum(p["chosen_source"] == "reference" for p in pairs),
            f"{split}_pairs_refusal_chosen": refusals["chosen"], f"{split}_pairs_refusal_rejected": refusals["rejected"],
            f"{split}_mean_margin": float(np.mean([p["margin"] for p in pairs])) if pairs else 0.0,
            f"{split}_sample_exact_match": sample["exact_match"], f"{split}_sample_format_ok": sample["format_ok"]}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
