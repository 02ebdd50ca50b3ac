"""The engine end to end: HF-equal greedy output, continuous batching, seeded sampling, streaming,
stops, tool calls, limits, metrics and every bad input."""
from __future__ import annotations

import pytest
import torch

from shared.engine import Engine, EngineConfig, EngineError, SamplingParams
from shared.engine.request import Status

GREEDY = SamplingParams(max_tokens=24, temperature=0)


def test_greedy_matches_hf_generate(tiny_gpt, backend, random_prompts, hf_greedy):
    engine = Engine(tiny_gpt, None, EngineConfig(max_batch_size=2, linear_backend=backend))
    for prompt in random_prompts([1, 4, 13, 29]):
        for n in (1, 24):
            out = engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0)).result()
            assert out.token_ids == hf_greedy(prompt, n), (len(prompt), n)
            assert out.finish_reason == "length"


def test_repetition_penalty_matches_hf(tiny_gpt, random_prompts, hf_greedy):
    prompt = random_prompts([6])[0]
    out = Engine(tiny_gpt).submit(prompt, SamplingParams(max_tokens=20, temperature=0,
                                                         repetition_penalty=1.8)).result()
    assert out.token_ids == hf_greedy(prompt, 20, repetition_penalty=1.8)
    assert out.token_ids != hf_greedy(prompt, 20)  # the penalty changed something


def _staggered(engine: Engine, prompts, params, joins: dict[int, list[int]]):
    """Submit prompt i at step joins[step]; step until all finish.

    Returns the outputs, the largest decode batch, and whether some step mixed decode and prefill."""
    handles, widest, mixed, step = {}, 0, False, 0
    while len(handles) < len(prompts) or engine.has_unfinished:
        for i in joins.get(step, []):
            handles[i] = engine.submit(prompts[i], params[i])
        sched = engine.scheduler
        widest = max(widest, sched.n_decode)
        mixed |= sched.n_decode > 0 and bool(sched.prefilling or sched.waiting)
        engine.step()
        # the slot invariant: decoding requests are exactly slots 0..n_decode-1, each knows its slot
        assert all(r is not None and r.status is Status.DECODE for r in sched.slots[:sched.n_decode])
        assert all(r is None or r.status is Status.PREFILL for r in sched.slots[sched.n_decode:])
        assert all(r.slot == i for i, r in enumerate(sched.slots) if r is not None)
        step += 1
    return [handles[i].result() for i in range(len(prompts))], widest, mixed


def test_continuous_batching_matches_one_at_a_time(tiny_gpt, backend, random_prompts):
    prompts = random_prompts([3, 17, 9, 30, 1, 12])
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (20, 5, 12, 9, 16, 3)]
    alone = [Engine(tiny_gpt, None, EngineConfig(max_batch_size=1, linear_backend=backend))
             .submit(p, sp).result().token_ids for p, sp in zip(prompts, params)]
    # 3 slots, 7 tokens per step, prompt chunks of at most 4: prompts are chunked while others decode,
    # requests wait for slots, join mid-stream and leave at different steps (moving cache slots).
    engine = Engine(tiny_gpt, None, EngineConfig(max_batch_size=3, max_tokens_per_step=7, prefill_chunk=4,
                                                 linear_backend=backend))
    outs, widest, mixed = _staggered(engine, prompts, params, {0: [0, 1], 2: [2, 3], 5: [4], 9: [5]})
    assert [o.token_ids for o in outs] == alone
    assert widest == 3 and mixed  # the decode batch was shared, and with prompt chunks
    assert engine.stats.prefill_tokens == sum(map(len, prompts))
    assert engine.scheduler.n_decode == 0 and all(s is None for s in engine.scheduler.slots)


