"""``journey import``: a checkpoint made elsewhere becomes a registered artifact through the stage table."""
from __future__ import annotations

import json

from ray_jobs import cli
from shared.interp.toy import char_tokenizer, random_model
from shared.model.hf import save_hf_checkpoint
from shared.registry import Registry
from shared.stages import BY_NAME


def test_import_registers_an_hf_checkpoint(tmp_path, capsys):
    src = save_hf_checkpoint(random_model(), tmp_path / "hf", tokenizer_dir=char_tokenizer(tmp_path / "tok"))
    runs = tmp_path / "runs"
    assert cli.main(["import", str(src), "tokenizer=null", "run=mine", f"runs_dir={runs}"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n"):])["import"]["format"] == "hf"
    art = Registry(runs).resolve("mine/import")
    assert art.kind == BY_NAME["import"].produces and art.parents == []
    assert art.config["src"] == str(src) and art.metrics["n_params"] > 0
    # the same artifact is not replaced by accident
    assert cli.main(["import", str(src), "tokenizer=null", "run=mine", f"runs_dir={runs}"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_import_appends_the_chat_tokens_and_grows_a_model_without_spare_rows(tmp_path):
    """A model whose embedding has exactly its tokenizer's rows (like HF ``gpt2``) gets rows for the chat
    tokens; the old ids' logits do not move, and the tokenizer now reads ``<|end|>`` as one token."""
    import torch
    from transformers import AutoTokenizer

    from shared.chat_format import SPECIAL_TOKENS
    from shared.model.hf import load_gpt

    model = random_model()
    src = save_hf_checkpoint(model, tmp_path / "hf", tokenizer_dir=char_tokenizer(tmp_path / "tok"))
    runs = tmp_path / "runs"
    assert cli.main(["import", str(src), "tokenizer=null", "run=mine", f"runs_dir={runs}"]) == 0
    art = Registry(runs).resolve("mine/import")
    rows = model.config.vocab_size
    missing = [t for t in SPECIAL_TOKENS if t != "<|endoftext|>"]
    assert art.extra["import"]["chat_tokens_added"] == len(missing)
    assert art.extra["import"]["embedding_rows_added"] == len(missing)
    tok = AutoTokenizer.from_pretrained(art.dir)
    assert [len(tok.encode(t)) for t in missing] == [1] * len(missing)
    assert min(tok.convert_tokens_to_ids(missing)) == rows  # appended after the model's own ids
    imported = load_gpt(art.dir).eval()
    assert imported.config.vocab_size == rows + len(missing)
    ids = torch.randint(0, rows, (2, 16))
    with torch.no_grad():
        before, _ = model.eval()(ids)
        after, _ = imported(ids)
    torch.testing.assert_close(after[..., :rows], before, rtol=1e-5, atol=1e-5)


def test_import_without_chat_tokens_keeps_the_model_as_it_is(tmp_path):
    src = save_hf_checkpoint(random_model(), tmp_path / "hf", tokenizer_dir=char_tokenizer(tmp_path / "tok"))
    runs = tmp_path / "runs"
    assert cli.main(["import", str(src), "tokenizer=null", "chat_tokens=false", "run=mine", f"runs_dir={runs}"]) == 0
    art = Registry(runs).resolve("mine/import")
    assert "chat_tokens_added" not in art.extra["import"]
    assert json.loads((art.dir / "config.json").read_text())["vocab_size"] == random_model().config.vocab_size
