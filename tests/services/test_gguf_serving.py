"""A GGUF artifact served by llama.cpp gives the same answers, tool call included, as the engine serving its source."""
from __future__ import annotations

import asyncio

import pytest

from shared.engine import SamplingParams
from shared.serving.backends import LlamaCppBackend, load_backend
from tests.services.conftest import CALL, HELLO_ANSWER

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by scripts/install_llama_cpp.sh")


async def _events(backend, text):
    return [e async for e in backend.stream([{"role": "user", "content": text}],
                                            SamplingParams(max_tokens=80, temperature=0))]


def test_a_gguf_artifact_answers_like_its_source(chat_runs, tmp_path):
    from shared.quant.gguf_export import export_gguf
    export_gguf(chat_runs / "t" / "sft", tmp_path / "gguf" / "model-f32.gguf", dtype="f32")
    backend = load_backend(tmp_path / "gguf", name="gguf")
    try:
        assert isinstance(backend, LlamaCppBackend)
        hello = asyncio.run(_events(backend, "Say hello"))
        assert "".join(e.text for e in hello if e.kind == "token") == HELLO_ANSWER
        assert hello[-1].finish_reason == "stop" and hello[-1].metrics["completion_tokens"] > 10
        call = asyncio.run(_events(backend, "What is 17*23?"))[-1]
        assert (call.finish_reason, call.tool_call) == ("tool_call", CALL)
    finally:
        backend.close()
