"""The plan's data, vocabulary and hub checks, on small local files and a small registry."""
from __future__ import annotations

import json

from shared.plan import data_check
from shared.plan.data_check import check_corpus, check_examples, hub_status
from shared.plan.plan import adopted_vocab, tokenizer_vocab, vocab_mismatch


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_local_jsonl_without_the_text_field_is_a_problem_naming_the_field_and_the_fix(tmp_path):
    path = _jsonl(tmp_path / "code.jsonl", [{"content": "print(1)"}])
    check = check_corpus(f"file:{path}", "text", "pretrain.data.source", {}, "pretrain.data.text_field")
    assert not check.ok
    assert "'text'" in check.problem and "['content']" in check.problem
    assert "pretrain.data.text_field=" in check.fix
    assert check_corpus(f"file:{path}", "content", "pretrain.data.source", {}).ok


def test_sft_rows_missing_our_schema_fields_are_found_on_the_first_row(tmp_path):
    path = _jsonl(tmp_path / "sft.jsonl", [{"instruction": "hi", "response": "hello"}])
    check = check_examples(str(path), "sft", "sft.data", {})
    assert not check.ok and "'id'" in check.problem and "sft.data" in check.fix
    good = _jsonl(tmp_path / "ok.jsonl", [{"id": "a", "task": "t", "messages": [], "check": {}}])
    assert check_examples(str(good), "sft", "sft.data", {}).ok
    assert not check_examples(str(good), "preference", "dpo.data", {}).ok  # no prompt/chosen/rejected


def test_a_local_copy_of_a_hub_dataset_is_checked_in_that_datasets_own_schema_and_never_asked_about(tmp_path):
    """``hf:<dataset>@<copy>`` (the fix the plan gives for an unreachable hub dataset) reads the copy through
    the dataset's converter: its fields are the dataset's, and the hub is not involved."""
    dolly = "databricks/databricks-dolly-15k"
    copy = _jsonl(tmp_path / "dolly.jsonl", [{"instruction": "q", "context": "", "response": "a", "category": "qa"}])
    assert data_check.hub_name(f"hf:{dolly}@{copy}") is None and data_check.hub_name(f"hf:{dolly}") == dolly
    assert check_examples(f"hf:{dolly}@{copy}", "sft", "sft.data", {}).ok
    unreachable = check_examples(f"hf:{dolly}", "sft", "sft.data", {dolly: (False, "offline")})
    assert not unreachable.ok and f"sft.data=hf:{dolly}@/path/to/copy" in unreachable.fix
    wrong = _jsonl(tmp_path / "wrong.jsonl", [{"question": "q"}])
    check = check_examples(f"hf:{dolly}@{wrong}", "sft", "sft.data", {})
    assert not check.ok and "'instruction'" in check.problem and "instruction, context, response" in check.fix
    assert "does not exist" in check_examples(f"hf:{dolly}@{tmp_path / 'none.jsonl'}", "sft", "sft.data", {}).problem
    assert "no converter" in check_examples(f"hf:{dolly}@{copy}", "preference", "dpo.data", {}).problem


def test_missing_files_builtins_and_text_corpora_as_post_training_data(tmp_path):
    assert not check_corpus(str(tmp_path / "none.jsonl"), "text", "k", {}).ok
    assert check_corpus("builtin:python-docs", "text", "k", {}).ok
    assert not check_corpus("builtin:nope", "text", "k", {}).ok
    assert check_examples("builtin:instructions", "sft", "sft.data", {}).ok
    assert not check_examples("builtin:instructions", "preference", "dpo.data", {}).ok


def test_hub_datasets_offline_are_not_asked_and_get_the_local_file_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(data_check, "_ask_hub", lambda *a: (_ for _ in ()).throw(AssertionError("asked the hub")))
    status = hub_status(["HuggingFaceFW/fineweb-edu"])
    assert status == {"HuggingFaceFW/fineweb-edu": (False, "offline (HF_HUB_OFFLINE=1)")}
    check = check_corpus("hf:HuggingFaceFW/fineweb-edu:sample-10BT", "text", "pretrain.data.source", status)
    assert not check.ok and "pretrain.data.source=file:" in check.fix and "'text'" in check.fix


def test_vocabulary_mismatch_rule():
    assert not vocab_mismatch(50257, 50257)
    assert not vocab_mismatch(50304, 50257)  # llm.c / build-nanogpt pad to a multiple of 64
    assert vocab_mismatch(4096, 50263)  # smaller: token ids past the embedding
    assert vocab_mismatch(50257, 4096)  # larger and not a padding: trained with another tokenizer


def test_tokenizer_sizes_from_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}},
                                                         "added_tokens": [{"id": 2, "content": "<|endoftext|>"}]}))
    assert tokenizer_vocab(tmp_path) == 3
    size, _, problem = adopted_vocab(str(tmp_path))
    assert problem is None and size == 3 + 6  # our six chat tokens join <|endoftext|>
    assert adopted_vocab("gpt2")[0] == 50257 + 6
    assert adopted_vocab(str(tmp_path / "missing.gguf"))[2]
