"""The Gradio chat page (``ui.build_ui``), launched standalone by ``main``; talks to the gateway over the bus."""
