"""The Gradio chat page: ``build_ui(bus, registry_root) -> gr.Blocks``.

The page sends each message as a ``ChatRequest`` on the bus (``shared.bus.chat_client``) and
streams the gateway's ``ChatEvent``s back into the chat bubble, with side panels for the retrieved
sources, the tool calls and their results, and TTFT / decode speed. A model picker lists the
registered model artifacts (HF checkpoints, quantized, GGUF) and sends the choice as
``ChatRequest.model``; the empty choice leaves the generator on its current model. Each browser
session gets its own ``conversation_id``, so the gateway keeps the conversation's memory and the
page sends only the new turn. This module does not launch a server (``main`` does) and holds no
chat logic beyond wiring events to ``ChatTurn`` and ``render``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from services.frontend.render import NO_METRICS, NO_SOURCES, NO_TOOLS, render_answer, render_metrics, \
    render_sources, render_tools
from shared.bus.chat_client import ChatTurn, make_request, stream_chat
from shared.bus.messages import new_id
from shared.bus.streams import Bus
from shared.registry import ArtifactNotFound, Registry

log = logging.getLogger(__name__)

DEFAULT_MODEL = ""  # the picker's "whatever the generator serves now" entry: sent as model=None


def model_choices(registry_root: str | Path | None) -> list[tuple[str, str]]:
    """(label, artifact id) for the model picker: the generator's default first, then models newest first."""
    choices = [("current model (gateway default)", DEFAULT_MODEL)]
    try:
        models = Registry(registry_root).models()
    except ArtifactNotFound as exc:  # one corrupt manifest should not take the page down
        log.warning("model picker lists no artifacts: %s", exc)
        return choices
    return choices + [(f"{a.id} [{a.kind}]", a.id) for a in reversed(models)]


# What one handler step shows: textbox, chat history, conversation id, sources, tools, metrics.
View = tuple[str, list[dict[str, Any]], str | None, str, str, str]


class ChatHandler:
    """The page's send handler, a streaming generator; kept apart from Gradio so tests can drive it."""

    def __init__(self, bus: Bus, timeout_s: float = 60.0, max_tokens_limit: int = 1024):
        self.bus, self.timeout_s, self.max_tokens_limit = bus, timeout_s, max_tokens_limit

    def respond(self, message: str, history: list[dict[str, Any]] | None, conversation_id: str | None,
                model: str | None, use_rag: bool, use_tools: bool, max_tokens: float,
                temperature: float) -> Iterator[View]:
        """Send ``message``; yield the page's state after every event until the turn is done or failed."""
        history = list(history or [])
        if not message or not message.strip():
            yield "", history, conversation_id, NO_SOURCES, NO_TOOLS, NO_METRICS
            return
        conversation_id = conversation_id or new_id()
        request = make_request(self.bus, message, conversation_id=conversation_id, model=model or None,
                               use_rag=bool(use_rag), use_tools=bool(use_tools),
                               max_tokens=max(1, min(int(max_tokens), self.max_tokens_limit)),
                               temperature=float(temperature))
        turn = ChatTurn()
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": render_answer(turn)}]
        yield "", history, conversation_id, NO_SOURCES, NO_TOOLS, NO_METRICS
        for event in stream_chat(self.bus, request, self.timeout_s):
            turn.apply(event)
            # a new list each step: Gradio diffs each yield against the one before, so never mutate a yielded one
            history = history[:-1] + [{"role": "assistant", "content": render_answer(turn)}]
            yield "", history, conversation_id, render_sources(turn.sources), render_tools(turn.tools), \
                render_metrics(turn.metrics)


def _reset() -> View:
    return "", [], None, NO_SOURCES, NO_TOOLS, NO_METRICS


def build_ui(bus: Bus, registry_root: str | Path | None = None, *, timeout_s: float = 60.0,
             max_tokens_limit: int = 1024, concurrency_limit: int | None = 32,
             title: str = "GPT Journey chat") -> gr.Blocks:
    """The chat page over ``bus``; the model picker reads artifacts under ``registry_root``.

    ``timeout_s``: how long a turn waits for the gateway's next event before showing an error.
    ``concurrency_limit``: chats streaming at once across all users (each mostly waits on Redis).
    """
    handler = ChatHandler(bus, timeout_s, max_tokens_limit)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nAnswers stream from the gateway over Redis Streams.")
        conversation = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(elem_id="chat", label="Chat", height=460, feedback_options=None,
                                  buttons=["copy", "copy_all"])
                with gr.Row():
                    box = gr.Textbox(elem_id="message", show_label=False, scale=5, autofocus=True,
                                     placeholder="Ask something, then press Enter or Send")
                    send = gr.Button("Send", elem_id="send", variant="primary", scale=1, min_width=80)
                new_chat = gr.Button("New conversation", elem_id="new-conversation", size="sm")
            with gr.Column(scale=2):
                model = gr.Dropdown(model_choices(registry_root), value=DEFAULT_MODEL, label="Model",
                                    elem_id="model")
                refresh = gr.Button("Refresh models", size="sm")
                with gr.Accordion("Generation settings", open=False):
                    use_rag = gr.Checkbox(True, label="Retrieve sources (RAG)")
                    use_tools = gr.Checkbox(True, label="Allow tool calls")
                    max_tokens = gr.Slider(1, max_tokens_limit, value=min(256, max_tokens_limit), step=1,
                                           label="Max new tokens")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature")
                metrics = gr.Markdown(NO_METRICS, elem_id="metrics", label="Speed")
                gr.Markdown("### Sources")
                sources = gr.Markdown(NO_SOURCES, elem_id="sources")
                gr.Markdown("### Tool calls")
                tools = gr.Markdown(NO_TOOLS, elem_id="tools")
        view = [box, chat, conversation, sources, tools, metrics]
        gr.on([send.click, box.submit], handler.respond,
              inputs=[box, chat, conversation, model, use_rag, use_tools, max_tokens, temperature],
              outputs=view, concurrency_limit=concurrency_limit, show_progress="hidden")
        new_chat.click(_reset, outputs=view, queue=False)
        chat.clear(_reset, outputs=view, queue=False)  # the bubble's trash button also starts a new memory

        def refresh_models() -> gr.Dropdown:
            return gr.Dropdown(choices=model_choices(registry_root))
        refresh.click(refresh_models, outputs=model, queue=False)
        demo.load(refresh_models, outputs=model, queue=False)  # artifacts registered since start appear
    return demo
