"""GGUF export and llama.cpp: the file round-trips, llama.cpp agrees with HF, quantized files stay close.

The model: a random GPT-2 (2 layers, n_embd 64, 2 heads of 32, every weight random so a misplaced
bias or norm shows) with our tokenizer, its vocab padded by 5 rows the tokenizer never emits. Rows
of 64 and 256 are multiples of 32, so Q8_0/Q4_0 apply everywhere; K-quants (blocks of 256) do not
fit the 64-wide tensors and llama.cpp falls back.

Tolerances (measured here: max |diff| / scale F32 5e-4, F16 9e-4; relative RMS vs F16 Q8_0 0.02, Q4_0 0.19,
Q4_K 0.11):
- F32 GGUF vs HF: max |diff| <= 2e-3 x scale, scale = max |HF logit| (~3 here); llama.cpp computes in
  F32 but its GELU reads an F16 table;
- F16 GGUF vs HF: max |diff| <= 5e-3 x scale, top-1 identical at >= 95% of positions;
- quantized vs F16, as relative RMS error (rms(diff) / std(F16 logits)), top-1 agreement, and how
  often F16's top-1 is in the quantized top-5: Q8_0 <= 0.05, >= 85%, >= 95%; Q4_0 <= 0.35, >= 50%,
  >= 90%; Q4_K (mostly Q5_0 here) <= 0.25. A random model's logits are flat (405 ids within ~3),
  so top-1 flips easily: the RMS error is the steadier measure.
The exporter tests always run; the llama.cpp tests skip without llama-cpp-python.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader, TokenType

from tests.shared.quant.conftest import needs_llama
from shared.model.hf import CheckpointError
from shared.quant.gguf_export import GGUFExportError, export_gguf, gguf_tensor_types
from shared.tokenizer import GGUFError, SAMPLES, hf_tokenizer_from_gguf, read_gguf_metadata


N_EMBD, N_HEAD, N_LAYER, BLOCK, EXTRA_ROWS = 64, 2, 2, 64, 5
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "tool_call": {"name": "calculator", "arguments": {"expression": "2+2"}}},
        {"role": "tool", "content": "4"}, {"role": "assistant", "content": "The answer is 4."}]
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``(dir, hf_model, tokenizer)``: the random GPT-2 described in the module docstring, saved as HF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.model.gpt import GPT, GPTConfig
    from shared.model.hf import save_hf_checkpoint
    from shared.tokenizer import render_chat, train_tokenizer

    root = tmp_path_factory.mktemp("gguf")
    corpus = [render_chat(CHAT), *SAMPLES.values()] * 3
    train_tokenizer(corpus, vocab_size=400, out_dir=root / "tok")
    tok = AutoTokenizer.from_pretrained(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(tok) + EXTRA_ROWS, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD,
                          n_embd=N_EMBD))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.1)
            else:  # LayerNorm gains near 1, everything else (biases) near 0
                p.normal_(1.0 if ".ln_" in name and name.endswith("weight") else 0.0, 0.1)
    save_hf_checkpoint(model, root / "hf", tokenizer_dir=root / "tok")
    hf = AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    return root / "hf", hf, tok


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """``{"f32": path, "f16": path}`` of the checkpoint's GGUF exports."""
    root = tmp_path_factory.mktemp("exported")
    return {dtype: export_gguf(checkpoint[0], root / f"tiny-{dtype}.gguf", dtype=dtype) for dtype in ("f32", "f16")}


def _chat_ids(tok) -> list[int]:
    text = tok.apply_chat_template(CHAT, tokenize=False)
    return tok.encode(text, add_special_tokens=False)[:BLOCK]


def _hf_logits(hf, ids) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


# ----------------------------------------------------------------------------- the exporter (no llama.cpp)

