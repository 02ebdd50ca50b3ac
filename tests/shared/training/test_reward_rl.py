"""Reward model (TRL RewardTrainer) and RL (TRL GRPO / RLOO) on a tiny GPT-2 built here.

Fixtures: a 400-token tokenizer of ours and a 2-layer GPT-2 saved as an HF checkpoint with it;
hand-written arithmetic preference pairs whose chosen reply is the right number and whose
rejected reply is punctuation noise. The worker's steps (``load_model``, then the algorithm's
``build_trainer``) are called directly (outside Ray Train, where ``trl_worker._rank`` falls back
to 0); the drivers under Ray are ``slow``.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from shared.config import ConfigError, load_config
from shared.data.documents import DataError
from shared.training import reward, rl
from shared.training.finetune_config import MethodConfig
from shared.training.posttrain import (ModelRef, RewardScorer, model_lineage, pair_row, resolve_reward_model,
                                       score_with_reward_model)
from shared.training.reward import pair_accuracy, run_reward
from shared.training.rl import fitting_prompts, prompt_rows, reward_functions, run_rl
from shared.training.posttrain_config import PostTrainLoopConfig, RewardJobConfig, RLJobConfig
from shared.training.trl_worker import (TrainRows, TrlSpec, finalize_checkpoint, load_model, load_sequence_classifier,
                                        training_arguments)

VOCAB = 400
NOISE = "#%&*@!?~^"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A random 2-layer GPT-2 (HF checkpoint with our tokenizer and chat template)."""
    from shared.model.gpt import GPT, GPTConfig
    from shared.model.hf import save_hf_checkpoint
    from shared.tokenizer import SAMPLES, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    chat = [f"<|user|>What is {a} + {b}?<|end|><|assistant|>{a + b}<|end|>" for a in range(20) for b in range(5)]
    train_tokenizer(list(SAMPLES.values()) + chat, vocab_size=VOCAB, out_dir=root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=128, n_layer=2, n_head=2, n_embd=32))
    return str(save_hf_checkpoint(model, root / "ckpt", tokenizer_dir=root / "tok"))


def make_pair(a: int, b: int, rng: random.Random) -> dict:
    noise = "".join(rng.choice(NOISE) for _ in range(rng.randint(2, 6)))
    return {"id": f"add:{a}:{b}", "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
            "chosen": [{"role": "assistant", "content": str(a + b)}],
            "rejected": [{"role": "assistant", "content": noise}], "margin": 1.0}


@pytest.fixture(scope="module")
def pairs():
    rng = random.Random(0)
    train = [make_pair(a, b, rng) for a in range(0, 40, 2) for b in range(0, 8, 2)]
    heldout = [make_pair(a, b, rng) for a in range(1, 40, 4) for b in (1, 3)]
    return train, heldout


def job_config(cls, **kw):
    """A job config as the worker receives it (the dataclass itself), CPU, one thread."""
    return cls(cpus_per_worker=1, method=MethodConfig(method=kw.pop("method", "full")), **kw)


def build(algorithm, cfg, model_path: str, out, train_rows, eval_rows=(), reward_model_path=None):
    """What ``trl_train_worker`` does before training: load the model once, then the algorithm's trainer."""
    rows = TrainRows(list(train_rows), list(eval_rows), reward_model_path=reward_model_path)
    spec = TrlSpec(algorithm=algorithm, config=cfg, model_path=model_path, rows=rows)
    model, tokenizer = load_model(algorithm, model_path, cfg)
    args = training_arguments(cfg, str(out), has_eval=bool(rows.eval))
    return algorithm.build_trainer(model, tokenizer, cfg, rows, args), spec


@pytest.fixture(scope="module")
def trained_reward(tiny_ckpt, pairs, tmp_path_factory):
    """The reward model trained 40 steps; its untrained and trained copies saved as HF checkpoints."""
    root = tmp_path_factory.mktemp("reward")
    train, heldout = pairs
    cfg = job_config(RewardJobConfig, train=PostTrainLoopConfig(max_steps=40, batch_size=8, lr=2e-3, warmup=0, max_length=64,
                                                       eval_every=40, log_every=10))
    trainer, _ = build(reward.ALGORITHM, cfg, tiny_ckpt, root / "trainer", map(pair_row, train),
                       map(pair_row, heldout))
    trainer.save_model(str(root / "before"))
    trainer.train()
    trainer.save_model(str(root / "after"))
    return trainer, str(root / "before"), str(root / "after")


# ----------------------------------------------------------------------------- reward model

