"""Logprobs, prompt scoring and constrained decoding (llguidance) in the engine, on the tiny random GPT.

A random model is the hard case for a grammar: it would never write JSON on its own, so every valid
output below is the mask's doing.
"""
from __future__ import annotations

import json

import pytest
import torch

from shared.chat_format import END, TOOL_CALL
from shared.engine import Engine, EngineConfig, EngineError, SamplingParams
from shared.engine.grammar import tool_call_grammar
from tests.shared.engine.conftest import random_gpt

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 4}, "ok": {"type": "boolean"},
                         "n": {"type": "integer", "minimum": 0, "maximum": 999},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["name", "ok", "n", "tags"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string", "maxLength": 5}},
             "required": ["city"], "additionalProperties": False}}},
         {"name": "calculator", "parameters": {
             "type": "object", "properties": {"expression": {"type": "string", "maxLength": 5}},
             "required": ["expression"], "additionalProperties": False}}]


@pytest.fixture
def engine(tiny_gpt, byte_tokenizer):
    return Engine(tiny_gpt, byte_tokenizer, EngineConfig(max_batch_size=4, max_tokens_per_step=16,
                                                         linear_backend="dense"))


@pytest.fixture(scope="module")
def wide(byte_tokenizer):
    """A random model with room for 256 tokens: byte-level JSON from a random model runs long."""
    return Engine(random_gpt(seed=2, block_size=256), byte_tokenizer, EngineConfig(max_batch_size=4,
                                                                                    linear_backend="dense"))


def _full_logprobs(gpt, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = gpt(torch.tensor([ids]))[0]
    return torch.log_softmax(logits[0].float(), dim=-1)


def test_logprobs_are_log_softmax_of_the_model_logits(engine, tiny_gpt, random_prompts):
    prompt = random_prompts([9])[0]
    for params in (SamplingParams(max_tokens=6, temperature=0, logprobs=3),
                   SamplingParams(max_tokens=6, temperature=0.7, top_k=20, seed=3, logprobs=0,
                                  repetition_penalty=1.3)):
        out = engine.generate([prompt], params)[0]
        assert len(out.logprobs) == len(out.token_ids) == 6
        reference = _full_logprobs(tiny_gpt, prompt + out.token_ids)
        for i, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
            row = reference[len(prompt) - 1 + i]
            assert entry.token_id == token
            assert entry.logprob == pytest.approx(row[token].item(), abs=1e-4)  # raw: before penalty/temperature
            top = row.topk(params.logprobs)
            assert [t for t, _ in entry.top] == top.indices.tolist()
            assert [v for _, v in entry.top] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_logprobs_stream_on_deltas(engine, random_prompts):
    handle = engine.submit(random_prompts([5])[0], SamplingParams(max_tokens=4, temperature=0, logprobs=1))
    deltas = list(handle)
    assert [d.logprobs[0].token_id for d in deltas] == list(handle.result().token_ids)
    plain = engine.submit(random_prompts([5])[0], SamplingParams(max_tokens=2, temperature=0))
    assert all(d.logprobs is None for d in plain) and plain.result().logprobs is None


def test_score_gives_each_prompt_token_given_the_ones_before(engine, tiny_gpt, random_prompts):
    prompt = random_prompts([40])[0]  # longer than a step's budget (16): scored over three chunks
    out = engine.score(prompt, top_k=2)
    reference = _full_logprobs(tiny_gpt, prompt)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        entry = out.prompt_logprobs[i]
        assert entry.token_id == prompt[i]
        assert entry.logprob == pytest.approx(reference[i - 1, prompt[i]].item(), abs=1e-4)
        assert [t for t, _ in entry.top] == reference[i - 1].topk(2).indices.tolist()
    # Scoring shares steps with a generating request without changing either.
    other = random_prompts([7])[0]
    alone = engine.generate([other], SamplingParams(max_tokens=5, temperature=0))[0].token_ids
    scored = engine.submit(prompt, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), stream=False)
    together = engine.submit(other, SamplingParams(max_tokens=5, temperature=0), stream=False)
    engine.run()
    assert together.result().token_ids == alone
    assert [e.logprob for e in scored.result().prompt_logprobs[1:]] == pytest.approx(
        [e.logprob for e in out.prompt_logprobs[1:]], abs=1e-5)


