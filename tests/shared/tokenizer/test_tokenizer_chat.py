"""The chat format: render_chat and the Jinja CHAT_TEMPLATE agree byte for byte."""
from __future__ import annotations

import jinja2
import pytest

from shared.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, load_tokenizer, render_chat

CONVERSATIONS = {
    "single user": [{"role": "user", "content": "Hello!"}],
    "system + multi-turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan?\nAnswer in one word."},
        {"role": "assistant", "content": "Tokyo."},
    ],
    "tool call + result": [
        {"role": "user", "content": "What is 2+2? Use the calculator."},
        {"role": "assistant", "tool_call": {"name": "calculator", "arguments": {"expression": "2+2", "exact": True}}},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "2+2 = 4."},
    ],
    "unicode and nesting": [
        {"role": "system", "content": "  leading spaces and trailing\t"},
        {"role": "user", "content": "Где Москва? 東京は？ 😀"},
        {"role": "assistant", "tool_call": {"name": "geo.lookup",
                                            "arguments": {"q": "Москва", "opts": {"limit": 2, "tags": ["a", "b"]}}}},
        {"role": "tool", "content": '{"lat": 55.75, "lon": 37.62}'},
    ],
    "tool call as a JSON string (how datasets store it)": [
        {"role": "user", "content": "Search the docs for zipfile."},
        {"role": "assistant", "content": "", "tool_call": '{"name":"search_docs","arguments":{"query":"zipfile"}}'},
        {"role": "tool", "content": "zipfile: read and write ZIP archives"},
    ],
    "empty content": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
}


def test_render_exact_format():
    text = render_chat(CONVERSATIONS["tool call + result"], add_generation_prompt=True)
    assert text == ('<|user|>What is 2+2? Use the calculator.<|end|>'
                    '<|assistant|><|tool_call|>{"name":"calculator","arguments":{"expression":"2+2","exact":true}}<|end|>'
                    '<|tool_result|>4<|end|><|assistant|>2+2 = 4.<|end|><|assistant|>')


def test_special_tokens_order():
    assert SPECIAL_TOKENS == ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>",
                              "<|tool_call|>", "<|tool_result|>", "<|end|>")


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_hf_apply_chat_template_matches(trained_dir, name, generation_prompt):
    tokenizer = load_tokenizer(trained_dir)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = CONVERSATIONS[name]
    hf_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert hf_text == render_chat(messages, add_generation_prompt=generation_prompt)


def test_unknown_role_names_valid_roles(trained_dir):
    bad = [{"role": "moderator", "content": "hi"}]
    with pytest.raises(ValueError, match="system, user, assistant, tool"):
        render_chat(bad)
    with pytest.raises(jinja2.exceptions.TemplateError, match="valid roles are system, user, assistant, tool"):
        load_tokenizer(trained_dir).apply_chat_template(bad, tokenize=False)


@pytest.mark.parametrize("message, match", [
    ({"content": "no role"}, "'role' key"),
    ({"role": "user", "content": {"x": 1}}, "must be a str"),
    ({"role": "user", "tool_call": {"name": "f", "arguments": {}}}, "only assistant"),
    ({"role": "assistant", "content": "text", "tool_call": {"name": "f", "arguments": {}}}, "empty content"),
    ({"role": "assistant", "tool_call": {"arguments": {}}}, "tool_call must be"),
])
def test_bad_messages_fail_clearly(message, match):
    with pytest.raises(ValueError, match=match):
        render_chat([message])


def test_assistant_mask_covers_exactly_what_the_assistant_generates(trained_dir):
    """TRL's assistant_only_loss trains on {% generation %} spans: the reply and its <|end|>, not the tag."""
    tokenizer = load_tokenizer(trained_dir)
    messages = CONVERSATIONS["tool call + result"]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    expected = ('<|tool_call|>{"name":"calculator","arguments":{"expression":"2+2","exact":true}}<|end|>'
                "2+2 = 4.<|end|>")
    assert trained == expected
    assert tokenizer.decode([i for i, m in zip(ids, mask) if not m]).count("<|assistant|>") == 2


def test_bad_tool_call_string_fails_clearly():
    with pytest.raises(ValueError, match="not valid JSON"):
        render_chat([{"role": "assistant", "content": "", "tool_call": "{oops"}])
