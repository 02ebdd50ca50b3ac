"""services.frontend.ui: the model picker over the registry, and the send handler against the stub gateway."""
from __future__ import annotations

import gradio as gr

from services.frontend.render import NO_METRICS, NO_SOURCES, NO_TOOLS, WAITING
from services.frontend.ui import DEFAULT_MODEL, ChatHandler, build_ui, model_choices
from shared.bus import CHAT_REQUESTS
from shared.registry import Registry


def _register(registry, run, stage, kind):
    registry.stage_dir(run, stage)
    return registry.register(run, stage, kind)


def test_model_picker_lists_models_newest_first_after_the_gateway_default(runs_dir):
    registry = Registry(runs_dir)
    for stage, kind in (("tokenizer", "tokenizer"), ("sft", "hf-model"), ("quantize-int8", "quantized"),
                        ("quantize-gguf-q8_0", "gguf"), ("quantize", "report")):
        _register(registry, "r1", stage, kind)
    assert model_choices(runs_dir) == [("current model (gateway default)", DEFAULT_MODEL),
                                       ("r1/quantize-gguf-q8_0 [gguf]", "r1/quantize-gguf-q8_0"),
                                       ("r1/quantize-int8 [quantized]", "r1/quantize-int8"),
                                       ("r1/sft [hf-model]", "r1/sft")]


def test_model_picker_survives_a_missing_root_and_a_corrupt_manifest(runs_dir, caplog):
    assert model_choices(runs_dir / "nowhere") == [("current model (gateway default)", DEFAULT_MODEL)]
    art = _register(Registry(runs_dir), "r1", "sft", "hf-model")
    (art.dir / "journey.json").write_text("{not json")
    assert len(model_choices(runs_dir)) == 1
    assert "corrupt" in caplog.text


def _respond(handler, message, history=None, conversation_id=None, model=DEFAULT_MODEL, max_tokens=64):
    return list(handler.respond(message, history, conversation_id, model, True, False, max_tokens, 0.0))


def test_a_turn_streams_into_the_chat_and_fills_the_panels(bus, gateway):
    views = _respond(ChatHandler(bus, timeout_s=10), "what is 6 * 7?")
    box, history, conversation_id, sources, tools, metrics = views[-1]
    assert box == "" and conversation_id
    assert history == [{"role": "user", "content": "what is 6 * 7?"}, {"role": "assistant", "content": gateway.ANSWER}]
    assert views[0][1][-1]["content"] == WAITING and views[0][3:] == (NO_SOURCES, NO_TOOLS, NO_METRICS)
    bubbles = [v[1][-1]["content"] for v in views]
    assert [b for b in bubbles if gateway.ANSWER.startswith(b)] == ["The", "The answer", "The answer is",
                                                                    gateway.ANSWER, gateway.ANSWER, gateway.ANSWER]
    assert "docs/arith.md" in sources and "calculator" in tools and "42" in tools
    assert "**TTFT** 0.125 s" in metrics and "31.5 tokens/s" in metrics
    [request] = gateway.requests
    assert (request.model, request.use_rag, request.use_tools, request.max_tokens) == (None, True, False, 64)


def test_the_conversation_id_and_model_choice_reach_the_gateway(bus, gateway):
    handler = ChatHandler(bus, timeout_s=10, max_tokens_limit=100)
    first = _respond(handler, "hi", model="r1/sft")[-1]
    second = _respond(handler, "and again", first[1], first[2], model="r1/sft", max_tokens=5000)[-1]
    assert second[2] == first[2] and len(second[1]) == 4
    assert [(r.conversation_id, r.model, [m.content for m in r.messages]) for r in gateway.requests] == \
        [(first[2], "r1/sft", ["hi"]), (first[2], "r1/sft", ["and again"])]  # the gateway keeps the memory
    assert gateway.requests[1].max_tokens == 100  # clamped to the page's limit


def test_a_gateway_error_shows_in_the_bubble(bus, gateway):
    history = _respond(ChatHandler(bus, timeout_s=10), gateway.FAIL)[-1][1]
    assert "Error (500):** generator crashed: out of memory" in history[-1]["content"]


def test_no_gateway_shows_the_timeout_hint_instead_of_hanging(bus):
    history = _respond(ChatHandler(bus, timeout_s=0.2), "hello?")[-1][1]
    assert "did not answer in 0.2 s" in history[-1]["content"] and "journey up" in history[-1]["content"]


def test_an_empty_message_sends_nothing(bus):
    [view] = _respond(ChatHandler(bus), "   ", [{"role": "user", "content": "x"}], "conv")
    assert view[1] == [{"role": "user", "content": "x"}] and view[2] == "conv"
    assert bus.read(CHAT_REQUESTS) == []


def test_the_page_has_the_parts_the_browser_test_drives(bus, runs_dir):
    demo = build_ui(bus, runs_dir)
    assert isinstance(demo, gr.Blocks)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"chat", "message", "send", "sources", "tools", "metrics", "model", "new-conversation"} <= ids
