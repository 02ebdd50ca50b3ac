"""Quantization and quantized runtimes.

- ``gguf_export``: an HF GPT-2 checkpoint dir (ours) -> a llama.cpp GGUF file (F32/F16), tokenizer included;
  the writer, tensor and tokenizer helpers every architecture shares.
- ``gguf_moe``: our MoE checkpoints (Qwen2-MoE, Ernie-4.5-MoE) -> GGUF ``qwen2moe`` / ``ernie4_5-moe``.
- ``llama_cpp``: run GGUF files with llama-cpp-python (load, logits, generation with tokens/s) and
  quantize them with llama.cpp (F16, Q8_0, Q4_0, Q4_K).
- ``weight_only``: INT8 / INT4 weight-only and dynamic INT8 linear layers for ``shared.engine`` (torch CPU kernels).
- ``engine_quant``: quantize an ``EngineModel``'s linear layers (in place or via ``from_gpt``'s factory); bytes report.
- ``quality``: greedy agreement and relative logits error of a quantized engine model vs its reference.
- ``quantized_checkpoint``: save / load a quantized engine model as an artifact directory (no fp32 needed).

The GEMV kernels the quantized layers run are the engine's (``shared.engine.kernels``); which runtime
opens a saved artifact (engine or llama.cpp, by its registry kind) is ``shared.serving.runtime``'s; the
quantize stage that builds, measures and registers every variant is ``shared.quantize``, above both.

Modules are imported by name (``from shared.quant.gguf_export import export_gguf``); this package
re-exports nothing, so importing it costs nothing and optional runtimes stay optional.
"""