@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_tensors_round_trip_in_llama_cpp_layout(checkpoint, exported, dtype):
    hf_dir, hf, _ = checkpoint
    reader = GGUFReader(exported[dtype])
    got = {t.name: t for t in reader.tensors}
    sd = {k.removeprefix("transformer."): v.numpy() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    expected = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight",
                "output_norm.weight": "ln_f.weight", "output_norm.bias": "ln_f.bias"}
    for i in range(N_LAYER):
        for ours, theirs in {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
                             "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}.items():
            for kind in ("weight", "bias"):
                expected[f"blk.{i}.{ours}.{kind}"] = f"h.{i}.{theirs}.{kind}"
    assert set(got) == set(expected)  # tied head: no output.weight, llama.cpp reuses token_embd
    for name, hf_name in expected.items():
        want = sd[hf_name].T if hf_name.endswith(CONV1D) else sd[hf_name]  # Conv1D (in, out) -> (out, in)
        tensor = got[name]
        if want.ndim == 2 and dtype == "f16":
            assert tensor.tensor_type.name == "F16"
            want = want.astype(np.float16)
        else:  # norms and biases stay F32
            assert tensor.tensor_type.name == "F32"
        assert list(tensor.shape) == list(reversed(want.shape)), name  # ggml ne = numpy shape reversed
        np.testing.assert_array_equal(tensor.data.reshape(want.shape), want, err_msg=name)


def test_hyper_parameters_and_tokenizer_metadata(checkpoint, exported):
    _, hf, tok = checkpoint
    meta = read_gguf_metadata(exported["f16"])
    assert meta["general.architecture"] == "gpt2" and meta["general.file_type"] == 1
    assert {k: meta[f"gpt2.{k}"] for k in ("context_length", "embedding_length", "block_count",
                                           "feed_forward_length", "attention.head_count")} == {
        "context_length": BLOCK, "embedding_length": N_EMBD, "block_count": N_LAYER,
        "feed_forward_length": 4 * N_EMBD, "attention.head_count": N_HEAD}
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(hf.config.layer_norm_epsilon)
    assert read_gguf_metadata(exported["f32"])["general.file_type"] == 0
    n = len(tok)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert tokens[:n] == tok.convert_ids_to_tokens(list(range(n))) and len(tokens) == n + EXTRA_ROWS
    special = {tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens}
    assert special and all(types[i] == TokenType.CONTROL for i in special)
    assert all(types[i] == TokenType.NORMAL for i in range(n) if i not in special)
    assert types[n:] == [TokenType.UNUSED] * EXTRA_ROWS
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert meta["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>") == tok.eos_token_id
    assert meta["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|end|>")
    assert not meta["tokenizer.ggml.add_bos_token"]  # our tokenizer adds no BOS; llama.cpp must not either
    assert meta["tokenizer.chat_template"] == tok.chat_template


def test_gguf_vocab_reads_back_as_the_same_tokenizer(checkpoint, exported):
    """An independent reader (shared.tokenizer.gguf_vocab) rebuilds a tokenizer that encodes alike."""
    tok = checkpoint[2]
    back = hf_tokenizer_from_gguf(exported["f16"])
    for text in [tok.apply_chat_template(CHAT, tokenize=False), *SAMPLES.values()]:
        assert back.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)


def test_export_refuses_what_it_cannot_write(checkpoint, tmp_path):
    hf_dir = checkpoint[0]
    with pytest.raises(GGUFExportError, match="dtype 'q4_0'.*quantize_gguf"):
        export_gguf(hf_dir, tmp_path / "x.gguf", dtype="q4_0")
    llama_dir = tmp_path / "llama"
    llama_dir.mkdir()
    (llama_dir / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="not GPT-2"):
        export_gguf(llama_dir, tmp_path / "y.gguf")
    with pytest.raises(CheckpointError, match="not found"):
        export_gguf(tmp_path / "missing", tmp_path / "z.gguf")
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written


def test_corrupt_files_raise_clear_errors_before_llama_cpp(exported, tmp_path):
    from shared.quant.llama_cpp import load_llama, quantize_gguf

    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip file, not a GGUF" * 4)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(exported["f16"].read_bytes()[:4000])  # cut inside the vocab strings
    for call in (lambda p: load_llama(p), lambda p: quantize_gguf(p, tmp_path / "q.gguf", "q8_0")):
        with pytest.raises(GGUFError, match="bad magic"):
            call(not_gguf)
        with pytest.raises(GGUFError, match="truncated"):
            call(truncated)
        with pytest.raises(FileNotFoundError, match="not found"):
            call(tmp_path / "absent.gguf")


# ----------------------------------------------------------------------------- llama.cpp

@needs_llama
def test_what_llama_cpp_refuses_is_a_clear_error_not_a_crash(exported, tmp_path):
    from shared.quant.llama_cpp import LlamaCppError, load_llama, quantize_gguf

    data = exported["f16"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:len(data) - 1000])  # header intact, last tensor's data missing
    with pytest.raises(LlamaCppError, match="not within the file bounds"):
        load_llama(cut)
    with pytest.raises(LlamaCppError, match="not within the file bounds"):
        quantize_gguf(cut, tmp_path / "cut-q8_0.gguf", "q8_0")
    q4 = quantize_gguf(exported["f32"], tmp_path / "q4.gguf", "q4_0", n_threads=1)
    with pytest.raises(LlamaCppError, match="requantizing from type .* is disabled"):
        quantize_gguf(q4, tmp_path / "q4-q8_0.gguf", "q8_0")
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "cut-q8_0.gguf").exists()


def _scale(reference: np.ndarray) -> float:
    return float(np.abs(reference).max())


def _top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def _relative_rms(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(((got - reference) ** 2).mean()) / reference.std())


def _in_top5(got: np.ndarray, reference: np.ndarray) -> float:
    """How often the reference's top-1 is among ``got``'s five highest logits."""
    top5 = np.argsort(-got, axis=-1)[:, :5]
    return float((top5 == reference.argmax(-1)[:, None]).any(-1).mean())


