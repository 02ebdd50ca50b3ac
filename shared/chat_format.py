"""The special tokens and the one chat format, as Python and as a Jinja ``chat_template``.

Every message renders as ``<|{role}|>{content}<|end|>`` for role system/user/assistant. A tool's
answer (role ``tool``) renders as ``<|tool_result|>{content}<|end|>``. An assistant message that
carries ``tool_call`` (``{"name": ..., "arguments": {...}}``) renders as
``<|assistant|><|tool_call|>{compact json}<|end|>``; compact JSON means ``separators=(",", ":")``,
non-ASCII kept as is, keys in the caller's order. ``tool_call`` may also be that JSON already
serialized (a str, rendered as given): datasets store it so, because Arrow would merge the argument
dicts of different tools into one struct and add null keys. A generation prompt appends
``<|assistant|>``.

What the assistant generates (its content, or ``<|tool_call|>{json}``, and the closing ``<|end|>``)
sits inside ``{% generation %}`` blocks in the Jinja template, so TRL's ``assistant_only_loss``
trains on exactly those tokens, stop token included; the ``<|assistant|>`` tag is the prompt's.

``render_chat`` and ``CHAT_TEMPLATE`` (used by HF ``apply_chat_template``) produce byte-identical
strings; the tests hold them to that. This module does not tokenize and does not validate tool
arguments against schemas (``shared/tools`` does that before anything runs).

It is a module of its own at the bottom of the library, not part of ``shared.tokenizer``: the
tokenizers, the chat datasets (``shared.data.instructions``), the engine, training, eval and serving
all speak this format, and the tokenizer stage reads ``shared.data``'s corpora, so keeping the format
inside either package would make the two import each other (docs/architecture.md, Layers).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

EOT = "<|endoftext|>"
END = "<|end|>"
TOOL_CALL = "<|tool_call|>"
TOOL_RESULT = "<|tool_result|>"
ASSISTANT = "<|assistant|>"

# Order matters: it is the order of the ids at the end of every vocabulary we train.
SPECIAL_TOKENS: tuple[str, ...] = (EOT, "<|user|>", ASSISTANT, "<|system|>", TOOL_CALL, TOOL_RESULT, END)
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


def _check_message(message: Any) -> None:
    """Raise ValueError (naming the fix) unless ``message`` is one we know how to render."""
    if not isinstance(message, Mapping) or "role" not in message:
        raise ValueError(f"chat message must be a mapping with a 'role' key, got {message!r}; "
                         f"pass dicts like {{'role': 'user', 'content': '...'}}")
    role = message["role"]
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; valid roles are {', '.join(ROLES)}")
    tool_call = message.get("tool_call")
    if tool_call is not None:
        if role != "assistant":
            raise ValueError(f"only assistant messages may carry 'tool_call', got role {role!r}; "
                             "send the tool's answer as {'role': 'tool', 'content': ...}")
        if message.get("content"):
            raise ValueError("an assistant message with 'tool_call' must have empty content; "
                             "put the text in a separate assistant message")
        parsed = tool_call
        if isinstance(tool_call, str):
            try:
                parsed = json.loads(tool_call)
            except json.JSONDecodeError as exc:
                raise ValueError(f"tool_call string is not valid JSON ({exc}): {tool_call!r}") from None
        if not (isinstance(parsed, Mapping) and isinstance(parsed.get("name"), str)
                and isinstance(parsed.get("arguments", {}), Mapping)):
            raise ValueError(f"tool_call must be {{'name': str, 'arguments': dict}}, got {tool_call!r}")
        return
    if not isinstance(message.get("content"), str):
        raise ValueError(f"message content must be a str, got {type(message.get('content')).__name__}; "
                         "json.dumps structured tool results before rendering")


def render_message(message: Mapping[str, Any]) -> str:
    """One message in the chat format (see the module docstring)."""
    _check_message(message)
    role = message["role"]
    if message.get("tool_call") is not None:
        tool_call = message["tool_call"]
        payload = tool_call if isinstance(tool_call, str) else json.dumps(
            tool_call, ensure_ascii=False, separators=(",", ":"))
        return f"{ASSISTANT}{TOOL_CALL}{payload}{END}"
    if role == "tool":
        return f"{TOOL_RESULT}{message['content']}{END}"
    return f"<|{role}|>{message['content']}{END}"


def render_chat(messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    """A whole conversation as one string; ``add_generation_prompt`` appends ``<|assistant|>``."""
    text = "".join(render_message(m) for m in messages)
    return text + ASSISTANT if add_generation_prompt else text


def render_reply(messages: Iterable[Mapping[str, Any]]) -> str:
    """Assistant message(s) as the model generates them after the prompt's ``<|assistant|>``: ``42<|end|>``."""
    return render_chat(messages).removeprefix(ASSISTANT)


# The same format in Jinja, for HF ``apply_chat_template`` (which renders with trim_blocks and
# lstrip_blocks, and whose ``tojson`` filter is json.dumps with ensure_ascii=False). Every tag
# uses ``-`` so no whitespace from this source leaks into the output. The template checks roles
# like ``_check_message`` so a bad conversation fails in HF tools too, not just in ours.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('unknown chat role ' ~ message['role'] ~ '; valid roles are "
    + ", ".join(ROLES) + "') -}}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_call') is not none -%}"
    "{{- '" + ASSISTANT + "' -}}{%- generation -%}"
    "{%- if message['tool_call'] is string -%}{{- '" + TOOL_CALL + "' + message['tool_call'] -}}"
    "{%- else -%}{{- '" + TOOL_CALL + "' + (message['tool_call'] | tojson(separators=(',', ':'))) -}}"
    "{%- endif -%}{{- '" + END + "' -}}{%- endgeneration -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT + "' -}}{%- generation -%}{{- message['content'] + '" + END + "' -}}{%- endgeneration -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '" + TOOL_RESULT + "' + message['content'] + '" + END + "' -}}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '" + END + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
)
