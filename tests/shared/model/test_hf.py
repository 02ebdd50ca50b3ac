"""Our GPT <-> HF GPT-2: identical logits both ways, self-contained checkpoints, clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from shared.model.hf import (CheckpointError, gpt_to_hf, hf_config, hf_to_gpt, load_gpt,
                             save_hf_checkpoint)

ATOL = 1e-5  # fp32; both sides run the same math, so only summation order differs


def test_saved_checkpoint_gives_identical_logits_in_transformers(tmp_path, make_model, tokens, hf_logits, gpt_logits):
    model = make_model()
    out = save_hf_checkpoint(model, tmp_path / "ckpt")
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    torch.testing.assert_close(hf_logits(out, tokens), gpt_logits(model, tokens), atol=ATOL, rtol=0)


def test_load_gpt_restores_the_model_with_tied_embeddings(tmp_path, make_model, tokens, gpt_logits):
    model = make_model()
    loaded = load_gpt(save_hf_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    torch.testing.assert_close(gpt_logits(loaded, tokens), gpt_logits(model, tokens), atol=0, rtol=0)


def test_round_trip_hf_to_gpt_to_hf_is_exact(tiny_cfg, tokens):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(hf_config(tiny_cfg)).eval()
    back = gpt_to_hf(hf_to_gpt(hf))
    for name, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    with torch.no_grad():
        torch.testing.assert_close(back(tokens).logits, hf(tokens).logits, atol=0, rtol=0)


def test_load_gpt_reads_hub_layout_without_prefix_and_with_mask_buffers(tmp_path, make_model, tokens, gpt_logits):
    # openai-community/gpt2 was saved from GPT2Model: keys lack "transformer." and carry attn.bias buffers.
    from safetensors.torch import save_file

    model = make_model()
    hf = gpt_to_hf(model)
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    (tmp_path / "hub").mkdir()
    save_file(sd, tmp_path / "hub" / "model.safetensors")
    hf.config.to_json_file(tmp_path / "hub" / "config.json")
    torch.testing.assert_close(gpt_logits(load_gpt(tmp_path / "hub"), tokens), gpt_logits(model, tokens),
                               atol=ATOL, rtol=0)


def test_tokenizer_is_copied_and_its_ids_set(tmp_path, make_model, make_tokenizer_dir):
    from transformers import AutoConfig, AutoTokenizer

    out = save_hf_checkpoint(make_model(), tmp_path / "ckpt", tokenizer_dir=make_tokenizer_dir(20),
                             extra_config={"journey_stage": "pretrain"})
    tok = AutoTokenizer.from_pretrained(out)
    config = AutoConfig.from_pretrained(out)
    assert len(tok) == 20 and tok.decode(tok("w3 w4")["input_ids"]) == "w3 w4"
    assert (config.eos_token_id, config.bos_token_id, config.pad_token_id) == (0, 0, 1)
    assert config.journey_stage == "pretrain"


def test_tokenizer_larger_than_the_vocabulary_is_refused_before_writing(tmp_path, make_model, make_tokenizer_dir):
    with pytest.raises(CheckpointError, match=r"has 150 tokens but the model's vocabulary has only 100"):
        save_hf_checkpoint(make_model(), tmp_path / "ckpt", tokenizer_dir=make_tokenizer_dir(150))
    assert not (tmp_path / "ckpt").exists()


def test_extra_config_may_not_change_the_architecture(tmp_path, make_model):
    with pytest.raises(CheckpointError, match=r"architecture fields \['n_embd'\]"):
        save_hf_checkpoint(make_model(), tmp_path / "ckpt", extra_config={"n_embd": 64})


def test_wrong_architecture_names_the_fix(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    llama.save_pretrained(tmp_path / "llama")
    with pytest.raises(CheckpointError, match=r"is a llama model, not GPT-2; .*journey import"):
        load_gpt(tmp_path / "llama")


def test_missing_directory_and_missing_weights(tmp_path, make_model):
    with pytest.raises(CheckpointError, match=r"not found; pass a directory holding config.json and model.safetensors"):
        load_gpt(tmp_path / "nope")
    out = save_hf_checkpoint(make_model(), tmp_path / "ckpt")
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors .*weights are missing"):
        load_gpt(out)


def test_config_and_weight_shapes_that_disagree(tmp_path, make_model):
    out = save_hf_checkpoint(make_model(), tmp_path / "ckpt")
    config = json.loads((out / "config.json").read_text())
    config["n_positions"] = 64
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"transformer.wpe.weight \(32, 32\) \(needs \(64, 32\)\)"):
        load_gpt(out)


def test_hf_features_our_class_lacks_are_refused(tmp_path, make_model):
    out = save_hf_checkpoint(make_model(), tmp_path / "ckpt")
    config = json.loads((out / "config.json").read_text())
    config["activation_function"] = "relu"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"activation_function='relu'"):
        load_gpt(out)