def test_generate_batches_prompts(tiny_gpt, random_prompts):
    prompts = random_prompts([5, 2, 11, 7])
    engine = Engine(tiny_gpt, None, EngineConfig(max_batch_size=4))
    outs = engine.generate(prompts, GREEDY)
    alone = [Engine(tiny_gpt).submit(p, GREEDY).result().token_ids for p in prompts]
    assert [o.token_ids for o in outs] == alone
    assert engine.stats.steps == GREEDY.max_tokens  # one prefill step for all, then shared decode steps


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_gpt, random_prompts):
    prompts = random_prompts([8, 3, 15, 6])
    mine = SamplingParams(max_tokens=16, temperature=0.9, top_k=40, top_p=0.95, seed=7)
    alone = Engine(tiny_gpt).submit(prompts[0], mine).result().token_ids
    assert Engine(tiny_gpt).submit(prompts[0], mine).result().token_ids == alone
    others = [SamplingParams(max_tokens=10, temperature=1.2, seed=1), GREEDY,
              SamplingParams(max_tokens=5, temperature=0.5, repetition_penalty=1.3)]
    engine = Engine(tiny_gpt, None, EngineConfig(max_batch_size=4, max_tokens_per_step=8, prefill_chunk=5))
    outs, _, _ = _staggered(engine, prompts, [mine, *others], {0: [1, 2], 2: [0], 4: [3]})
    assert outs[0].token_ids == alone
    changed = Engine(tiny_gpt).submit(prompts[0], SamplingParams(**{**mine.__dict__, "seed": 8})).result()
    assert changed.token_ids != alone


def test_unseeded_requests_follow_the_engine_seed(tiny_gpt, random_prompts):
    params = SamplingParams(max_tokens=12, temperature=1.0)
    prompt = random_prompts([4])[0]

    def run(seed):
        return Engine(tiny_gpt, None, EngineConfig(seed=seed)).submit(prompt, params).result().token_ids
    assert run(0) == run(0) != run(1)


def test_stream_deltas_concatenate_to_the_text(tiny_gpt, byte_tokenizer):
    engine = Engine(tiny_gpt, byte_tokenizer, EngineConfig(max_batch_size=2))
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=3, ignore_eos=True)
    handle = engine.submit("héllo wörld 😀", params)
    other = engine.submit("x", SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    deltas = list(handle)
    out = handle.result()
    assert "".join(d.text for d in deltas) == out.text
    assert [t for d in deltas for t in d.token_ids] == out.token_ids
    assert deltas[-1].finished and deltas[-1].finish_reason == "length" and not any(d.finished for d in deltas[:-1])
    assert out.text == byte_tokenizer.decode(out.token_ids)  # random bytes: cut UTF-8 included
    assert other.finished and len(other.result().token_ids) == 5  # advanced by the same steps


def test_multibyte_characters_arrive_whole(scripted):
    engine, prompt = scripted("añ 😀 日本<|end|>")
    deltas = list(engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0)))
    texts = [d.text for d in deltas]
    assert "".join(texts) == "añ 😀 日本"
    assert "😀" in texts and "日" in texts and "\ufffd" not in "".join(texts)
    assert texts.count("") >= 3 + 2 * 2  # the emoji's first 3 bytes, 2 of each CJK char: nothing yet


def test_stop_token_and_ignore_eos(scripted, byte_tokenizer):
    engine, prompt = scripted("Hello world<|end|>more")
    end = byte_tokenizer.convert_tokens_to_ids("<|end|>")
    out = engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0)).result()
    assert (out.text, out.finish_reason, out.stop_reason, out.token_ids[-1]) == ("Hello world", "stop", end, end)
    out = engine.submit(prompt, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)).result()
    assert out.finish_reason == "length" and out.text == "Hello world<|end|>more"
    out = engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[ord(" ")])).result()
    assert (out.text, out.stop_reason) == ("Hello", ord(" "))


def test_stop_strings_are_never_streamed(scripted):
    engine, prompt = scripted("Hello world, wonderful<|end|>")
    handle = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0, stop=["won", "xyz"]))
    deltas = list(handle)
    out = handle.result()
    assert (out.text, out.finish_reason, out.stop_reason) == ("Hello world, ", "stop", "won")
    assert "".join(d.text for d in deltas) == out.text  # "wo" of "world" was held back, then released
    # a held-back prefix is released when the reply ends another way
    engine, prompt = scripted("abc wo<|end|>")
    out = engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0, stop=["won"])).result()
    assert (out.text, out.finish_reason) == ("abc wo", "stop")


