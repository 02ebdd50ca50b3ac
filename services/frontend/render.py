"""Turn a ``ChatTurn`` (shared.bus.chat_client) into the Markdown the Gradio page shows.

Pure functions, no Gradio: the answer bubble, the sources panel, the tool-calls panel and the
speed line. Text that came from documents or tools is shown in code spans or quoted and cut to a
readable length, so a retrieved passage cannot restyle the page.
"""
from __future__ import annotations

import json
from typing import Any

from shared.bus.chat_client import ChatTurn, ToolStep

EXCERPT_CHARS = 300
NO_SOURCES = "_No sources retrieved for this turn._"
NO_TOOLS = "_No tool calls in this turn._"
NO_METRICS = "_Speed appears when the answer is done._"
WAITING = "…"


def _clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code(text: str) -> str:
    """``text`` as one inline code span (a backtick inside would end a single-backtick span early)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_answer(turn: ChatTurn) -> str:
    """The assistant bubble: the answer so far, and the error when the turn failed."""
    if turn.error:
        status = f" ({turn.status})" if turn.status else ""
        prefix = f"{turn.answer}\n\n" if turn.answer else ""
        return f"{prefix}⚠️ **Error{status}:** {turn.error}"
    return turn.answer or WAITING


def render_sources(sources: list[dict[str, Any]]) -> str:
    """Numbered list of retrieved passages: source, score, a quoted excerpt."""
    if not sources:
        return NO_SOURCES
    lines = []
    for i, item in enumerate(sources, 1):
        score = item.get("score")
        score_text = f" · score {score:.3f}" if isinstance(score, (int, float)) else ""
        lines.append(f"{i}. **{_clip(item.get('source', 'unknown source'), 120)}**{score_text}\n\n"
                     f"   > {_clip(item.get('text', ''))}")
    return "\n".join(lines)


def _tool_line(step: ToolStep) -> str:
    call = _code(f"{step.name}({json.dumps(step.arguments, ensure_ascii=False)})")
    if step.result is None:
        return f"- {call} → _running…_"
    if step.result.get("ok", True):
        return f"- {call} → {_code(_clip(step.result.get('output', ''), 200))}"
    return f"- {call} → ❌ {_clip(step.result.get('error', '') or 'failed without a message', 200)}"


def render_tools(tools: list[ToolStep]) -> str:
    """One line per tool call: the call, then its result, its error, or that it is still running."""
    return "\n".join(_tool_line(t) for t in tools) if tools else NO_TOOLS


# (label, metric keys in order of preference, format). The gateway's turn_* figures are what the user
# waited (retrieval and tool rounds included); the generator's own ttft_s / wall_s are the fallback.
METRIC_FIELDS = (("TTFT", ("turn_ttft_s", "ttft_s"), "{:.3f} s"),
                 ("decode", ("decode_tokens_per_s",), "{:.1f} tokens/s"),
                 ("tokens", ("completion_tokens",), "{:.0f}"),
                 ("tool rounds", ("tool_rounds",), "{:.0f}"),
                 ("total", ("turn_s", "wall_s"), "{:.2f} s"))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render_metrics(metrics: dict[str, Any]) -> str:
    """TTFT and decode speed, then tokens, tool rounds and total time, for those the gateway sent."""
    parts = []
    for label, keys, fmt in METRIC_FIELDS:
        value = next((metrics[k] for k in keys if _number(metrics.get(k))), None)
        if value is not None and not (label == "tool rounds" and value == 0):
            parts.append(f"**{label}** " + fmt.format(value))
    return " · ".join(parts) if parts else NO_METRICS
