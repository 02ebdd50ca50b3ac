"""Full / LoRA / QLoRA preparation on tiny GPT-2 (ours, converted to HF) and tiny Llama models.

Expected adapter placements and parameter counts are written out from the architectures' shapes,
not derived from the code under test.
"""
from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from shared.config import ConfigError, from_dict
from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import gpt_to_hf
from shared.training import finetune_methods as fm
from shared.training.finetune_config import LLAMA31_8B_QLORA, MethodConfig

VOCAB, SEQ, N_LAYER = 64, 16, 2
GPT2_ATTN = {"attn.c_attn", "attn.c_proj"}
GPT2_MLP = {"mlp.c_fc", "mlp.c_proj"}
LLAMA_ATTN = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
LLAMA_MLP = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
# Sum of (in + out) over one layer's targeted matrices; a LoRA of rank r adds r * (in + out) per matrix.
# GPT-2, d=32: c_attn 32->96, attn.c_proj 32->32 | c_fc 32->128, mlp.c_proj 128->32.
# Llama, d=32, 2 heads of 16, 1 KV head, ffn 64: q 32->32, k 32->16, v 32->16, o 32->32 | gate, up 32->64, down 64->32.
IN_PLUS_OUT = {("gpt2", "attention"): 128 + 64, ("gpt2", "mlp"): 160 + 160,
               ("llama", "attention"): 64 + 48 + 48 + 64, ("llama", "mlp"): 96 + 96 + 96}
EXPECTED = {"gpt2": {"attention": GPT2_ATTN, "attention+mlp": GPT2_ATTN | GPT2_MLP, "all-linear": GPT2_ATTN | GPT2_MLP},
            "llama": {"attention": LLAMA_ATTN, "attention+mlp": LLAMA_ATTN | LLAMA_MLP,
                      "all-linear": LLAMA_ATTN | LLAMA_MLP}}


def make_base(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "gpt2":
        return gpt_to_hf(GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=N_LAYER, n_head=2, n_embd=32)))
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYER,
                      num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(cfg).eval()


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def lora(**kw) -> MethodConfig:
    return MethodConfig(**{"method": "lora", "lora_r": 8, "lora_dropout": 0.0, **kw})


def adapted_layers(model) -> list[str]:
    """``parent.leaf`` of every module that got a LoRA adapter, one entry per layer instance."""
    return [".".join(n.split(".")[-2:]) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(1))


def logits(model, idx) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=idx).logits


# ----------------------------------------------------------------------------- targets

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("spec", ["attention", "attention+mlp", "all-linear"])
def test_named_sets_put_adapters_on_exactly_the_right_layers(arch, spec, recwarn):
    model = fm.prepare_model(make_base(arch), lora(target_modules=spec))
    layers = adapted_layers(model)
    assert set(layers) == EXPECTED[arch][spec]
    assert len(layers) == N_LAYER * len(EXPECTED[arch][spec])  # every block, no module twice, no LM head
    # GPT-2's Conv1D layout is declared up front (fan_in_fan_out), not left to PEFT to patch with a warning.
    assert not [w for w in recwarn if "fan_in_fan_out" in str(w.message)]


def test_attention_on_gpt2_disambiguates_c_proj():
    # c_proj exists in attention and MLP; a bare "c_proj" would put adapters on the MLP too.
    assert fm.target_modules_for(make_base("gpt2"), "attention") == ["attn.c_proj", "c_attn"]
    assert fm.target_modules_for(make_base("llama"), "attention") == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert fm.target_modules_for(make_base("llama"), "all-linear") == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("spec,kinds", [("attention", ["attention"]), ("attention+mlp", ["attention", "mlp"])])
