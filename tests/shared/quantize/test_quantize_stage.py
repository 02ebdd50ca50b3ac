"""The quantize stage: config errors, the report's table and explanation, quality scoring."""
from __future__ import annotations

import pytest
import torch

from shared.config import ConfigError, load_config
from shared.quantize.quantize_config import QuantizeConfig
from shared.quantize.report import explanation, table
from shared.quantize.stage import quality


@pytest.mark.parametrize("override, message", [
    (["variants=[int3]"], "unknown precision/variant 'int3'"),
    (["variants=[]"], "variants is empty"),
    (["new_tokens=0"], "new_tokens must be"),
    (["concurrency=[1,0]"], "concurrency must be positive"),
])
def test_bad_quantize_configs_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(QuantizeConfig, "quantize", "tiny", override)


def test_quality_scores_loss_and_agreement_against_a_reference():
    vocab = 5
    windows = [[0, 1, 2, 3], [4, 3, 2, 1]]

    def perfect(ids):  # puts almost all mass on the true next token
        logits = torch.full((len(ids), vocab), -20.0)
        for i, nxt in enumerate(ids[1:]):
            logits[i, nxt] = 20.0
        return logits

    def uniform(ids):
        return torch.zeros(len(ids), vocab)
    ref = quality(perfect, windows, None)
    assert ref["loss"] < 1e-6 and ref["tokens"] == 6
    flat = quality(uniform, windows, ref["top1"])
    assert flat["loss"] == pytest.approx(torch.log(torch.tensor(5.0)).item())
    # uniform logits argmax to token 0: it agrees with the reference only where the reference also says 0
    expected = sum(int((torch.zeros(4, dtype=torch.long) == t).sum()) for t in ref["top1"]) / 8
    assert flat["top1_agreement"] == pytest.approx(expected)
    assert quality(perfect, windows, ref["top1"])["top1_agreement"] == 1.0


def _row(runtime, size, decode, **extra):
    return {"runtime": runtime, "bytes": size, "ttft_s": 0.002, "prefill_tokens_per_s": 16000.0,
            "decode_tokens_per_s": decode, "tpot_s": 1 / decode, **extra}


def test_report_table_gives_ratios_against_hf_and_explains_with_the_numbers():
    result = {"prompt_tokens": 32, "new_tokens": 64, "threads": 2, "rows": {
        "hf-generate-fp32": _row("HF generate()", 500e6, 30.0, ppl=10.0, top1_agreement=1.0),
        "fp32": _row("engine", 500e6, 45.0, concurrency={"1": 45.0, "16": 400.0}, ppl=10.0, ppl_delta=0.0,
                     ppl_change=0.0, top1_agreement=1.0, decode_top1_agreement=0.996),
        "gguf-q4_0": _row("llama.cpp", 80e6, 110.0, ppl=10.5, ppl_delta=0.5, ppl_change=0.05, top1_agreement=0.9)}}
    lines = table(result).splitlines()
    assert lines[0].startswith("| variant | runtime | size (MB) |") and "16 req tok/s" in lines[0]
    assert ("| fp32 | engine | 500.00 | 2.0 | 16000 | 45.0 | 1.50x | 45 | 400 | 10.000 | +0.000 (+0.0%) | 1.000 "
            "| 0.996 |") in lines
    assert "| gguf-q4_0 | llama.cpp | 80.00 |" in lines[-1] and "3.67x" in lines[-1] and "+0.500 (+5.0%)" in lines[-1]
    assert lines[-1].endswith("| 0.900 | - |")  # llama.cpp rows have no decode-path column
    text = explanation(result)
    assert "32 prompt tokens" in text and "45.0 tokens/s" in text and "400 tokens/s" in text and "8.9x" in text
    assert "fit in the CPU caches" not in text  # 500 MB of weights: the memory-bound case
