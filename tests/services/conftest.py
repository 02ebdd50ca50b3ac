"""Fixtures for the serving tests: a tiny model that has memorised a few chat turns, and the whole stack.

``chat_runs`` trains (seconds) a 2-layer byte-level GPT until it reproduces ``CONVERSATIONS``
exactly under greedy decoding, including a calculator tool call and the answer after the tool's
result, and registers it as run ``t``: ``t/sft`` and ``t/dpo`` (the same weights, a second artifact
for reload tests). ``stack`` runs the real thing: redis-server, Ray Serve with ``services.app``
(gateway, generator, tool executor; no retriever) on a free HTTP port.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import save_hf_checkpoint
from shared.registry import Registry
from shared.chat_format import render_chat

CALL = {"name": "calculator", "arguments": {"expression": "17*23"}}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 17*23?"}, {"role": "assistant", "content": "", "tool_call": CALL},
     {"role": "tool", "content": "391"}, {"role": "assistant", "content": "17*23 = 391"}],
    [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello there, my good friend!"}],
]
HELLO_ANSWER = "Hello there, my good friend!"


VOCAB = 300  # bytes, our 7 special tokens and a few merges (llama.cpp's gpt2 tokenizer needs merges)


def _train(tokenizer) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=256, n_layer=2, n_head=2, n_embd=64))
    rows = [tokenizer.encode(render_chat(c), add_special_tokens=False) for c in CONVERSATIONS]
    width = max(map(len, rows))
    x = torch.full((len(rows), width), 0)
    y = torch.full((len(rows), width), -1)
    for i, row in enumerate(rows):
        x[i, :len(row)] = torch.tensor(row)
        y[i, :len(row) - 1] = torch.tensor(row[1:])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(400):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.005:
            break
    return model.eval()


@pytest.fixture(scope="session")
def chat_runs(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from shared.tokenizer.train import train_tokenizer
    root = tmp_path_factory.mktemp("serving") / "runs"
    tok_dir = root.parent / "tokenizer"
    train_tokenizer([render_chat(c) for c in CONVERSATIONS] * 20, vocab_size=VOCAB, out_dir=tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model = _train(tokenizer)
    registry = Registry(root)
    for stage in ("sft", "dpo"):
        out = registry.stage_dir("t", stage)
        save_hf_checkpoint(model, out, tokenizer_dir=tok_dir)
        registry.register("t", stage, "hf-model", parents=["t/sft"] if stage == "dpo" else [])
    return root


@pytest.fixture(scope="module")
def stack(chat_runs, redis_server, ray_session):
    """The serving graph on Ray Serve: yields ``(base_url, redis_url, runs_dir)``."""
    from ray import serve

    from services.app import build_app
    from shared.bus import free_port
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": "t/sft", "runs_dir": str(chat_runs), "redis_url": redis_server.url, "rag": "false",
            "gateway": {"default_max_tokens": 80}}
    serve.run(build_app(args), name="journey", route_prefix="/")
    yield f"http://127.0.0.1:{port}", redis_server.url, chat_runs
    serve.delete("journey")
    serve.shutdown()


def sse_events(lines) -> list[dict]:
    """The JSON payloads of an SSE response's ``data:`` lines (``[DONE]`` excluded)."""
    out = []
    for line in lines:
        line = line.decode() if isinstance(line, bytes) else line
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out
