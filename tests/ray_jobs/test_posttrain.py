"""Post-training stages on a tiny model under Ray Train: SFT, DeepSpeed ZeRO on 2 workers, prefs, DPO."""
from __future__ import annotations

import json

import pytest
import torch

from shared.config import ConfigError, load_config
from shared.data import DataError
from shared.registry import Registry
from shared.training.posttrain_config import DPOJobConfig, PrefsJobConfig, SFTJobConfig
from tests.ray_jobs.conftest import register_random_model


@pytest.fixture(scope="module")
def base_model(smoke_tokenizer):
    """A random tiny GPT-2 registered as ``t/base`` (parent: the tokenizer); returns the runs dir."""
    register_random_model(smoke_tokenizer, "base")
    return smoke_tokenizer


def _sft_config(runs, stage: str, **over):
    base = {"run": "t", "stage": stage, "runs_dir": str(runs), "init_from": "t/base", "overwrite": True}
    base.update(over)
    return load_config(SFTJobConfig, "sft", "smoke", base=base)


@pytest.fixture(scope="module")
def sft_artifact(base_model, ray_session):
    from shared.training.sft import run_sft
    cfg = _sft_config(base_model, "sft", max_examples=600, train={"max_steps": 40, "lr": 0.005, "batch_size": 16,
                                                                 "max_length": 64, "eval_every": 20, "log_every": 5})
    return run_sft(cfg)


def test_sft_loss_falls_and_artifact_has_lineage_and_base_comparison(sft_artifact):
    m = sft_artifact.metrics
    assert m["eval_loss"] < m["first_eval_loss"] - 0.5, m
    assert sft_artifact.parents == ["t/base"]
    assert (sft_artifact.dir / "heldout_eval.md").exists() and (sft_artifact.dir / "loss_curve.png").exists()
    assert {"base_format_ok", "format_ok", "base_exact_match", "exact_match"} <= set(m)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    AutoModelForCausalLM.from_pretrained(sft_artifact.dir)
    assert "{%- generation -%}" in AutoTokenizer.from_pretrained(sft_artifact.dir).chat_template


# ZeRO-3 is slow: its path is covered by the default ZeRO-2 run, and against DDP in test_posttrain_parallel (slow)
@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_deepspeed_zero_two_workers_loss_falls(base_model, ray_session, stage):
    """2 Ray Train workers, DeepSpeed ZeRO-2/3 on its CPU accelerator over gloo: a real multi-process fine-tune."""
    from transformers import AutoModelForCausalLM
    from shared.training.sft import run_sft
    cfg = _sft_config(base_model, f"zero{stage}", max_examples=400, eval_examples=32, num_workers=2,
                      cpus_per_worker=1, parallelism=f"zero{stage}",
                      train={"max_steps": 16, "lr": 0.005, "batch_size": 8, "max_length": 64, "eval_every": 8,
                             "log_every": 4})
    art = run_sft(cfg)
    assert art.metrics["eval_loss"] < art.metrics["first_eval_loss"] - 0.2, art.metrics
    model = AutoModelForCausalLM.from_pretrained(art.dir)  # ZeRO-3 shards were gathered into a normal checkpoint
    assert model.transformer.h[0].attn.c_attn.weight.shape == (48, 144)


def test_lora_sft_keeps_adapter_and_merged_checkpoint(base_model, ray_session):
    from shared.training.sft import run_sft
    cfg = _sft_config(base_model, "lora", max_examples=200, eval_examples=16, method={"method": "lora", "lora_r": 8},
                      train={"max_steps": 4, "batch_size": 8, "max_length": 64, "eval_every": 4, "log_every": 2})
    art = run_sft(cfg)
    assert (art.dir / "adapter" / "adapter_config.json").exists()
    assert json.loads((art.dir / "config.json").read_text())["model_type"] == "gpt2"


