"""benchmarks/generation.py runs end to end on a tiny shape: every row measured, same greedy tokens as HF,
the weight-read reference beside the copy bound, and one clear error for a bad preset."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "generation.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600,
                          cwd=BENCH.parents[1])


def test_generation_benchmark_measures_every_row_on_a_tiny_shape(tmp_path):
    variants = "int8" + (",gguf-q8_0" if importlib.util.find_spec("llama_cpp") else "")
    done = run("--model", "tiny", "--new-tokens", "12", "--repeats", "2", "--concurrency", "1,3",
               "--variants", variants, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "generation.json").read_text())
    assert result["model"] == "random tiny" and result["same_greedy_tokens"] is True
    assert result["engine"]["decode_tokens_per_s"] > 0 and result["hf_generate"]["decode_tokens_per_s"] > 0
    assert len(result["bandwidth"]["copy_GBps_readings"]) == 3 and len(result["engine"]["fractions_of_bound"]) == 2
    read = result["weight_read"]
    assert len(read["tokens_per_s_readings"]) == 3 and all(r > 0 for r in read["tokens_per_s_readings"])
    assert read["fraction_of_bound"] in read["fractions_of_bound"] and len(read["engine_fractions"]) == 2
    assert set(result["variants"]) == {f"engine-{v}" if not v.startswith("gguf") else "llama.cpp-q8_0"
                                       for v in variants.split(",")}
    assert [c["requests"] for c in result["concurrency"]] == [1, 3]
    text = (tmp_path / "generation.md").read_text()
    assert "A plain read of the same weights" in text and "engine-int8" in text


def test_generation_benchmark_names_an_unknown_preset():
    done = run("--model", "gpt9", "--variants", "")
    assert done.returncode == 2 and "gpt9" in done.stderr and "Traceback" not in done.stderr
