"""services.frontend.render: what each panel shows for a turn."""
from __future__ import annotations

from services.frontend.render import (EXCERPT_CHARS, NO_METRICS, NO_SOURCES, NO_TOOLS, WAITING, render_answer,
                                      render_metrics, render_sources, render_tools)
from shared.bus.chat_client import ChatTurn, ToolStep


def test_answer_waits_streams_and_shows_errors_after_the_partial_text():
    assert render_answer(ChatTurn()) == WAITING
    assert render_answer(ChatTurn(answer="Hello")) == "Hello"
    failed = render_answer(ChatTurn(answer="Par", error="generator crashed", status=500))
    assert failed.startswith("Par\n\n") and "Error (500):** generator crashed" in failed
    assert render_answer(ChatTurn(error="the gateway did not answer")).startswith("⚠️ **Error:**")


def test_sources_are_numbered_scored_and_clipped():
    long_text = "word " * 200
    shown = render_sources([{"source": "a.md", "text": "first\npassage", "score": 0.91234},
                            {"source": "b.md", "text": long_text}])
    first, second = shown.split("\n2. ")
    assert first.startswith("1. **a.md** · score 0.912") and "> first passage" in first
    assert second.startswith("**b.md**\n") and "score" not in second
    assert second.endswith("…") and len(second.split("> ")[1]) == EXCERPT_CHARS
    assert render_sources([]) == NO_SOURCES


def test_tool_lines_show_call_then_result_error_or_running():
    shown = render_tools([ToolStep("calculator", {"expression": "6 * 7"}, {"ok": True, "output": "42"}),
                          ToolStep("search_docs", {"query": "json"}, {"ok": False, "error": "no index"}),
                          ToolStep("calculator", {"expression": "1"}),
                          ToolStep("echo", {}, {"ok": True, "output": "a `tick`"})]).splitlines()
    assert shown[0] == '- `calculator({"expression": "6 * 7"})` → `42`'
    assert shown[1] == '- `search_docs({"query": "json"})` → ❌ no index'
    assert shown[2].endswith("→ _running…_")
    assert shown[3].endswith("→ `` a `tick` ``")  # a backtick in the output cannot end the code span early
    assert render_tools([]) == NO_TOOLS


def test_metrics_show_ttft_and_decode_speed_and_skip_what_is_missing():
    assert render_metrics({"ttft_s": 0.1234, "decode_tokens_per_s": 45.67, "completion_tokens": 12,
                           "wall_s": 1.5, "tool_rounds": 0}) == ("**TTFT** 0.123 s · **decode** 45.7 tokens/s · "
                                                                 "**tokens** 12 · **total** 1.50 s")
    assert render_metrics({"decode_tokens_per_s": 10, "ttft_s": "n/a", "completion_tokens": True}) == \
        "**decode** 10.0 tokens/s"
    assert render_metrics({}) == NO_METRICS


def test_metrics_prefer_what_the_user_waited_over_the_generator_alone():
    shown = render_metrics({"ttft_s": 0.1, "turn_ttft_s": 0.4, "wall_s": 1.0, "turn_s": 2.0, "tool_rounds": 1})
    assert shown == "**TTFT** 0.400 s · **tool rounds** 1 · **total** 2.00 s"