def test_reward_model_learns_to_rank_heldout_pairs(trained_reward, pairs):
    _, before_dir, after_dir = trained_reward
    before, after = pair_accuracy(before_dir, pairs[1]), pair_accuracy(after_dir, pairs[1])
    assert after["accuracy"] >= 0.9, (before, after)
    assert after["margin"] > before["margin"] + 1.0, (before, after)
    assert after["accuracy"] > before["accuracy"], (before, after)


def test_scoring_matches_the_trainers_tokens_and_forward(trained_reward, pairs):
    from shared.chat_format import render_reply
    trainer, _, after_dir = trained_reward
    pair, row = pairs[1][0], trainer.eval_dataset[0]
    scorer = RewardScorer(after_dir)
    reply = render_reply(pair["chosen"])
    assert reply == f"{pair['chosen'][0]['content']}<|end|>"
    assert scorer.encode([pair["prompt"]], [reply])[0] == row["chosen_ids"]
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=torch.tensor([row["chosen_ids"]])).logits[0, 0].item()
    got = score_with_reward_model(after_dir, [pair["prompt"], pair["prompt"]], [reply, "x"], batch_size=2)[0]
    assert got == pytest.approx(expected, abs=1e-5)  # right padding in a batch must not change the score


def test_lora_reward_model_trains_the_head_and_merges(tiny_ckpt, pairs, tmp_path):
    cfg = job_config(RewardJobConfig, method="lora", train=PostTrainLoopConfig(max_steps=2, batch_size=4, lr=1e-2,
                                                                               warmup=0, max_length=64, log_every=1))
    trainer, spec = build(reward.ALGORITHM, cfg, tiny_ckpt, tmp_path / "trainer", map(pair_row, pairs[0][:8]))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("score" in n and "lora" not in n for n in trainable) and any("lora_A" in n for n in trainable)
    assert not any("score" in n and "lora" in n for n in trainable)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    finalize_checkpoint(trainer, tmp_path / "saved", tmp_path / "final", spec)
    pair = pairs[1][0]
    scorer = RewardScorer(str(tmp_path / "final"))
    ids = scorer.encode([pair["prompt"]], ["5<|end|>"])[0]
    trainer.model.eval()
    with torch.no_grad():
        live = trainer.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert scorer.score_ids([ids])[0] == pytest.approx(live, abs=1e-4)


def test_qlora_reward_model_is_refused(tiny_ckpt):
    with pytest.raises(ConfigError, match="method=full or method=lora"):
        load_sequence_classifier(tiny_ckpt, MethodConfig(method="qlora"))
    with pytest.raises(ConfigError, match="method=full or method=lora"):
        load_config(RewardJobConfig, "reward", "smoke", ["method.method=qlora"])


def test_empty_preference_pairs_fail_before_training(tiny_ckpt, tmp_path):
    from shared.registry import Registry
    registry = Registry(tmp_path)
    (registry.stage_dir("t", "prefs") / "train.jsonl").write_text("")
    registry.register("t", "prefs", "dataset")
    cfg = RewardJobConfig(run="t", init_from=tiny_ckpt, data="prefs", runs_dir=str(tmp_path))
    with pytest.raises(DataError, match="no preference pairs"):
        run_reward(cfg)


def test_a_causal_lm_is_not_taken_for_a_reward_model(tiny_ckpt, trained_reward, tmp_path):
    from shared.registry import Registry
    with pytest.raises(ConfigError, match="not a reward model"):
        resolve_reward_model(Registry(tmp_path), tiny_ckpt, "t")
    # A saved RewardTrainer model is a sequence classifier (tokenizer files come with finalize_checkpoint).
    assert resolve_reward_model(Registry(tmp_path), trained_reward[2], "t").path


# ----------------------------------------------------------------------------- RL

def rl_rows(n: int = 8):
    from shared.data.instructions import load_sft_dataset
    return prompt_rows(load_sft_dataset("builtin:instructions", split="train", max_examples=n))