def test_tool_call_finishes_with_the_parsed_call(scripted):
    engine, prompt = scripted('<|tool_call|>{"name":"add","arguments":{"a":1,"b":[2]}}<|end|>')
    handle = engine.submit(prompt, SamplingParams(max_tokens=60, temperature=0))
    deltas = list(handle)
    out = handle.result()
    assert out.finish_reason == "tool_call" and deltas[-1].finish_reason == "tool_call"
    assert out.tool_call == {"name": "add", "arguments": {"a": 1, "b": [2]}} and out.tool_call_error is None
    assert out.text == "" and all(d.text == "" for d in deltas)
    # without parsing, the same tokens are text and <|end|> is a plain stop
    out = engine.submit(prompt, SamplingParams(max_tokens=60, temperature=0, parse_tool_calls=False)).result()
    assert out.finish_reason == "stop" and out.text.startswith('<|tool_call|>{"name"') and out.tool_call is None


@pytest.mark.parametrize("reply, error", [('<|tool_call|>{"name": "add", <|end|>', "not valid JSON"),
                                          ('<|tool_call|>["add"]<|end|>', '"name": str')])
def test_malformed_tool_call_is_reported(scripted, reply, error):
    engine, prompt = scripted(reply)
    out = engine.submit(prompt, SamplingParams(max_tokens=60, temperature=0)).result()
    assert out.finish_reason == "tool_call" and out.tool_call is None and error in out.tool_call_error
    assert out.tool_call_text == reply.removeprefix("<|tool_call|>").removesuffix("<|end|>")


def test_tool_call_cut_by_max_tokens(scripted):
    engine, prompt = scripted('<|tool_call|>{"name":"add","arguments":{}}<|end|>')
    out = engine.submit(prompt, SamplingParams(max_tokens=5, temperature=0)).result()
    assert out.finish_reason == "length" and out.tool_call is None and "length limit" in out.tool_call_error


def test_context_end_finishes_with_length(tiny_gpt, random_prompts):
    engine = Engine(tiny_gpt, None, EngineConfig(max_seq_len=20))
    out = engine.submit(random_prompts([18])[0], SamplingParams(max_tokens=50, temperature=0)).result()
    assert out.finish_reason == "length" and len(out.token_ids) == 3  # positions 18, 19 fed; 3 tokens sampled
    out = engine.submit(random_prompts([20])[0], SamplingParams(max_tokens=50, temperature=0)).result()
    assert len(out.token_ids) == 1  # a full context still predicts one token


def test_metrics_and_stats(tiny_gpt, random_prompts):
    engine = Engine(tiny_gpt)
    out = engine.submit(random_prompts([10])[0], SamplingParams(max_tokens=8, temperature=0)).result()
    m = out.metrics
    assert (m.prompt_tokens, m.output_tokens) == (10, 8)
    assert 0 <= m.queue_s <= m.ttft_s and 0 < m.prefill_s <= m.ttft_s
    assert m.prefill_tokens_per_s > 0 and m.tpot_s > 0 and m.decode_tokens_per_s == pytest.approx(1 / m.tpot_s)
    assert set(m.as_dict()) >= {"ttft_s", "prefill_tokens_per_s", "tpot_s", "decode_tokens_per_s"}
    assert (engine.stats.steps, engine.stats.prefill_tokens, engine.stats.decode_tokens) == (8, 10, 7)


def test_callbacks_abort_and_chat(tiny_gpt, byte_tokenizer):
    engine = Engine(tiny_gpt, byte_tokenizer)
    seen = []
    kept = engine.submit([1, 2, 3], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True), on_delta=seen.append)
    dropped = engine.submit([4, 5], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    engine.step()
    engine.step()
    dropped.cancel()
    engine.run()
    assert [t for d in seen for t in d.token_ids] == kept.result().token_ids and seen[-1].finished
    out = dropped.result()
    assert out.finish_reason == "abort" and len(out.token_ids) == 2 and not engine.has_unfinished
    with pytest.raises(EngineError, match="on_delta"):
        list(kept)
    chat = engine.submit_chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2, temperature=0))
    assert chat.result().prompt_token_ids == byte_tokenizer.encode("<|user|>hi<|end|><|assistant|>",
                                                                   add_special_tokens=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_tokens=0), "max_tokens must be a positive int"),
    (dict(max_tokens=-3), "max_tokens must be a positive int"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(temperature=-0.1), r"temperature must be a number in \[0.0"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k must be an int >= 0"),
    (dict(top_p=0.0), r"top_p must be a number in \(0.0, 1.0\]"),
    (dict(top_p=1.5), "top_p"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(stop=[""]), "non-empty strings"),
    (dict(stop_token_ids=[263]), r"stop_token_ids must be ints in \[0, 263\)"),
    (dict(seed="x"), "seed must be an int"),
])
def test_bad_sampling_params(tiny_gpt, byte_tokenizer, kwargs, match):
    engine = Engine(tiny_gpt, byte_tokenizer)
    with pytest.raises(EngineError, match=match):
        engine.submit([1, 2], SamplingParams(**kwargs))
    assert not engine.has_unfinished  # nothing was queued


