"""GGUF export of our MoE checkpoints: llama.cpp loads them and computes what transformers computes.

The models (``shared.model.moe``, saved by ``save_moe_checkpoint``, every weight random with std 0.1 so a
misplaced tensor shows; 2 layers, n_embd 64, 2 heads of 32, vocab = our tokenizer + 3 unused rows):
- ``top1``: Qwen2-MoE, 4 experts, Switch top-1, no shared expert (llama.cpp gets a zero one);
- ``top2-shared``: Qwen2-MoE, 4 experts, top-2 plus a sigmoid-gated shared expert;
- ``fine-bias``: Ernie-4.5-MoE, 8 experts of half width, top-2 renormalised, an ungated shared expert and a
  random selection bias (std 0.2, larger than the spread of the probs: it changes which experts are picked);
- ``dense``: the dense twin (n_experts 0), exported as llama.cpp's qwen2.

Tolerances (measured here with llama-cpp-python 0.3.36: F32 file + F32 K/V cache max |diff| 1.3e-6 to 2.3e-6;
with the default F16 K/V cache 1.0e-3 to 1.8e-3, i.e. <= 5.1e-4 x scale (scale = max |HF logit|, ~3); Q8_0
relative RMS error 0.020-0.099 and top-1 agreement 0.81-1.0 against HF, the larger errors in the top-1 and
fine-bias models, where a quantized activation flips a near-tied routing choice):
- F32 GGUF, F32 K/V cache: max |diff| < 1e-4, and greedy decoding gives HF's tokens;
- F32 GGUF, F16 K/V cache (what serving uses): max |diff| <= 1.5e-3 x scale;
- Q8_0: relative RMS error (rms(diff) / std(HF logits)) <= 0.15 and top-1 agreement >= 0.75.
The exporter tests always run; the llama.cpp tests skip without llama-cpp-python.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from tests.shared.quant.conftest import needs_llama
from shared.tokenizer import SAMPLES, read_gguf_metadata


BASE = dict(block_size=64, n_layer=2, n_head=2, n_embd=64, dense_hidden=96)
FINE = dict(n_experts=8, top_k=2, expert_hidden=32, shared_hidden=32, shared_gate=False, qkv_bias=False,
            norm_topk_prob=True, balance="bias")
MODELS = {  # name -> (MoEConfig fields, llama.cpp arch)
    "top1": (dict(n_experts=4, top_k=1, expert_hidden=64), "qwen2moe"),
    "top2-shared": (dict(n_experts=4, top_k=2, expert_hidden=64, shared_hidden=64), "qwen2moe"),
    "fine-bias": (FINE, "ernie4_5-moe"),
    "dense": (dict(n_experts=0), "qwen2"),
}
EXTRA_ROWS = 3


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared box: more threads only add contention
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from shared.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("moe-tok")
    train_tokenizer([*SAMPLES.values()] * 3, vocab_size=300, out_dir=root / "tok")
    return root / "tok"


def _random_moe(fields: dict, vocab_size: int, seed: int = 0):
    from shared.model.moe import MoEConfig, MoEGPT

    torch.manual_seed(seed)
    model = MoEGPT(MoEConfig(vocab_size=vocab_size, **BASE, **fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1)
        for layer in model.moe_layers():
            if model.config.balance == "bias":
                layer.routing_bias.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tokenizer_dir, tmp_path_factory):
    """name -> ``(hf_dir, f32 gguf, HF model)`` for each of ``MODELS``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.model.hf import save_moe_checkpoint
    from shared.quant.gguf_export import export_gguf

    root = tmp_path_factory.mktemp("moe-gguf")
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir)) + EXTRA_ROWS
    out = {}
    for name, (fields, _) in MODELS.items():
        hf_dir = save_moe_checkpoint(_random_moe(fields, vocab), root / name, tokenizer_dir=tokenizer_dir)
        # export_gguf is the one entry point: it hands MoE checkpoints to shared.quant.gguf_moe
        gguf = export_gguf(hf_dir, root / f"{name}-f32.gguf", dtype="f32")
        out[name] = (hf_dir, gguf, AutoModelForCausalLM.from_pretrained(hf_dir).eval())
    return out


def _ids(tokenizer_dir, n: int = 48) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return tok.encode(" ".join(SAMPLES.values()), add_special_tokens=False)[:n]


def _hf_logits(hf, ids) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


# ----------------------------------------------------------------------------- the exporter (no llama.cpp)

