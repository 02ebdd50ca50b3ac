"""Serving an artifact to concurrent asyncio callers: fitting to the context, shared batches, aborts, the model pool."""
from __future__ import annotations

import asyncio
import time

import pytest

from shared.engine import Engine, EngineConfig, SamplingParams
from shared.model.hf import save_hf_checkpoint
from shared.registry import Registry
from shared.serving.backends import EngineBackend, fit_messages
from shared.serving.errors import ServingError
from shared.serving.pool import ModelPool, default_model
from tests.shared.engine.conftest import random_gpt


def count_chars(text: str) -> int:
    return len(text)


def test_fitting_drops_the_oldest_turns_and_keeps_the_system_message():
    turns = [{"role": "system", "content": "S"}] + [{"role": "user", "content": f"turn {i} " * 2} for i in range(6)]
    fitted, n, max_tokens = fit_messages(turns, count_chars, context=120, max_tokens=40)
    assert fitted[0]["content"] == "S" and fitted[-1] == turns[-1] and len(fitted) < len(turns)
    assert n + 40 <= 120 and max_tokens == 40


def test_a_long_system_message_is_cut_from_its_end_before_the_question_is_refused():
    passages = [{"role": "system", "content": "best passage. " + "filler " * 100}, {"role": "user", "content": "q?"}]
    fitted, n, _ = fit_messages(passages, count_chars, context=120, max_tokens=40)
    assert n + 40 <= 120 and fitted[-1] == passages[-1]
    assert fitted[0]["content"].startswith("best passage.") and len(fitted[0]["content"]) < 100


def test_a_long_tool_result_is_cut_rather_than_the_question_dropped():
    turn = [{"role": "user", "content": "Search the docs for json."},
            {"role": "assistant", "content": "", "tool_call": {"name": "search_docs", "arguments": {"query": "json"}}},
            {"role": "tool", "content": "JSON is a format. " + "more " * 80}]
    fitted, n, _ = fit_messages(turn, count_chars, context=260, max_tokens=40)
    assert n + 40 <= 260 and fitted[0] == turn[0] and fitted[1] == turn[1]
    assert fitted[2]["content"].startswith("JSON is a format.") and len(fitted[2]["content"]) < 100


def test_fitting_cuts_max_tokens_to_the_room_left_and_refuses_a_message_that_cannot_fit():
    _, n, max_tokens = fit_messages([{"role": "user", "content": "hi"}], count_chars, context=64, max_tokens=500)
    assert max_tokens == 64 - n
    with pytest.raises(ServingError) as info:
        fit_messages([{"role": "user", "content": "x" * 100}], count_chars, context=64, max_tokens=8)
    assert info.value.status == 400 and "shorten the message" in str(info.value)


async def _collect(backend, messages, params, stop_after=None):
    pieces, done = [], None
    async for event in backend.stream(messages, params):
        if event.kind == "token":
            pieces.append(event.text)
            if stop_after and len(pieces) >= stop_after:
                break
        else:
            done = event
    return "".join(pieces), done


def test_concurrent_requests_share_forward_passes_and_match_one_at_a_time(byte_tokenizer):
    engine = Engine(random_gpt(block_size=128), byte_tokenizer, EngineConfig(max_batch_size=4))
    backend = EngineBackend(engine, "m")
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompts = [[{"role": "user", "content": text}] for text in ("one", "second prompt", "3")]
    try:
        alone = [asyncio.run(_collect(backend, p, params)) for p in prompts]
        steps_before = engine.stats.steps
        together = asyncio.run(_gather(backend, prompts, params))
        assert [t for t, _ in together] == [t for t, _ in alone]
        assert engine.stats.steps - steps_before < sum(d.metrics["completion_tokens"] for _, d in together)
        assert all(d.metrics["ttft_s"] > 0 and d.finish_reason == "length" for _, d in together)
    finally:
        backend.close()


async def _gather(backend, prompts, params):
    return await asyncio.gather(*(_collect(backend, p, params) for p in prompts))


def _paced(engine: Engine, seconds: float = 0.03) -> Engine:
    """``engine`` with every step slowed down, so a request is still running when its caller acts on it
    (the fused decode step makes the tiny model's 50 tokens in about a millisecond otherwise)."""
    step = engine.step

    def paced_step():
        step()
        time.sleep(seconds)

    engine.step = paced_step
    return engine


