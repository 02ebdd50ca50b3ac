"""Serving saved models: which runtime opens an artifact, and the backends the generator streams from.

- ``runtime``: ``open_model(artifact_or_path)`` opens a saved model on the runtime its registry
  ``kind`` names (``hf-model`` and ``quantized``: our ``Engine``; ``gguf``: llama.cpp) and refuses
  any other kind; the one place that decides (a bare path without ``journey.json`` has its kind
  inferred there, once). The generator, eval's engine backend and the benchmarks open models here.
- ``backends``: ``EngineBackend`` / ``LlamaCppBackend`` (one streaming contract over both runtimes
  for many asyncio callers), ``GenerationEvent``, ``fit_messages``; ``load_backend(artifact_or_path)``.
- ``pool``: ``ModelPool`` (the loaded backends of a generator, LRU) and ``default_model``.
- ``errors``: ``ServingError`` (a message and the HTTP status it maps to).

Layering (docs/architecture.md, Layers): serving imports the engine, quant (its model formats and
llama.cpp wrapper), the registry and the tokenizer; the engine imports none of it. Modules are
imported by name (``from shared.serving.runtime import open_model``); this package re-exports
nothing, so importing ``shared.serving.errors`` (the gateway and the chat service do) loads no runtime.
"""
