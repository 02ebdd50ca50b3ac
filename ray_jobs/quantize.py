"""Quantize a model artifact (INT8 / INT4 in our engine, GGUF F16 / Q8_0 / Q4_0 in llama.cpp) and compare them.

    python -m ray_jobs.quantize --config tiny run=myrun                 (after dpo in the same run)
    journey quantize --config tiny run=myrun init_from=sft variants=[fp32,int8,int4,gguf-q4_0]

Each variant is a registered artifact (``<run>/quantize-int8``, ``<run>/quantize-gguf-q8_0``, ...)
with the model as its parent; the report ``<run>/quantize`` puts their size, speed (TTFT,
prefill and decode tokens/s, throughput with concurrent requests) and quality (perplexity delta
and top-1 agreement with FP32) side by side, with HF ``generate()`` as the peer.
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("quantize", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