def test_bad_lora_target_and_qlora_on_cpu_fail_before_training(base_model):
    from shared.training.sft import run_sft
    with pytest.raises(ConfigError, match="no_such_proj"):
        run_sft(_sft_config(base_model, "bad", method={"method": "lora", "target_modules": ["no_such_proj"]}))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="GPU"):
            run_sft(_sft_config(base_model, "bad", method={"method": "qlora"}))


def test_sft_dataset_missing_fields_is_one_clear_error(base_model, tmp_path):
    from shared.training.sft import run_sft
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "task": "t", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="check"):
        run_sft(_sft_config(base_model, "bad", data=str(bad)))


@pytest.fixture(scope="module")
def prefs_artifact(sft_artifact, base_model):
    from shared.training.prefs import run_prefs
    cfg = load_config(PrefsJobConfig, "prefs", "smoke", base={"run": "t", "runs_dir": str(base_model),
                                                               "init_from": "t/sft", "num_prompts": 30})
    return run_prefs(cfg)


def test_prefs_pairs_come_from_samples_with_margins(prefs_artifact):
    rows = [json.loads(line) for line in (prefs_artifact.dir / "train.jsonl").read_text().splitlines()]
    assert rows and prefs_artifact.metrics["train_pairs"] == len(rows)
    assert all(r["margin"] >= 0.5 for r in rows)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    assert prefs_artifact.parents == ["t/sft"]


def test_dpo_trains_against_the_sft_reference_and_writes_the_tables(prefs_artifact, base_model):
    from shared.training.dpo import run_dpo
    cfg = load_config(DPOJobConfig, "dpo", "smoke", base={"run": "t", "runs_dir": str(base_model),
                                                           "init_from": "t/sft", "data": "t/prefs",
                                                           "eval_examples": 16})
    art = run_dpo(cfg)
    assert art.parents == ["t/sft", "t/prefs"]
    for name in ("heldout_eval.md", "safety_helpfulness.md", "safety_helpfulness.json", "safety_hard.json"):
        assert (art.dir / name).exists()
    table = (art.dir / "safety_helpfulness.md").read_text()
    assert "| base |" in table and "| sft |" in table and "| dpo |" in table
    assert 0.0 <= art.metrics["heldout_win_rate_vs_sft"] <= 1.0
    assert "last_rewards_margins" in art.metrics and "last_eval_rewards_accuracies" in art.metrics


def test_empty_preference_set_is_one_clear_error(base_model, tmp_path, sft_artifact):
    from shared.training.dpo import run_dpo
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = load_config(DPOJobConfig, "dpo", "smoke", base={"run": "t", "runs_dir": str(base_model), "stage": "dpo2",
                                                           "init_from": "t/sft", "data": str(empty)})
    with pytest.raises(DataError, match="no preference pairs"):
        run_dpo(cfg)


def test_lora_sft_on_a_llama_architecture_checkpoint(base_model, ray_session, tmp_path):
    """Model-agnostic: the same SFT path fine-tunes a Llama-architecture HF checkpoint (LoRA, all linear)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from shared.training.sft import run_sft
    tok = AutoTokenizer.from_pretrained(Registry(base_model).resolve("t/tokenizer").dir)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id))
    path = tmp_path / "tiny-llama"
    llama.save_pretrained(path)
    tok.save_pretrained(path)
    cfg = _sft_config(base_model, "llama-lora", init_from=str(path), max_examples=400, eval_examples=24,
                      method={"method": "lora", "lora_r": 8, "target_modules": "all-linear"},
                      train={"max_steps": 20, "lr": 0.01, "batch_size": 16, "max_length": 64, "eval_every": 10,
                             "log_every": 5})
    art = run_sft(cfg)
    assert art.parents == []  # an HF directory outside the registry
    assert art.metrics["eval_loss"] < art.metrics["first_eval_loss"], art.metrics
    adapter = json.loads((art.dir / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert json.loads((art.dir / "config.json").read_text())["model_type"] == "llama"