def test_bad_prompts(tiny_gpt):
    engine = Engine(tiny_gpt, None, EngineConfig(max_seq_len=32))
    with pytest.raises(EngineError, match=r"prompt has 40 tokens but the context holds 32 .*model context 64"):
        engine.submit([1] * 40)
    with pytest.raises(EngineError, match="prompt is empty"):
        engine.submit([])
    with pytest.raises(EngineError, match=r"ints in \[0, 263\).*\[263, -1\]"):
        engine.submit([1, 263, -1])
    with pytest.raises(EngineError, match="needs a tokenizer"):
        engine.submit("text")
    with pytest.raises(EngineError, match="stop strings need a tokenizer"):
        engine.submit([1], SamplingParams(stop=["x"]))
    engine.submit([1], request_id="a")
    with pytest.raises(EngineError, match="already running"):
        engine.submit([2], request_id="a")
    with pytest.raises(EngineError, match="no running request"):
        engine.abort("zzz")


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_batch_size=0), "max_batch_size must be a positive int"),
    (dict(max_batch_size=8, max_tokens_per_step=4), "below max_batch_size"),
    (dict(max_seq_len=65), r"max_seq_len=65 must be in \[1, 64\]"),
    (dict(linear_backend="fast"), "unknown"),
    (dict(dtype="float16"), "unsupported"),
])
def test_bad_engine_config(tiny_gpt, kwargs, match):
    with pytest.raises(EngineError, match=match):
        Engine(tiny_gpt, None, EngineConfig(**kwargs))


def test_bfloat16_engine_runs(tiny_gpt):
    out = Engine(tiny_gpt, None, EngineConfig(dtype="bfloat16")).submit([5, 6, 7], GREEDY).result()
    assert len(out.token_ids) == GREEDY.max_tokens and out.finish_reason == "length"


def test_from_checkpoint(tmp_path, byte_tokenizer, tiny_hf, random_prompts, hf_greedy):
    tiny_hf.save_pretrained(tmp_path)
    byte_tokenizer.save_pretrained(tmp_path)
    engine = Engine.from_checkpoint(tmp_path, EngineConfig(max_batch_size=2))
    prompt = random_prompts([5])[0]
    assert engine.submit(prompt, GREEDY).result().token_ids == hf_greedy(prompt, GREEDY.max_tokens)
    assert engine.specials.tool_call == 260 and engine.specials.stop_ids == {256, 262}


def test_engine_rejects_other_models():
    with pytest.raises(EngineError, match="GPT or an EngineModel"):
        Engine(torch.nn.Linear(2, 2))


def test_engine_model_dtype_must_match_the_config(tiny_gpt):
    from shared.engine import EngineModel

    model = EngineModel.from_gpt(tiny_gpt, dtype=torch.bfloat16)
    with pytest.raises(EngineError, match="holds torch.bfloat16 weights but EngineConfig.dtype is 'float32'"):
        Engine(model)
    assert Engine(model, None, EngineConfig(dtype="bfloat16")).submit([1, 2], GREEDY).result().finish_reason


def test_text_before_a_tool_call_is_kept(scripted):
    engine, prompt = scripted('Hm 😀<|tool_call|>{"name":"weather","arguments":{"city":"Paris"}}<|end|>')  # < 64
    handle = engine.submit(prompt, SamplingParams(max_tokens=80, temperature=0, stop=["😀!"]))
    deltas = list(handle)
    out = handle.result()
    assert out.text == "Hm 😀" == "".join(d.text for d in deltas)  # the held-back emoji is released
    assert out.tool_call == {"name": "weather", "arguments": {"city": "Paris"}}