def test_json_schema_output_parses_and_validates(wide):
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
    params = [SamplingParams(max_tokens=120, temperature=1.0, seed=s, response_format=fmt) for s in range(4)]
    params.append(SamplingParams(max_tokens=120, temperature=0, response_format=fmt))
    for out in wide.generate(["P: "] * len(params), params):
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), SCHEMA)


def test_json_object_gives_an_object(wide):
    out = wide.generate(["P: "], SamplingParams(max_tokens=40, temperature=0, seed=1,
                                                   response_format={"type": "json_object"}))[0]
    assert out.text.startswith("{")
    if out.finish_reason == "stop":  # a random model may fill its budget inside a string; if it ends, it is JSON
        assert isinstance(json.loads(out.text), dict)


def test_raw_lark_grammar(engine):
    out = engine.generate(["P: "], SamplingParams(max_tokens=20, temperature=1.0, seed=0,
                                                   grammar='start: ("yes" | "no") "!"'))[0]
    assert out.text in ("yes!", "no!") and out.finish_reason == "stop"


def test_bad_grammars_are_engine_errors_naming_the_problem(engine):
    with pytest.raises(EngineError, match="integr"):
        engine.submit("P: ", SamplingParams(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integr"}}}}}))
    with pytest.raises(EngineError, match="xml"):
        engine.submit("P: ", SamplingParams(response_format={"type": "xml"}))
    with pytest.raises(EngineError, match="unknown name"):
        engine.submit("P: ", SamplingParams(grammar="start: nothing_defined"))
    with pytest.raises(EngineError, match="logprobs"):
        engine.submit("P: ", SamplingParams(logprobs=21))
    assert not engine.has_unfinished


def test_tool_call_grammar_forces_a_call_to_the_named_tool(wide, byte_tokenizer):
    grammar = tool_call_grammar(TOOLS, "get_weather")
    assert TOOL_CALL in grammar and END in grammar
    for seed in range(3):
        out = wide.generate(["P: "], SamplingParams(max_tokens=160, temperature=1.0, seed=seed, grammar=grammar))[0]
        assert out.finish_reason == "tool_call", byte_tokenizer.decode(out.token_ids)
        assert out.tool_call["name"] == "get_weather" and set(out.tool_call["arguments"]) == {"city"}
        # <|tool_call|> and <|end|> were generated as the single special tokens, not spelled out in bytes.
        assert out.token_ids[0] == byte_tokenizer.convert_tokens_to_ids(TOOL_CALL)
        assert out.token_ids[-1] == byte_tokenizer.convert_tokens_to_ids(END)
    names = set()
    for seed in range(6):
        out = wide.generate(["P: "], SamplingParams(max_tokens=160, temperature=1.0, seed=seed,
                                                       grammar=tool_call_grammar(TOOLS, None)))[0]
        assert out.finish_reason == "tool_call"
        names.add(out.tool_call["name"])
    assert names <= {"get_weather", "calculator"}
    with pytest.raises(EngineError, match="not among"):
        tool_call_grammar(TOOLS, "nope")


def test_grammar_rows_share_batches_with_free_ones(engine, random_prompts):
    free = random_prompts([6])[0]
    alone = engine.generate([free], SamplingParams(max_tokens=8, temperature=0))[0].token_ids
    outs = engine.generate([free, "P: "], [SamplingParams(max_tokens=8, temperature=0),
                                           SamplingParams(max_tokens=20, temperature=0, grammar='start: "ok"')])
    assert outs[0].token_ids == alone and outs[1].text == "ok"


def test_constrained_decoding_on_a_fresh_random_model_with_bf16(byte_tokenizer):
    engine = Engine(random_gpt(seed=5), byte_tokenizer, EngineConfig(max_batch_size=2, dtype="bfloat16"))
    out = engine.generate(["P: "], SamplingParams(max_tokens=20, temperature=0, logprobs=1,
                                                   grammar='start: "[" ("1" | "2") "]"'))[0]
    assert out.text in ("[1]", "[2]") and len(out.logprobs) == len(out.token_ids)