@needs_llama
def test_llama_cpp_logits_match_hf(checkpoint, exported):
    from shared.quant.llama_cpp import llama_logits

    _, hf, tok = checkpoint
    ids = _chat_ids(tok)
    want = _hf_logits(hf, ids)
    scale = _scale(want)
    f32 = llama_logits(exported["f32"], ids, n_threads=1)
    f16 = llama_logits(exported["f16"], ids, n_threads=1)
    assert f32.shape == want.shape == (len(ids), len(tok) + EXTRA_ROWS)
    assert np.abs(f32 - want).max() <= 2e-3 * scale
    assert np.abs(f16 - want).max() <= 5e-3 * scale
    assert _top1_agreement(f16, want) >= 0.95


@needs_llama
def test_llama_cpp_tokenizes_like_hf(checkpoint, exported):
    from shared.quant.llama_cpp import llama_tokenize, load_llama

    tok = checkpoint[2]
    llama = load_llama(exported["f16"], n_threads=1)
    try:
        chat = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=False)
        ids = llama_tokenize(llama, chat)
        assert ids == tok.encode(chat, add_special_tokens=False)
        assert ids.count(tok.convert_tokens_to_ids("<|tool_call|>")) == 1  # special tokens are single ids
        for text in SAMPLES.values():
            assert llama_tokenize(llama, text) == tok.encode(text, add_special_tokens=False)
        # special=False: the tag is plain text, as for untrusted user input
        assert tok.convert_tokens_to_ids("<|user|>") not in llama_tokenize(llama, "<|user|>", special=False)
    finally:
        llama.close()


@needs_llama
def test_quantized_files_load_generate_and_stay_close(checkpoint, exported, tmp_path):
    from shared.quant.llama_cpp import llama_generate, llama_logits, quantize_gguf

    tok = checkpoint[2]
    ids = _chat_ids(tok)
    reference = llama_logits(exported["f16"], ids, n_threads=1)
    for qtype, max_rms, top1, top5 in (("q8_0", 0.05, 0.85, 0.95), ("q4_0", 0.35, 0.5, 0.9)):
        path = quantize_gguf(exported["f32"], tmp_path / f"tiny-{qtype}.gguf", qtype, n_threads=1)
        types = set(gguf_tensor_types(path).values())
        assert qtype.upper() in types and types <= {qtype.upper(), "Q6_K", "Q8_0", "F32"}
        got = llama_logits(path, ids, n_threads=1)
        assert _relative_rms(got, reference) <= max_rms, qtype
        assert _top1_agreement(got, reference) >= top1 and _in_top5(got, reference) >= top5, qtype
        out = llama_generate(path, tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True),
                             max_new_tokens=8, n_threads=1)
        assert 1 <= len(out.token_ids) <= 8 and out.stop_reason in ("eog", "length")
        assert out.decode_tokens_per_s > 0 and out.prefill_tokens_per_s > 0 and out.prompt_tokens > 1


@needs_llama
def test_k_quant_falls_back_on_short_rows(checkpoint, exported, tmp_path):
    from shared.quant.llama_cpp import llama_generate, llama_logits, quantize_gguf

    path = quantize_gguf(exported["f32"], tmp_path / "tiny-q4_k.gguf", "q4_k", n_threads=1)
    types = gguf_tensor_types(path)
    # 64-wide rows cannot hold a 256-block: Q4_K falls back to Q5_0 there; ffn_down (256-wide) keeps a K-quant.
    assert types["blk.0.attn_qkv.weight"] == "Q5_0" and types["blk.0.ffn_up.weight"] == "Q5_0"
    assert types["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")
    assert types["token_embd.weight"] == "Q8_0"  # tied output matrix: llama.cpp's output rule, 64 % 256 != 0
    ids = _chat_ids(checkpoint[2])
    got, reference = llama_logits(path, ids, n_threads=1), llama_logits(exported["f16"], ids, n_threads=1)
    assert _relative_rms(got, reference) <= 0.25
    assert llama_generate(path, [1, 2, 3], max_new_tokens=3, n_threads=1).token_ids


@needs_llama
def test_generation_is_greedy_stops_and_respects_the_context(checkpoint, exported):
    from shared.quant.llama_cpp import llama_generate, llama_logits, load_llama

    _, hf, tok = checkpoint
    ids = _chat_ids(tok)[:10]
    out = llama_generate(exported["f32"], ids, max_new_tokens=1, n_threads=1)
    assert out.token_ids == [int(_hf_logits(hf, ids)[-1].argmax())] and out.stop_reason in ("length", "eog")
    full = llama_generate(exported["f32"], ids, max_new_tokens=BLOCK * 2, ignore_eog=True, n_threads=1)
    assert len(full.token_ids) == BLOCK - len(ids) + 1 and full.stop_reason == "context"  # last token needs no slot
    assert full.token_ids[0] == out.token_ids[0]
    with pytest.raises(ValueError, match="trained with"):
        load_llama(exported["f32"], n_ctx=BLOCK * 2)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        llama_logits(exported["f32"], [0, 10**6])
    with pytest.raises(ValueError, match="exceed the context"):
        llama_logits(exported["f32"], [1] * (BLOCK + 1))
