"""SFT replay: chat rows keep their assistant-only loss, text windows make up the asked share of tokens,
and no held-out document is replayed."""
from __future__ import annotations

import pytest

from shared.config import ConfigError, load_config
from shared.data import is_heldout_doc, iter_corpus
from shared.tokenizer import CHAT_TEMPLATE, load_tokenizer, train_tokenizer
from shared.training.posttrain_config import SFTJobConfig
from shared.training.replay import mixed_rows, replay_chars_needed, replay_documents

CHATS = [{"messages": [{"role": "user", "content": f"What is {a} plus {a}?"},
                       {"role": "assistant", "content": f"{2 * a}."}]} for a in range(40)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    texts = [d.text for _, d in zip(range(60), iter_corpus("builtin:python-docs"))]
    train_tokenizer(texts, vocab_size=400, out_dir=out)
    return load_tokenizer(out)


def test_replayed_documents_are_train_documents_of_each_source():
    needed = 40_000
    texts = replay_documents(["builtin:python-docs", "builtin:python-code"], needed, seed=1)
    heldout = {d.text for s in ("builtin:python-docs", "builtin:python-code") for d in iter_corpus(s)
               if is_heldout_doc(d.id)}
    assert texts and not heldout & set(texts)
    assert sum(map(len, texts)) >= needed  # the margin covers differing characters per token
    docs = {d.text for d in iter_corpus("builtin:python-docs")}
    code = {d.text for d in iter_corpus("builtin:python-code")}
    assert any(t in docs for t in texts) and any(t in code for t in texts)
    assert replay_documents(["builtin:python-docs"], needed, seed=1) == replay_documents(["builtin:python-docs"],
                                                                                       needed, seed=1)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_text_windows_make_up_the_share_and_chat_keeps_its_mask(tokenizer, fraction):
    texts = replay_documents(["builtin:python-docs"], replay_chars_needed(CHATS, fraction), seed=0)
    rows = mixed_rows(tokenizer, CHATS, texts, fraction, 64, CHAT_TEMPLATE, seed=0)
    chat = [r for r in rows if 0 in r["assistant_masks"]]
    text = [r for r in rows if 0 not in r["assistant_masks"]]
    assert len(chat) == len(CHATS)
    assert all(len(r["input_ids"]) == 64 for r in text)
    chat_tokens, text_tokens = (sum(len(r["input_ids"]) for r in part) for part in (chat, text))
    assert text_tokens / (chat_tokens + text_tokens) == pytest.approx(fraction, abs=64 / chat_tokens)
    # the assistant's reply (and only it, with its end token) is trained in a chat row
    row = next(r for r in chat if tokenizer.decode(r["input_ids"]).count("What is 7 plus 7?"))
    trained = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
    assert trained.startswith("14.") and "What is" not in trained


def test_replay_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"replay_fraction > 0 needs replay"):
        load_config(SFTJobConfig, "sft", None, ["replay_fraction=0.3"])
    with pytest.raises(ConfigError, match=r"replay_fraction must be in \[0, 1\)"):
        load_config(SFTJobConfig, "sft", None, ["replay=[builtin:python-docs]", "replay_fraction=1"])


def test_without_text_only_the_chat_rows_come_back_masked(tokenizer):
    """How SFT tokenizes its held-out rows when it replays: eval loss stays on the assistant's tokens."""
    rows = mixed_rows(tokenizer, CHATS, [], 0.0, 64, CHAT_TEMPLATE, seed=0)
    assert len(rows) == len(CHATS) and all(0 in r["assistant_masks"] and 1 in r["assistant_masks"] for r in rows)
