"""The inference engine: GPT-2 generation with a KV cache, continuous batching, sampling, streaming.

- ``engine``: ``Engine`` (submit / step / stream / generate) and ``RequestHandle``; the contract.
- ``params``: ``SamplingParams`` per request, ``EngineConfig`` per engine; ``errors``: ``EngineError``.
- ``scheduler``: continuous batching with a token budget and chunked prefill; slot management.
- ``cache``: the preallocated ``KVCache`` and the ``StepBatch`` one forward pass computes.
- ``model``: ``EngineModel``, GPT-2's forward over a step batch; ``linear``: the linear layers and
  the seam for quantized ones; ``native`` (our C++ built at first use, the fused decode step) and
  ``kernels`` (the GEMVs the fp32 and quantized layers run).
- ``sampling``: penalties, greedy, temperature, top-k, top-p, seeded draws.
- ``grammar``: constrained decoding (JSON schema, Lark, forced tool calls) with llguidance.
- ``request``: one request's state, stop/tool-call handling, outputs and metrics; ``text``:
  incremental detokenization and stop strings.

The engine generates; it does not decide which runtime opens a saved artifact or serve it over the
network (``shared.serving``), nor quantize (``shared.quant``): it imports neither, nor the registry,
eval or rag (docs/architecture.md, Layers).
"""
from shared.engine.cache import KVCache, StepBatch
from shared.engine.engine import Engine, EngineStats, RequestHandle
from shared.engine.errors import EngineError
from shared.engine.linear import DenseLinear, OneDNNLinear
from shared.engine.model import EngineModel
from shared.engine.params import EngineConfig, SamplingParams
from shared.engine.request import RequestMetrics, RequestOutput, StreamDelta, TokenLogprob

__all__ = [
    "Engine", "EngineStats", "RequestHandle", "EngineError", "EngineConfig", "SamplingParams",
    "EngineModel", "DenseLinear", "OneDNNLinear", "KVCache", "StepBatch",
    "RequestMetrics", "RequestOutput", "StreamDelta", "TokenLogprob",
]