def test_reward_functions_read_the_raw_completion(tiny_ckpt, trained_reward):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    reward_model, checker = reward_functions(trained_reward[2], tokenizer)
    replies = ["7<|end|>", "7", "zz<|end|>"]
    ids = [tokenizer(r, add_special_tokens=False).input_ids for r in replies]
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}]] * 3
    check = [{"kind": "exact", "answer": "7"}] * 3
    # right and terminated: 1 + 1; right but unterminated: 1 + 0; wrong: 0 + 1
    assert checker(prompts=prompts, completion_ids=ids, check=check, id=["a", "b", "c"]) == [2.0, 1.0, 1.0]
    scores = reward_model(prompts=prompts, completion_ids=ids, check=check, id=["a", "b", "c"])
    assert scores == pytest.approx(RewardScorer(trained_reward[2]).score(prompts, replies), abs=1e-6)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_runs_and_logs_both_rewards(tiny_ckpt, trained_reward, tmp_path, algorithm):
    from shared.chat_format import END
    cfg = job_config(RLJobConfig, algorithm=algorithm, num_generations=2, max_completion_length=8,
                     train=PostTrainLoopConfig(max_steps=2, batch_size=4, lr=1e-3, warmup=0, log_every=1))
    trainer, _ = build(rl.ALGORITHM, cfg, tiny_ckpt, tmp_path / "trainer", rl_rows(),
                       reward_model_path=trained_reward[2])
    end_id = trainer.processing_class.convert_tokens_to_ids(END)
    assert end_id in trainer.eos_token_ids and end_id in trainer.generation_config.eos_token_id
    trainer.train()
    logged = [r for r in trainer.state.log_history if "reward" in r]
    assert len(logged) == 2
    for key in ("rewards/reward_model/mean", "rewards/checker/mean"):
        assert all(isinstance(r[key], float) for r in logged), key
    checker = [r["rewards/checker/mean"] for r in logged]
    assert all(0.0 <= c <= 2.0 for c in checker)


def test_prompts_that_leave_no_room_for_the_rollout_are_dropped(tiny_ckpt):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    rows = [{"prompt": [{"role": "user", "content": "hi"}]}, {"prompt": [{"role": "user", "content": "word " * 200}]}]
    assert fitting_prompts(rows, tokenizer, budget=100) == rows[:1]
    with pytest.raises(ValueError, match="lower max_completion_length"):
        fitting_prompts(rows[1:], tokenizer, budget=100)


def test_rl_config_needs_whole_groups():
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        load_config(RLJobConfig, "rl", "smoke", ["num_generations=3"])


def test_model_lineage_follows_model_parents(tmp_path):
    from shared.registry import Registry
    registry = Registry(tmp_path)
    for stage, kind, parents in (("cpt", "hf-model", []), ("sft", "hf-model", ["cpt"]), ("prefs", "dataset", ["sft"]),
                                 ("reward", "reward-model", ["sft", "prefs"]), ("dpo", "hf-model", ["prefs", "sft"])):
        d = registry.stage_dir("t", stage)
        if kind != "dataset":
            (d / "config.json").write_text(json.dumps({}))
        art = registry.register("t", stage, kind, parents=[f"t/{p}" for p in parents])
    labels = [label for label, _ in model_lineage(registry, ModelRef(art.path, art))]
    assert labels == ["cpt", "sft", "dpo"]
    assert [label for label, _ in model_lineage(registry, ModelRef(art.path, art), generations=2)] == ["sft", "dpo"]


@pytest.mark.parametrize("stage", ["reward", "rl"])
def test_presets_validate(stage):
    from shared.config import preset_path
    cls = {"reward": RewardJobConfig, "rl": RLJobConfig}[stage]
    for preset in ("tiny", "smoke"):
        assert preset_path(stage, preset).read_text().startswith(f"# python -m ray_jobs.{stage} --config {preset}")
        assert load_config(cls, stage, preset).stage == stage


# ----------------------------------------------------------------------------- drivers under Ray

@pytest.mark.slow
def test_reward_then_rl_through_ray(ray_session, tiny_ckpt, pairs, tmp_path):
    """run_reward and run_rl end to end on registered artifacts (prefs, an SFT stand-in), with the tables."""
    from shared.registry import Registry
    import shutil
    registry = Registry(tmp_path)
    shutil.copytree(tiny_ckpt, registry.stage_dir("t", "sft"), dirs_exist_ok=True)
    registry.register("t", "sft", "hf-model")
    prefs = registry.stage_dir("t", "prefs")
    for name, rows in zip(("train.jsonl", "heldout.jsonl"), pairs):
        (prefs / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    registry.register("t", "prefs", "dataset", parents=["t/sft"])
    common = dict(run="t", runs_dir=str(tmp_path), cpus_per_worker=1, eval_examples=8, max_new_tokens=8)
    reward = run_reward(load_config(RewardJobConfig, "reward", "smoke", base=common))
    assert reward.kind == "reward-model" and reward.parents == ["t/sft", "t/prefs"]
    assert {"heldout_accuracy", "eval_accuracy_before", "eval_accuracy"} <= reward.metrics.keys()
    rl = run_rl(load_config(RLJobConfig, "rl", "smoke", base={**common, "init_from": "sft"}))
    assert rl.parents == ["t/sft", "t/reward"]
    assert "first_reward" in rl.metrics and "heldout_win_rate_vs_sft" in rl.metrics
    assert (rl.dir / "heldout_eval.md").exists() and (rl.dir / "config.json").exists()