def test_metadata_names_the_arch_and_expert_counts(checkpoints):
    for name, (fields, arch) in MODELS.items():
        meta = read_gguf_metadata(checkpoints[name][1])
        assert meta["general.architecture"] == arch, name
        assert meta[f"{arch}.block_count"] == BASE["n_layer"] and meta[f"{arch}.context_length"] == BASE["block_size"]
        assert meta[f"{arch}.attention.head_count"] == meta[f"{arch}.attention.head_count_kv"] == BASE["n_head"]
        assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
        if arch == "qwen2":
            assert f"{arch}.expert_count" not in meta and meta[f"{arch}.feed_forward_length"] == BASE["dense_hidden"]
            continue
        assert meta[f"{arch}.expert_count"] == fields["n_experts"]
        assert meta[f"{arch}.expert_used_count"] == fields["top_k"]
        assert meta[f"{arch}.expert_feed_forward_length"] == fields["expert_hidden"]
        # qwen2moe always has a shared expert (a zero one of width 32 for top1)
        assert meta[f"{arch}.expert_shared_feed_forward_length"] == (fields.get("shared_hidden") or 32)


def test_experts_are_split_into_3d_tensors_and_routers_stay_f32(checkpoints, tmp_path):
    from shared.quant.gguf_export import export_gguf

    hf_dir, _, hf = checkpoints["fine-bias"]
    f16 = export_gguf(hf_dir, tmp_path / "fine-f16.gguf", dtype="f16")
    tensors = {t.name: t for t in GGUFReader(f16).tensors}
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    fused = sd["model.layers.1.mlp.experts.gate_up_proj"]  # (E, 2F, C): gate rows, then up rows
    e, two_f, c = fused.shape
    for gguf_name, want in (("blk.1.ffn_gate_exps.weight", fused[:, :two_f // 2]),
                            ("blk.1.ffn_up_exps.weight", fused[:, two_f // 2:]),
                            ("blk.1.ffn_down_exps.weight", sd["model.layers.1.mlp.experts.down_proj"])):
        t = tensors[gguf_name]
        assert t.tensor_type.name == "F16" and list(t.shape) == list(reversed(want.shape))  # ggml ne = reversed
        np.testing.assert_array_equal(t.data.reshape(want.shape), want.astype(np.float16), err_msg=gguf_name)
    router = tensors["blk.1.ffn_gate_inp.weight"]
    assert router.tensor_type.name == "F32"
    np.testing.assert_array_equal(router.data.reshape(e, c), sd["model.layers.1.mlp.gate.weight"])
    bias = tensors["blk.1.exp_probs_b.bias"]
    np.testing.assert_array_equal(bias.data, sd["model.layers.1.mlp.gate.moe_statics.e_score_correction_bias"][0])
    assert "output.weight" not in tensors  # tied: ernie4_5-moe reuses token_embd
    assert "blk.0.attn_q.bias" not in tensors and "blk.0.ffn_gate_shexp.weight" in tensors


def test_what_llama_cpp_cannot_express_is_refused(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from shared.model.hf import save_moe_checkpoint
    from shared.quant.gguf_export import GGUFExportError, export_gguf

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    model = _random_moe(dict(n_experts=4, top_k=2, expert_hidden=32, norm_topk_prob=True), vocab)
    hf_dir = save_moe_checkpoint(model, tmp_path / "renorm", tokenizer_dir=tokenizer_dir)
    with pytest.raises(GGUFExportError, match="norm_topk_prob=True.*qwen2moe never"):
        export_gguf(hf_dir, tmp_path / "renorm.gguf")
    with pytest.raises(GGUFExportError, match="dtype 'q8_0'"):
        export_gguf(hf_dir, tmp_path / "renorm.gguf", dtype="q8_0")
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written


# ----------------------------------------------------------------------------- llama.cpp

@needs_llama
@pytest.mark.parametrize("name", list(MODELS))
def test_llama_cpp_logits_and_greedy_tokens_match_transformers(checkpoints, tokenizer_dir, name):
    from shared.quant.llama_cpp import llama_generate, llama_logits, load_llama

    _, gguf, hf = checkpoints[name]
    ids = _ids(tokenizer_dir)
    want = _hf_logits(hf, ids)
    llama = load_llama(gguf, n_threads=1, logits_all=True, kv_cache="f32")
    try:
        exact = llama_logits(llama, ids)
        assert exact.shape == want.shape and np.abs(exact - want).max() < 1e-4, name
        prompt = ids[:8]
        with torch.no_grad():
            hf_tokens = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                    pad_token_id=0)[0, len(prompt):].tolist()
        assert llama_generate(llama, prompt, max_new_tokens=12, ignore_eog=True).token_ids == hf_tokens, name
    finally:
        llama.close()
    served = llama_logits(gguf, ids, n_threads=1)  # the default F16 K/V cache
    assert np.abs(served - want).max() <= 1.5e-3 * np.abs(want).max(), name


@needs_llama
def test_llama_cpp_honours_the_selection_bias(checkpoints, tokenizer_dir, tmp_path):
    """The fine-bias match above is not vacuous: without its bias the model's logits are far from them."""
    from transformers import AutoModelForCausalLM

    from shared.model.hf import load_moe, save_moe_checkpoint
    from shared.quant.llama_cpp import llama_logits

    hf_dir, gguf, hf = checkpoints["fine-bias"]
    model = load_moe(hf_dir)
    for layer in model.moe_layers():
        layer.routing_bias.zero_()
    unbiased = AutoModelForCausalLM.from_pretrained(save_moe_checkpoint(model, tmp_path / "unbiased")).eval()
    ids = _ids(tokenizer_dir)
    want, without = _hf_logits(hf, ids), _hf_logits(unbiased, ids)
    got = llama_logits(gguf, ids, n_threads=1, kv_cache="f32")
    assert np.abs(without - want).max() > 0.1 > 1e3 * np.abs(got - want).max()


@needs_llama
def test_q8_0_moe_files_stay_close(checkpoints, tokenizer_dir, tmp_path):
    from shared.quant.gguf_export import gguf_tensor_types
    from shared.quant.llama_cpp import llama_logits, quantize_gguf

    ids = _ids(tokenizer_dir)
    for name in ("top1", "top2-shared", "fine-bias"):
        _, gguf, hf = checkpoints[name]
        path = quantize_gguf(gguf, tmp_path / f"{name}-q8_0.gguf", "q8_0", n_threads=1)
        types = gguf_tensor_types(path)
        assert types["blk.0.ffn_down_exps.weight"] == "Q8_0" and types["blk.0.ffn_gate_inp.weight"] == "F32"
        want, got = _hf_logits(hf, ids), llama_logits(path, ids, n_threads=1)
        assert np.sqrt(((got - want) ** 2).mean()) / want.std() <= 0.15, name
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.75, name


@needs_llama
def test_export_and_check_reports_agreement_or_why_not(checkpoints, tokenizer_dir, tmp_path):
    """What `journey experiment moe` records per saved arm (shared.training.moe_experiment)."""
    from transformers import AutoTokenizer

    from shared.model.hf import save_moe_checkpoint
    from shared.quant.gguf_moe import export_and_check

    ids = _ids(tokenizer_dir)
    check = export_and_check(checkpoints["top2-shared"][0], tmp_path / "arm-f16.gguf", [ids[:24], ids[24:]])
    assert check["why"] is None and check["llama_top1"] == 1.0 and check["llama_max_abs_diff"] < 0.05
    assert read_gguf_metadata(check["gguf"])["general.file_type"] == 1  # F16
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    renorm = save_moe_checkpoint(_random_moe(dict(n_experts=4, top_k=1, expert_hidden=32, norm_topk_prob=True),
                                             vocab), tmp_path / "renorm", tokenizer_dir=tokenizer_dir)
    check = export_and_check(renorm, tmp_path / "renorm.gguf", [ids])
    assert check["llama_top1"] is None and check["gguf"] is None and "norm_topk_prob" in check["why"]


# ----------------------------------------------------------------------------- the quantize stage

@needs_llama
def test_quantize_stage_takes_an_moe_parent(checkpoints, tmp_path, capsys):
    """fp32 on our MoE engine, gguf-q8_0 through the MoE export and llama.cpp; int8 skipped with its reason."""
    import shutil

    from transformers import AutoTokenizer

    from shared.quantize import stage
    from shared.quantize.quantize_config import QuantizeConfig
    from shared.registry import Registry
    from shared.serving.runtime import open_model

    registry = Registry(tmp_path / "runs")
    shutil.copytree(checkpoints["top2-shared"][0], registry.stage_dir("r", "moe"), dirs_exist_ok=True)
    registry.register("r", "moe", "hf-model")
    cfg = QuantizeConfig(run="r", runs_dir=str(registry.root), init_from="moe", variants=["fp32", "int8", "gguf-q8_0"],
                         prompt_tokens=4, new_tokens=4, concurrency=[1], threads=1, repeats=1, ppl_tokens=128,
                         decode_quality_tokens=16, hf_baseline=False, quality_text="general")
    report = stage.run_quantize(cfg)
    result = json.loads((report.dir / "quantize.json").read_text())
    assert list(result["rows"]) == ["fp32", "gguf-q8_0"] and "int8" in result["skipped"]
    assert "int8 skipped for this MoE model" in capsys.readouterr().out
    assert result["rows"]["fp32"]["top1_agreement"] > 0.99  # our engine's MoE forward is the reference's
    assert result["rows"]["gguf-q8_0"]["runtime"] == "llama.cpp" and result["rows"]["gguf-q8_0"]["top1_agreement"] > 0.7
    text = SAMPLES["english"]
    want = AutoTokenizer.from_pretrained(checkpoints["top2-shared"][0]).encode(text, add_special_tokens=False)
    opened = open_model(registry.resolve("r/quantize-gguf-q8_0"), logits_all=True, n_threads=1)
    try:  # the runtime opens the registered MoE GGUF, and its tokenizer is the checkpoint's
        assert opened.runtime == "llama.cpp" and opened.tokenizer.encode(text, add_special_tokens=False) == want
    finally:
        opened.close()
    with pytest.raises(stage.ConfigError, match="MoE model and none of variants"):
        stage.run_quantize(QuantizeConfig(run="r", runs_dir=str(registry.root), init_from="moe", variants=["int4"],
                                          stage="quantize2"))
