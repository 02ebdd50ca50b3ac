"""Quantization and quantized runtimes.

- ``gguf_export``: an HF GPT-2 checkpoint dir (ours) -> a llama.cpp GGUF file (F32/F16), tokenizer included.
- ``llama_cpp``: run GGUF files with llama-cpp-python (load, logits, generation with tokens/s) and
  quantize them with llama.cpp (F16, Q8_0, Q4_0, Q4_K).

Modules are imported by name (``from shared.quant.gguf_export import export_gguf``); this package
re-exports nothing, so importing it costs nothing and optional runtimes stay optional.
"""