def test_trainable_count_is_r_times_in_plus_out(arch, spec, kinds):
    base_total = sum(p.numel() for p in make_base(arch).parameters())
    expected_r8 = 8 * N_LAYER * sum(IN_PLUS_OUT[(arch, k)] for k in kinds)
    trainable8, total8 = fm.trainable_parameters(fm.prepare_model(make_base(arch), lora(target_modules=spec)))
    trainable16, _ = fm.trainable_parameters(fm.prepare_model(make_base(arch), lora(target_modules=spec, lora_r=16)))
    assert trainable8 == expected_r8
    assert trainable16 == 2 * trainable8
    assert total8 == base_total + trainable8


def test_explicit_targets_are_checked_against_the_model():
    model = make_base("gpt2")
    assert fm.target_modules_for(model, ["attn.c_attn"]) == ["attn.c_attn"]
    with pytest.raises(ConfigError, match=r"'q_proj' matches no module.*attn\.c_attn.*mlp\.c_fc"):
        fm.target_modules_for(model, ["attn.c_attn", "q_proj"])
    with pytest.raises(ConfigError, match="not a linear layer"):
        fm.target_modules_for(model, ["attn"])  # the GPT2Attention block, not a matrix
    # A named set that the model's layer names do not reveal fails and asks for explicit names.
    with pytest.raises(ConfigError, match=r"found no attention layers.*target_modules=\[q_proj,v_proj\]"):
        fm.target_modules_for(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)), "attention")
    # A comma-separated override string is a list of names.
    peft_model = fm.prepare_model(model, lora(target_modules="c_fc, attn.c_attn"))
    assert set(adapted_layers(peft_model)) == {"mlp.c_fc", "attn.c_attn"}


# ----------------------------------------------------------------------------- methods

def test_full_keeps_every_parameter_trainable():
    base = make_base("llama")
    base.requires_grad_(False)  # even a base that arrives frozen
    model = fm.prepare_model(base, MethodConfig(method="full", gradient_checkpointing=True))
    trainable, total = fm.trainable_parameters(model)
    assert trainable == total == sum(p.numel() for p in make_base("llama").parameters())
    assert not isinstance(model, PeftModel) and model.is_activation_checkpointing


