"""Importers: each project's checkpoint, written exactly as that project writes it, imports with identical logits."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.model.hf import CheckpointError, save_hf_checkpoint
from shared.model.importers import import_checkpoint

ATOL = 1e-5
GGUF_GPT2_VOCAB = Path("/work/shared/data/tokenizers/ggml-vocab-gpt-2.gguf")


# ----------------------------------------------------------------------------- writers, as each project does it

def write_nanogpt(path, model, *, bias=True, compiled=False, mask_buffers=False):
    """nanoGPT train.py: ``torch.save(checkpoint, 'ckpt.pt')`` with model_args and the training globals."""
    cfg = model.config
    sd = dict(model.state_dict())
    if not bias:  # nanoGPT bias=False: Linear and LayerNorm have no bias parameter at all
        sd = {k: v for k, v in sd.items() if not k.endswith(".bias")}
    if mask_buffers:  # nanoGPT before flash attention registered the causal mask as a buffer
        for i in range(cfg.n_layer):
            sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(cfg.block_size, cfg.block_size)).view(
                1, 1, cfg.block_size, cfg.block_size)
    if compiled:
        sd = {f"_orig_mod.{k}": v for k, v in sd.items()}
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=bias, vocab_size=cfg.vocab_size, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters()).state_dict()
    torch.save({"model": sd, "optimizer": optimizer, "model_args": model_args, "iter_num": 5000,
                "best_val_loss": torch.tensor(2.85), "config": {"out_dir": "out", "learning_rate": 6e-4, **model_args}},
               path)


def write_build_nanogpt(path, model, tmp_path):
    """build-nanogpt train_gpt2.py: the config is a dataclass of the user's script, pickled by reference."""
    module_dir = tmp_path / "their_code"
    module_dir.mkdir()
    (module_dir / "train_gpt2.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass

        @dataclass
        class GPTConfig:
            block_size: int = 1024
            vocab_size: int = 50257
            n_layer: int = 12
            n_head: int = 12
            n_embd: int = 768
    """))
    sys.path.insert(0, str(module_dir))
    try:
        import train_gpt2

        cfg = model.config
        config = train_gpt2.GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                                      n_head=cfg.n_head, n_embd=cfg.n_embd)
        torch.save({"model": model.state_dict(), "config": config, "step": 19072, "val_loss": 3.07}, path)
    finally:
        sys.path.remove(str(module_dir))
        del sys.modules["train_gpt2"]
    assert importlib.util.find_spec("train_gpt2") is None  # the importer really cannot import their class


def write_llmc(path, model, *, version=3, padded_vocab=128):
    """llm.c train_gpt2.py write_model: 256 int32 header, then every parameter, wte padded to Vp."""
    cfg = model.config
    C, L = cfg.n_embd, cfg.n_layer
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, version, cfg.block_size, cfg.vocab_size, L, cfg.n_head, C, padded_vocab]
    sd = model.state_dict()
    stacked = lambda name: torch.stack([sd[f"transformer.h.{i}.{name}"] for i in range(L)])  # noqa: E731
    wte = torch.cat([sd["transformer.wte.weight"], torch.zeros(padded_vocab - cfg.vocab_size, C)])
    params = [wte, sd["transformer.wpe.weight"]] + [stacked(n) for n in (
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
        "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
        "mlp.c_proj.bias")] + [sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]]
    flat = torch.cat([p.reshape(-1) for p in params])
    with open(path, "wb") as f:
        f.write(header.tobytes())
        if version == 3:
            f.write(flat.float().numpy().tobytes())
        else:
            f.write(flat.to(torch.bfloat16).view(torch.int16).numpy().tobytes())


def assert_imported_matches(out_dir, reference, tokens, hf_logits, gpt_logits):
    torch.testing.assert_close(hf_logits(out_dir, tokens), gpt_logits(reference, tokens), atol=ATOL, rtol=0)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- each format imports exactly

@pytest.mark.parametrize("variant", [dict(), dict(compiled=True, mask_buffers=True), dict(bias=False)],
                         ids=["plain", "compiled-old", "no-bias"])
def test_nanogpt(tmp_path, make_model, tokens, hf_logits, gpt_logits, variant):
    model = make_model()
    if variant.get("bias") is False:  # the reference is what a bias-free network computes
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.zero_()
    write_nanogpt(tmp_path / "ckpt.pt", model, **variant)
    info = import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    assert info["format"] == "nanogpt"
    assert info["config"] == vars(model.config)
    assert info["n_params"] == model.num_params()
    assert info["sha256"] == sha256(tmp_path / "ckpt.pt")
    assert info["meta"] == {"iter_num": 5000, "best_val_loss": pytest.approx(2.85)}
    assert info["zero_biases"] is (variant.get("bias") is False)
    assert_imported_matches(tmp_path / "out", model, tokens, hf_logits, gpt_logits)


def test_build_nanogpt_without_their_module(tmp_path, make_model, tokens, hf_logits, gpt_logits):
    model = make_model()
    write_build_nanogpt(tmp_path / "model_19072.pt", model, tmp_path)
    info = import_checkpoint(tmp_path / "model_19072.pt", tmp_path / "out")
    assert info["format"] == "build-nanogpt"
    assert info["meta"] == {"step": 19072, "val_loss": 3.07}
    assert_imported_matches(tmp_path / "out", model, tokens, hf_logits, gpt_logits)


@pytest.mark.parametrize("version", [3, 5], ids=["fp32", "bf16"])
def test_llmc(tmp_path, make_model, tokens, hf_logits, gpt_logits, version):
    model = make_model()
    write_llmc(tmp_path / "gpt2.bin", model, version=version)
    if version == 5:  # the file holds bf16 weights: the import must equal exactly the bf16-rounded model
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    info = import_checkpoint(tmp_path / "gpt2.bin", tmp_path / "out")
    assert info["format"] == "llmc" and info["config"]["vocab_size"] == 100  # padding rows 100..127 dropped
    assert info["meta"] == {"llmc_version": version, "padded_vocab_size": 128}
    assert_imported_matches(tmp_path / "out", model, tokens, hf_logits, gpt_logits)


def test_hf_directory_keeps_its_tokenizer(tmp_path, make_model, make_tokenizer_dir, tokens, hf_logits, gpt_logits):
    from transformers import AutoTokenizer

    model = make_model()
    src = save_hf_checkpoint(model, tmp_path / "src", tokenizer_dir=make_tokenizer_dir(20))
    info = import_checkpoint(src, tmp_path / "out")
    assert info["format"] == "hf" and info["sha256"] == sha256(src / "model.safetensors")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == 20
    assert_imported_matches(tmp_path / "out", model, tokens, hf_logits, gpt_logits)


def test_tokenizer_directory_is_saved_with_the_model(tmp_path, make_model, make_tokenizer_dir):
    from transformers import AutoConfig, AutoTokenizer

    write_nanogpt(tmp_path / "ckpt.pt", make_model())
    info = import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", tokenizer=make_tokenizer_dir(30))
    assert info["tokenizer"].endswith("tokenizer-30")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == 30
    assert AutoConfig.from_pretrained(tmp_path / "out").eos_token_id == 0


def test_gguf_vocabulary_goes_through_the_tokenizer_library(tmp_path, make_model, make_tokenizer_dir, monkeypatch):
    # The plumbing alone, with a stand-in for shared.tokenizer.gguf_vocab (the real one is tested below).
    from transformers import AutoTokenizer

    calls = []

    def hf_tokenizer_from_gguf(path):
        calls.append(path)
        return AutoTokenizer.from_pretrained(make_tokenizer_dir(40))

    monkeypatch.setitem(sys.modules, "shared.tokenizer.gguf_vocab",
                        types.SimpleNamespace(hf_tokenizer_from_gguf=hf_tokenizer_from_gguf))
    (tmp_path / "vocab.gguf").write_bytes(b"GGUF")
    write_nanogpt(tmp_path / "ckpt.pt", make_model())
    import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", tokenizer=tmp_path / "vocab.gguf")
    assert calls == [str(tmp_path / "vocab.gguf")]
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == 40


def test_hub_tokenizer_name(tmp_path, make_model, make_tokenizer_dir, monkeypatch):
    # No network in tests: stand in for the hub, once answering and once failing as transformers does offline.
    from transformers import AutoTokenizer

    local = make_tokenizer_dir(40)
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda name, **kw: real(local if name == "gpt2" else name))
    write_nanogpt(tmp_path / "ckpt.pt", make_model())
    import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", tokenizer="gpt2")
    assert len(real(tmp_path / "out")) == 40

    def offline(name, **kw):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(CheckpointError, match=r"could not be loaded from the Hugging Face hub .*offline, pass"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out2", tokenizer="gpt2")


def test_gguf_vocabulary_as_tokenizer(tmp_path, make_model):
    pytest.importorskip("shared.tokenizer.gguf_vocab")
    if not GGUF_GPT2_VOCAB.is_file():
        pytest.skip(f"{GGUF_GPT2_VOCAB} not present")
    from transformers import AutoTokenizer

    write_nanogpt(tmp_path / "ckpt.pt", make_model(vocab_size=50304))  # nanoGPT pads 50257 up to 50304
    import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", tokenizer=GGUF_GPT2_VOCAB)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(tok) == 50257 and tok.decode(tok("Hello world")["input_ids"]) == "Hello world"


# ----------------------------------------------------------------------------- bad inputs

def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, make_model, make_tokenizer_dir):
    write_nanogpt(tmp_path / "ckpt.pt", make_model())
    with pytest.raises(CheckpointError, match=r"has 150 tokens but the model's vocabulary has only 100"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", tokenizer=make_tokenizer_dir(150))


def test_truncated_llmc_file(tmp_path, make_model):
    write_llmc(tmp_path / "gpt2.bin", make_model())
    data = (tmp_path / "gpt2.bin").read_bytes()
    (tmp_path / "gpt2.bin").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"bytes but its header .* needs exactly \d+; the file is truncated"):
        import_checkpoint(tmp_path / "gpt2.bin", tmp_path / "out")


def test_llmc_wrong_magic_and_other_llmc_files(tmp_path, make_model):
    write_llmc(tmp_path / "gpt2.bin", make_model())
    data = bytearray((tmp_path / "gpt2.bin").read_bytes())
    data[:4] = (12345).to_bytes(4, "little")
    (tmp_path / "gpt2.bin").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"not an llm.c model file \(magic 12345, expected 20240326\)"):
        import_checkpoint(tmp_path / "gpt2.bin", tmp_path / "out")
    data[:4] = (20240328).to_bytes(4, "little")
    (tmp_path / "gpt2_tokenizer.bin").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"is an llm.c tokenizer file; pass the model file"):
        import_checkpoint(tmp_path / "gpt2_tokenizer.bin", tmp_path / "out")


def test_llama_state_dict_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    torch.save(llama.state_dict(), tmp_path / "llama.pt")
    with pytest.raises(CheckpointError, match=r"does not hold GPT-2 weights .*model.embed_tokens.weight"):
        import_checkpoint(tmp_path / "llama.pt", tmp_path / "out")


def test_nanogpt_checkpoint_missing_weights(tmp_path, make_model):
    write_nanogpt(tmp_path / "ckpt.pt", make_model(n_layer=3))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("transformer.h.1.")}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"missing \['transformer.h.1.attn.c_attn.bias'"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")


def test_bare_state_dict_asks_for_its_config(tmp_path, make_model):
    torch.save(make_model().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"without its config, and n_head cannot be read"):
        import_checkpoint(tmp_path / "sd.pt", tmp_path / "out")


class _Payload:
    """Pickles as a call that would create a file: the importer must never make that call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_pickled_code_never_runs(tmp_path, make_model):
    marker = tmp_path / "pwned"
    torch.save({"model": make_model().state_dict(), "config": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"does not record n_head"):
        import_checkpoint(tmp_path / "evil.pt", tmp_path / "out")
    assert not marker.exists()


class _ShellPayload(_Payload):
    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_checkpoint_asking_for_os_is_refused(tmp_path, make_model):
    marker = tmp_path / "pwned"
    torch.save({"model": make_model().state_dict(), "config": _ShellPayload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refusing to read .*GLOBAL (posix|nt|os)\.system"):
        import_checkpoint(tmp_path / "evil.pt", tmp_path / "out")
    assert not marker.exists()


def test_forced_format_that_does_not_match(tmp_path, make_model):
    write_nanogpt(tmp_path / "ckpt.pt", make_model())
    with pytest.raises(CheckpointError, match=r"is a nanogpt checkpoint, not build-nanogpt; pass format='auto'"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", format="build-nanogpt")


def test_truncated_torch_file(tmp_path, make_model):
    write_nanogpt(tmp_path / "ckpt.pt", make_model())
    data = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"damaged|truncated"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")


def test_invalid_declared_config(tmp_path, make_model):
    write_nanogpt(tmp_path / "ckpt.pt", make_model())
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["model_args"]["n_head"] = 3  # 32 is not divisible by 3
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"invalid model config .*n_embd=32 must be divisible by n_head=3"):
        import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
