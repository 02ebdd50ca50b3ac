"""The serving layer's side of the OpenAI surface: raw-prompt completions (echo, logprobs, max_tokens=0),
logprobs on streamed events, stop strings, and grammar errors as 400s."""
from __future__ import annotations

import asyncio

import pytest
import torch

from shared.engine import Engine, EngineConfig, SamplingParams
from shared.serving.backends import EngineBackend, TokenText
from shared.serving.errors import ServingError
from tests.shared.engine.conftest import random_gpt


@pytest.fixture(scope="module")
def served(byte_tokenizer):
    gpt = random_gpt(seed=3, block_size=128)
    backend = EngineBackend(Engine(gpt, byte_tokenizer, EngineConfig(max_batch_size=4, linear_backend="dense")), "m")
    yield backend, gpt
    backend.close()


def _reference(gpt, ids):
    with torch.no_grad():
        return torch.log_softmax(gpt(torch.tensor([ids]))[0][0].float(), dim=-1)


def test_echo_with_logprobs_and_no_new_tokens_scores_the_prompt(served, byte_tokenizer):
    backend, gpt = served
    ids = byte_tokenizer.encode("The cat sat.", add_special_tokens=False)
    out = asyncio.run(backend.complete_prompt(ids, SamplingParams(max_tokens=0, temperature=0, logprobs=1), echo=True))
    lp = out["logprobs"]
    assert out["text"] == "The cat sat." and out["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert lp["tokens"] == list("The cat sat.") and lp["text_offset"] == list(range(len(ids)))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    reference = _reference(gpt, ids)
    for i in range(1, len(ids)):
        assert lp["token_logprobs"][i] == pytest.approx(reference[i - 1, ids[i]].item(), abs=1e-4)
        assert lp["tokens"][i] in lp["top_logprobs"][i]  # the chosen token is always listed
        assert max(lp["top_logprobs"][i].values()) == pytest.approx(reference[i - 1].max().item(), abs=1e-4)


def test_echo_then_generation_is_what_lm_eval_sends(served, byte_tokenizer):
    backend, _ = served
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=1)
    out = asyncio.run(backend.complete_prompt("ab", params, echo=True))
    assert len(out["logprobs"]["token_logprobs"]) == 3 and out["usage"]["completion_tokens"] == 1
    plain = asyncio.run(backend.complete_prompt("ab", SamplingParams(max_tokens=5, temperature=0)))
    assert plain["logprobs"] is None and plain["usage"]["prompt_tokens"] == 2


def test_stop_strings_cut_the_completion(served):
    backend, _ = served
    free = asyncio.run(backend.complete_prompt("x", SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)))
    text = free["text"]
    stop = text[3:5] if len(text) > 5 else None
    if stop and stop not in text[:3]:
        cut = asyncio.run(backend.complete_prompt("x", SamplingParams(max_tokens=20, temperature=0, ignore_eos=True,
                                                                      stop=[stop])))
        assert cut["text"] == text[:text.index(stop)] and cut["finish_reason"] == "stop"


def test_stream_events_carry_openai_logprobs(served):
    backend, _ = served

    async def run():
        return [e async for e in backend.stream([{"role": "user", "content": "hi"}],
                                                SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                               logprobs=2))]
    events = asyncio.run(run())
    entries = [entry for e in events if e.kind == "token" for entry in e.logprobs]
    assert len(entries) == 4 and events[-1].logprobs is None
    for entry in entries:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and len(entry["top_logprobs"]) == 2
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]


def test_bad_requests_are_400(served):
    backend, _ = served
    bad = SamplingParams(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "integr"}}})

    async def run():
        return [e async for e in backend.stream([{"role": "user", "content": "hi"}], bad)]
    with pytest.raises(ServingError) as info:
        asyncio.run(run())
    assert info.value.status == 400 and "integr" in str(info.value)
    with pytest.raises(ServingError) as info:
        asyncio.run(backend.complete_prompt([999], SamplingParams(max_tokens=1)))
    assert info.value.status == 400


def test_token_text_gives_exact_bytes_of_partial_characters(byte_tokenizer):
    text_of = TokenText(byte_tokenizer)
    assert text_of(0xC3) == ("\ufffd", b"\xc3") and text_of(ord("A")) == ("A", b"A")
    assert text_of(262) == ("<|end|>", b"<|end|>")


def test_llama_cpp_refuses_what_it_cannot_do_and_cuts_stop_strings():
    from shared.serving.backends import LlamaCppBackend
    for params, name in [(SamplingParams(logprobs=1), "logprobs"),
                         (SamplingParams(response_format={"type": "json_object"}), "response_format"),
                         (SamplingParams(grammar='start: "x"'), "grammar")]:
        with pytest.raises(ServingError) as info:
            LlamaCppBackend._refuse_unsupported(params)
        assert info.value.status == 400 and name in str(info.value) and "llama.cpp" in str(info.value)
    LlamaCppBackend._refuse_unsupported(SamplingParams(response_format={"type": "text"}, stop=["x"]))
    assert LlamaCppBackend._cut("Hello there, my friend<|end|>", ("<|end|>", " my")) == ("Hello there,", True)
    assert LlamaCppBackend._cut("no stop here", ("<|end|>",)) == ("no stop here", False)