def test_a_caller_that_goes_away_frees_its_slot(byte_tokenizer):
    engine = _paced(Engine(random_gpt(block_size=128), byte_tokenizer, EngineConfig(max_batch_size=2)))
    backend = EngineBackend(engine, "m")
    try:
        text, done = asyncio.run(_collect(backend, [{"role": "user", "content": "hi"}],
                                          SamplingParams(max_tokens=50, temperature=0, ignore_eos=True), stop_after=2))
        assert done is None and text
        for _ in range(100):
            if not engine.has_unfinished:
                break
            asyncio.run(asyncio.sleep(0.01))
        assert not engine.has_unfinished
    finally:
        backend.close()


@pytest.fixture
def registry(tmp_path, byte_tokenizer):
    registry = Registry(tmp_path / "runs")
    tok = tmp_path / "tok"
    byte_tokenizer.save_pretrained(tok)
    for stage in ("sft", "dpo"):
        save_hf_checkpoint(random_gpt(block_size=64), registry.stage_dir("r", stage), tokenizer_dir=tok)
        registry.register("r", stage, "hf-model")
    registry.stage_dir("r", "eval")
    registry.register("r", "eval", "report")
    return registry


def test_the_pool_serves_the_runs_final_model_and_loads_others_on_demand(registry):
    assert default_model(registry, "r").id == "r/dpo"
    pool = ModelPool(registry, "r/dpo", max_loaded=1)
    try:
        assert pool.get(None)[0] == "r/dpo"
        assert pool.get("sft")[0] == "r/sft"
        assert pool.loaded() == ["r/dpo", "r/sft"]  # one over max_loaded while r/sft is the one just asked for
        pool.get(None)
        assert pool.loaded() == ["r/dpo"]  # then the least recently used non-default model goes
        with pytest.raises(ServingError) as unknown:
            pool.get("r/nope")
        assert unknown.value.status == 404
        with pytest.raises(ServingError) as not_a_model:
            pool.get("r/eval")
        assert not_a_model.value.status == 400 and "not a model" in str(not_a_model.value)
        assert pool.set_default("r/sft") == "r/sft" and pool.get(None)[0] == "r/sft"
    finally:
        pool.close()


async def _events(backend, messages, params, *, lag_s: float = 0.0):
    """The stream's token texts and its done event; with ``lag_s`` the caller sleeps after the first token."""
    texts, done = [], None
    async for event in backend.stream(messages, params):
        if event.kind != "token":
            done = event
            continue
        texts.append(event.text)
        if len(texts) == 1 and lag_s:
            await asyncio.sleep(lag_s)
    return texts, done


def test_a_caller_that_keeps_up_gets_each_token_as_it_comes_and_a_lagging_one_gets_them_merged(byte_tokenizer):
    engine = Engine(random_gpt(block_size=128), byte_tokenizer, EngineConfig(max_batch_size=2))
    step = engine.step  # unpaced: the lagging caller's run below
    _paced(engine)  # an engine step slower than the caller: each delta is read before the next exists
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    messages = [{"role": "user", "content": "stream me"}]
    backend = EngineBackend(engine, "m")
    try:
        kept_up, done = asyncio.run(_events(backend, messages, params))
        engine.step = step
        lagged, lagged_done = asyncio.run(_events(backend, messages, params, lag_s=0.5))
    finally:
        backend.close()
    assert done.metrics["completion_tokens"] == lagged_done.metrics["completion_tokens"] == 16
    assert "".join(kept_up) == "".join(lagged) == done.text
    # A text delta can be empty while a multi-byte character is incomplete, so "nearly one event per token".
    assert len(kept_up) >= 12, kept_up
    # At most the first token(s), then everything made while the caller slept, as one event.
    assert len(lagged) <= 2, lagged


class _Loaded:
    active_requests = 0

    def close(self) -> None:
        pass


def test_the_pool_hands_the_loader_the_artifact_itself_so_its_kind_picks_the_runtime(registry):
    seen = []

    def loader(artifact, *, name, max_batch_size):
        seen.append((artifact.id, artifact.kind, name, max_batch_size))
        return _Loaded()

    pool = ModelPool(registry, "sft", loader=loader, max_batch_size=3)
    assert seen == [("r/sft", "hf-model", "r/sft", 3)]
    pool.close()
