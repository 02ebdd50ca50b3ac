"""``open_model``: the registry artifact's kind picks the runtime; a kind no runtime opens is refused clearly."""
from __future__ import annotations

import json

import pytest
import torch

from shared.engine import EngineConfig, SamplingParams
from shared.eval.engine_backend import is_quantized
from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import save_hf_checkpoint
from shared.quant.quantized_checkpoint import save_quantized
from shared.quant.weight_only import Int8WeightOnlyLinear
from shared.registry import MANIFEST, MODEL_KINDS, Registry
from shared.serving import runtime
from shared.serving.errors import ServingError
from shared.serving.runtime import RUNTIMES, artifact_kind, open_model
from shared.tokenizer.train import train_tokenizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A registry with one run ``r``: ``sft`` (hf-model), ``int8`` (quantized, from sft), ``prefs`` (dataset),
    ``reward`` (reward-model: an HF config.json, but not a generator)."""
    root = tmp_path_factory.mktemp("open")
    train_tokenizer(["def add(a, b): return a + b. The answer is 4.\n"] * 30, vocab_size=300, out_dir=root / "tok")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=1, n_head=2, n_embd=64)).eval()
    registry = Registry(root / "runs")
    sft = save_hf_checkpoint(gpt, registry.stage_dir("r", "sft"), tokenizer_dir=root / "tok")
    registry.register("r", "sft", "hf-model")
    save_quantized(gpt, sft, registry.stage_dir("r", "int8"), scheme="int8")
    registry.register("r", "int8", "quantized", parents=["r/sft"])
    (registry.stage_dir("r", "prefs") / "pairs.jsonl").write_text("{}\n")
    registry.register("r", "prefs", "dataset")
    save_hf_checkpoint(gpt, registry.stage_dir("r", "reward"), tokenizer_dir=root / "tok")
    registry.register("r", "reward", "reward-model")
    return registry


def _reply(model) -> list[int]:
    handle = model.engine.submit("def add", SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    return handle.result().token_ids


def test_every_servable_kind_has_its_runtime():
    assert set(RUNTIMES) == set(MODEL_KINDS) == set(runtime._OPENERS)


def test_an_hf_model_artifact_opens_on_our_engine(runs):
    model = open_model(runs.resolve("r/sft"), config=EngineConfig(max_batch_size=2))
    assert (model.kind, model.runtime, model.llama) == ("hf-model", "engine", None)
    assert model.engine.config.max_batch_size == 2 and model.context == 64 and model.tokenizer is not None
    assert len(_reply(model)) == 4


def test_a_quantized_artifact_opens_on_our_engine_with_its_quantized_layers(runs):
    # The directory also holds config.json (copied from the parent): the kind, not a file, says what it is.
    assert (runs.resolve("r/int8").dir / "config.json").is_file()
    model = open_model(runs.resolve("r/int8"))
    assert (model.kind, model.runtime) == ("quantized", "engine")
    assert isinstance(dict(model.engine.model.linears())["h.0.fc"], Int8WeightOnlyLinear)
    assert model.tokenizer is not None and len(_reply(model)) == 4


def test_a_gguf_artifact_opens_on_llama_cpp(runs):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by scripts/install_llama_cpp.sh")
    from shared.quant.gguf_export import export_gguf
    out = runs.stage_dir("g", "gguf-f32")
    export_gguf(runs.resolve("r/sft").dir, out / "model-f32.gguf", dtype="f32")
    artifact = runs.register("g", "gguf-f32", "gguf", parents=["r/sft"])
    model = open_model(artifact, logits_all=True)
    try:
        assert (model.kind, model.runtime, model.engine) == ("gguf", "llama.cpp", None)
        assert model.gguf == out / "model-f32.gguf" and model.context == 64
        ids = model.tokenizer("def add", add_special_tokens=False).input_ids
        assert model.llama.n_vocab() == 300 and ids
    finally:
        model.close()


@pytest.mark.parametrize("stage, kind", [("prefs", "dataset"), ("reward", "reward-model")])
def test_a_kind_no_runtime_opens_is_refused_by_name(runs, stage, kind):
    artifact = runs.resolve(f"r/{stage}")
    for given in (artifact, artifact.dir):  # the artifact, or its directory (read through journey.json)
        with pytest.raises(ServingError) as info:
            open_model(given)
        message = str(info.value)
        assert info.value.status == 400 and f"a {kind} artifact, not a model" in message
        assert "hf-model, quantized, gguf" in message


def test_a_bare_path_has_its_kind_inferred_once_from_its_files(runs, tmp_path):
    for stage, kind in (("sft", "hf-model"), ("int8", "quantized")):
        copy = tmp_path / stage
        copy.mkdir()
        for f in runs.resolve(f"r/{stage}").dir.iterdir():
            if f.name != MANIFEST:
                (copy / f.name).write_bytes(f.read_bytes())
        assert artifact_kind(copy) == kind and open_model(copy).kind == kind
    (tmp_path / "empty").mkdir()
    assert artifact_kind(tmp_path / "empty") is None
    with pytest.raises(ServingError) as empty:
        open_model(tmp_path / "empty")
    assert empty.value.status == 400 and "holds no model" in str(empty.value)
    with pytest.raises(ServingError) as missing:
        open_model(tmp_path / "nowhere")
    assert missing.value.status == 404


def test_the_registered_kind_wins_over_the_files(runs, tmp_path):
    # A reward model's directory looks like an HF checkpoint; its journey.json says otherwise.
    reward = runs.resolve("r/reward").dir
    assert json.loads((reward / MANIFEST).read_text())["kind"] == "reward-model" and (reward / "config.json").is_file()
    assert artifact_kind(reward) == "reward-model"
    assert is_quantized(runs.resolve("r/int8").dir) and not is_quantized(runs.resolve("r/sft").dir)
