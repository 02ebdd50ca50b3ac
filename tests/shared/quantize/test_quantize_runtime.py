"""The quantize stage measures every variant as ``shared.serving.runtime.open_model`` opens it: the
parent artifact at fp32 / bf16, each saved variant by its registered artifact (kind ``quantized`` or
``gguf``), the same path the generator serves it through."""
from __future__ import annotations

import json

import pytest
import torch

from shared.chat_format import render_chat
from shared.data.instructions.builtin import load_instructions
from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import load_gpt, save_hf_checkpoint
from shared.quant.quantized_checkpoint import load_quantized_engine_model
from shared.quantize import stage
from shared.quantize.quantize_config import QuantizeConfig
from shared.registry import Registry
from shared.tokenizer.hf_format import load_tokenizer
from shared.tokenizer.train import train_tokenizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A registry with one hf-model artifact ``r/sft``: a tiny GPT-2 and a tokenizer of chat text."""
    root = tmp_path_factory.mktemp("quantize")
    texts = [render_chat(e["messages"]) for e in load_instructions(split="train")][:100]
    train_tokenizer(texts, vocab_size=300, out_dir=root / "tok")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=32)).eval()
    registry = Registry(root / "runs")
    save_hf_checkpoint(gpt, registry.stage_dir("r", "sft"), tokenizer_dir=root / "tok")
    registry.register("r", "sft", "hf-model")
    return registry


def test_every_variant_is_measured_as_open_model_opens_its_artifact(runs, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by scripts/install_llama_cpp.sh")
    opened, real = [], stage.open_model

    def spy(model, **kwargs):
        opened.append((model.id, model.kind, kwargs["config"].dtype, kwargs["n_threads"]))
        return real(model, **kwargs)
    monkeypatch.setattr(stage, "open_model", spy)
    cfg = QuantizeConfig(run="r", runs_dir=str(runs.root), init_from="sft",
                         variants=["fp32", "bf16", "int8", "gguf-q8_0"], prompt_tokens=4, new_tokens=4,
                         concurrency=[1, 2], threads=1, repeats=1, ppl_tokens=128, decode_quality_tokens=16,
                         hf_baseline=False)
    report = stage.run_quantize(cfg)

    assert opened == [("r/sft", "hf-model", "float32", 1), ("r/sft", "hf-model", "bfloat16", 1),
                      ("r/quantize-int8", "quantized", "float32", 1), ("r/quantize-gguf-q8_0", "gguf", "float32", 1)]
    assert report.parents == ["r/sft", "r/quantize-int8", "r/quantize-gguf-q8_0"]
    rows = json.loads((report.dir / "quantize.json").read_text())["rows"]
    assert [rows[v]["runtime"] for v in cfg.variants] == ["engine", "engine", "engine", "llama.cpp"]
    assert rows["fp32"]["top1_agreement"] > 0.99  # our engine at fp32 is the parent's own forward pass
    # Each saved variant was registered before it was opened, and got its measured metrics afterwards.
    for variant, kind in (("int8", "quantized"), ("gguf-q8_0", "gguf")):
        artifact = runs.resolve(f"r/quantize-{variant}")
        assert artifact.kind == kind and artifact.config["variant"] == variant
        assert artifact.metrics["ppl"] == rows[variant]["ppl"]
        assert artifact.metrics["top1_agreement"] == rows[variant]["top1_agreement"]

    # The numbers are the format's own: int8 loaded back by its loader scores exactly as the stage reported.
    gpt_ref = load_gpt(runs.resolve("r/sft").dir).eval()
    windows = stage.heldout_windows(load_tokenizer(runs.resolve("r/sft").dir), "chat", 32, 128)
    with torch.inference_mode():
        reference = stage.quality(lambda ids: gpt_ref(torch.tensor([ids]))[0][0], windows, None)
    int8 = stage.quality(stage.engine_logits_fn(load_quantized_engine_model(runs.resolve("r/quantize-int8").dir)),
                         windows, reference["top1"])
    assert (rows["int8"]["ppl"], rows["int8"]["top1_agreement"]) == (int8["ppl"], int8["top1_agreement"])