def test_qlora_refuses_cpu_and_missing_bitsandbytes(monkeypatch, tmp_path):
    cfg = MethodConfig(method="qlora")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU with bitsandbytes.*use method=lora"):
            fm.prepare_model(make_base("gpt2"), cfg, "cpu")
        # Refused before touching the path: no download of a base that could not be used.
        with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU"):
            fm.load_for_finetuning(tmp_path / "does-not-exist", cfg, "cpu")
    with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU"):
        fm.require_qlora_runtime("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fm, "_bnb_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        fm.require_qlora_runtime("cuda")


def test_bnb_config_follows_the_method_config():
    q = fm.bnb_config(MethodConfig(method="qlora", quant_type="fp4", double_quant=False, compute_dtype="fp16"))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and not q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float16


def test_method_config_validation_and_llama_preset():
    assert MethodConfig(lora_r=8).alpha == 16 and MethodConfig(lora_r=8, lora_alpha=8).alpha == 8
    for bad, match in [({"lora_r": 0}, "lora_r"), ({"lora_dropout": 1.0}, "lora_dropout"),
                       ({"target_modules": "atention"}, "did you mean 'attention'"),
                       ({"target_modules": []}, "empty"), ({"method": "prefix"}, "not one of")]:
        with pytest.raises(ConfigError, match=match):
            from_dict(MethodConfig, bad)
    assert from_dict(MethodConfig, {"target_modules": "q_proj,v_proj"}).target_spec() == ["q_proj", "v_proj"]
    preset = from_dict(MethodConfig, LLAMA31_8B_QLORA["method"])
    assert (preset.method, preset.quant_type, preset.double_quant) == ("qlora", "nf4", True)
    assert preset.compute_dtype == "bf16"
    assert preset.target_spec() == "all-linear" and preset.lora_r == 16 and preset.gradient_checkpointing
    assert LLAMA31_8B_QLORA["optim"] == "paged_adamw_8bit"


# ----------------------------------------------------------------------------- training and saving

def test_lora_steps_reduce_loss_and_leave_the_base_alone(tmp_path):
    src = tmp_path / "base"
    make_base("gpt2").save_pretrained(src)
    make_tokenizer().save_pretrained(src)
    model, tokenizer = fm.load_for_finetuning(src, lora(target_modules="all-linear", gradient_checkpointing=True))
    assert isinstance(model, PeftModel) and model.get_base_model().is_activation_checkpointing
    assert len(tokenizer) == VOCAB
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    idx = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(input_ids=idx, labels=idx).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses  # ~4.17 (uniform over 64) -> ~3.65
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merged_checkpoint_matches_base_plus_adapter(arch, tmp_path):
    model = fm.prepare_model(make_base(arch), lora(target_modules="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero; a non-zero update is what the merge must preserve
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    model.eval()
    idx = batch()
    expected = logits(model, idx)
    assert not torch.allclose(expected, logits(make_base(arch), idx), atol=1e-3)  # the adapter matters
    out = fm.merge_and_save(model, tmp_path / "merged", make_tokenizer())

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == type(make_base(arch)).__name__
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(logits(merged, idx), expected, atol=1e-5, rtol=0)
    reloaded = PeftModel.from_pretrained(make_base(arch), out / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, idx), expected, atol=1e-5, rtol=0)
    # The caller's model is still an unmerged PeftModel.
    assert adapted_layers(model) and torch.equal(logits(model, idx), expected)


def test_merge_and_save_refuses_a_model_without_adapters(tmp_path):
    with pytest.raises(ConfigError, match="save_pretrained"):
        fm.merge_and_save(make_base("gpt2"), tmp_path, make_tokenizer())


# ----------------------------------------------------------------------------- memory

def test_cpu_memory_tracker_is_comparable_across_experiments():
    mb = 1 << 20
    with fm.MemoryTracker("cpu") as big:
        x = torch.ones(160 * mb // 4)  # 160 MB, touched
        del x
    with fm.MemoryTracker("cpu") as small:
        y = torch.ones(48 * mb // 4)
        del y
    assert big.result["kind"] == small.result["kind"] == "cpu_peak_rss"
    assert big.result["bytes"] >= 150 * mb
    # Were the peak not reset, the second span would read 0 (still under the first one's peak).
    assert 40 * mb <= small.result["bytes"] <= 100 * mb
    assert fm.peak_memory("cpu")["bytes"] >= small.result["bytes"]


@pytest.mark.gpu
def test_cuda_memory_tracker():
    with fm.MemoryTracker("cuda") as mem:
        x = torch.ones(64 << 18, device="cuda")  # 64 MB
        del x
    assert mem.result["kind"] == "cuda_max_allocated" and mem.result["bytes"] >= 64 << 20


@pytest.mark.gpu
def test_qlora_loads_in_4bit_and_trains(tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install bitsandbytes")
    torch.manual_seed(0)
    # 64-wide so every matrix splits into whole 64-value quantization blocks.
    base = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=N_LAYER, num_attention_heads=2, num_key_value_heads=1))
    base_total = sum(p.numel() for p in base.parameters())
    base.save_pretrained(tmp_path / "base")
    make_tokenizer().save_pretrained(tmp_path / "base")
    cfg = MethodConfig(method="qlora", lora_r=8, target_modules="all-linear", gradient_checkpointing=True)
    model, tokenizer = fm.load_for_finetuning(tmp_path / "base", cfg, "cuda")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    trainable, total = fm.trainable_parameters(model)
    assert total == base_total + trainable and 0 < trainable < total
    idx = batch().cuda()
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(input_ids=idx, labels=idx).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)
    out = fm.merge_and_save(model, tmp_path / "merged", tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in merged.state_dict()) and merged.dtype == torch.bfloat16
    assert torch.isfinite(logits(merged, idx.cpu()).float()).all()
